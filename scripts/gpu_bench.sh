#!/usr/bin/env bash
# GPU benchmark on a lent CUDA machine that cannot reach any registry, in three stages because
# one call may carry at most 64 MiB: (a) wheels, (b) first part of the model, (c) the rest of the
# model, PyAV and the shared audio, then the engine and capacity benchmarks. Stages keep their
# state in /tmp between calls on the same warm machine. Prepare the carried folders with
# `bash scripts/gpu_bench.sh prepare` here. Results go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: gpu_bench.sh prepare|a|b|c}
SITE=/tmp/streamscribe-site
MODEL=/tmp/streamscribe-model
LIBS=/tmp/streamscribe-libs

case $stage in
prepare)
  model=$(.venv/bin/python -c 'from server.app import builtin_model_dir; print(builtin_model_dir())')
  rm -rf .gpu && mkdir -p .gpu/a .gpu/b .gpu/c/audio
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .gpu/a ctranslate2==4.8.5 faster-whisper==1.2.1 webrtcvad-wheels==2.0.14.post1 soxr==1.1.0 \
    websockets==17.4 jiwer==4.0.0 rapidfuzz==3.14.6 whisper-normalizer==0.1.15 more_itertools \
    indic-numtowords text2num platformdirs
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 -d .gpu/c av==18.1.0
  split -b 60000000 "$model/model.bin" .gpu/b/model.bin.part.
  mv .gpu/b/model.bin.part.ab .gpu/c/
  cp "$model"/config.json "$model"/tokenizer.json "$model"/vocabulary.txt .gpu/c/
  sha256sum "$model/model.bin" | cut -d' ' -f1 > .gpu/c/model.bin.sha256
  cp ../shared/audio/* .gpu/c/audio/
  du -sh .gpu/*
  ;;
a)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 --version
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .gpu/a/*.whl || exit 1
  cublas=$(find / -xdev -name 'libcublas.so.1[2-9]*' 2>/dev/null | grep -v Lt | sort | head -5)
  echo "cuBLAS found: $cublas"
  mkdir -p "$LIBS"
  twelve=$(echo "$cublas" | grep 'so\.12' | head -1)
  if [[ -z $twelve ]]; then
    # CTranslate2 4.x dlopens libcublas.so.12; this image ships CUDA 13. The GEMM entry points
    # it resolves with dlsym exist in both, so try the newer library under the old name.
    newest=$(echo "$cublas" | head -1)
    ln -sf "$newest" "$LIBS/libcublas.so.12"
    echo "aliased $newest as libcublas.so.12"
  fi
  ;;
b)
  mkdir -p "$MODEL" && cp .gpu/b/model.bin.part.* "$MODEL/" && ls -la "$MODEL"
  ;;
c)
  mv .gpu/c/model.bin.part.* "$MODEL/" && cat "$MODEL"/model.bin.part.* > "$MODEL/model.bin" \
    && rm "$MODEL"/model.bin.part.* && cp .gpu/c/*.json .gpu/c/vocabulary.txt "$MODEL/"
  echo "$(cat .gpu/c/model.bin.sha256)  $MODEL/model.bin" | sha256sum -c - || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .gpu/c/av-*.whl || exit 1
  mkdir -p /tmp/shared && rm -rf /tmp/shared/audio && cp -r .gpu/c/audio /tmp/shared/audio
  cublas_dir=$(dirname "$(readlink -f "$LIBS/libcublas.so.12" 2>/dev/null || echo /x/y)")
  export LD_LIBRARY_PATH="$LIBS:$cublas_dir:${LD_LIBRARY_PATH:-}"
  export PYTHONPATH="$SITE:$PWD" STREAMSCRIBE_SHARED=/tmp/shared HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  python3 -c 'import ctranslate2; print("cuda devices", ctranslate2.get_cuda_device_count(), ctranslate2.get_supported_compute_types("cuda"))'
  timeout 200 python3 -m bench.engine --model "$MODEL" --device cuda --compute-type float16 \
    --batches 1,8,32,64 --reps 3 --json "$OUT/engine_cuda.json" 2>&1 | tee "$OUT/engine_cuda.log"
  timeout 330 python3 -m bench capacity --targets ours --streams "${STREAMS:-16,64,128}" \
    --model "$MODEL" --audio-dir /tmp/shared/audio --duration-s "${DURATION_S:-30}" \
    --server-args "--device cuda --compute-type float16 --max-sessions 512" \
    --json "$OUT/capacity_cuda.json" --log-dir "$OUT/logs" 2>&1 | tee "$OUT/capacity_cuda.log"
  ;;
esac
