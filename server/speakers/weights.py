"""Read a PyTorch checkpoint (legacy or zip format) into numpy arrays, without importing torch.

Both formats `torch.save` has written hold one pickle whose tensors point at raw storages by
a persistent id: the zip format (torch >= 1.6) keeps the pickle in `<name>/data.pkl` and each
storage in `<name>/data/<key>`; the legacy format (resemblyzer's `pretrained.pt`, 2019) is a
run of pickles (magic number, protocol version, system info, the object, the storage keys)
followed by each storage as an int64 element count and its raw bytes.

The pickle is read by a restricted `pickle.Unpickler`: the only globals it resolves are
`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` (and its older `_rebuild_tensor`)
and the typed `torch.<Type>Storage` classes, each mapped to a small numpy builder. Any other
global (a module, a class, `os.system`) raises `WeightsError` before anything is called, so a
hostile file cannot run code. Tensors come back as numpy arrays (copies, native byte order).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from server.speakers import WeightsError

Array = npt.NDArray[Any]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_DEPTH = 32

# torch storage class -> numpy element type (little-endian; zip files say their byte order)
STORAGE_DTYPES: Mapping[str, str] = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "b1",
}


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: str


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: str
    numel: int
    view: tuple[int, int] | None = None
    """(element offset, element count) inside the storage `key`, for a legacy storage view."""


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(
    storage: _StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> _TensorRef:
    """Stands in for torch._utils._rebuild_tensor(_v2): the data is attached after unpickling."""
    if not isinstance(storage, _StorageRef):
        raise WeightsError(f"a tensor's storage is {type(storage).__name__}, not a storage")
    return _TensorRef(storage, int(offset), tuple(map(int, size)), tuple(map(int, stride)))


_GLOBALS: Mapping[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only tensor-rebuilding globals; storages become `_StorageRef` placeholders."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module_name: str, global_name: str, /) -> Any:
        found = _GLOBALS.get((module_name, global_name))
        if found is not None:
            return found
        if module_name == "torch" and global_name in STORAGE_DTYPES:
            return _StorageType(global_name, STORAGE_DTYPES[global_name])
        raise WeightsError(
            f"the checkpoint refers to {module_name}.{global_name}; only tensors, storages "
            "and OrderedDict are allowed (refusing to unpickle anything else)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise WeightsError(f"unexpected persistent id in the checkpoint: {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"storage {key} has no known element type")
        root = self.storages.setdefault(key, _StorageRef(key, storage_type.dtype, numel))
        if len(pid) == 5 or pid[5] is None:
            return root
        _, view_offset, view_numel = pid[5]  # legacy view: (view key, offset, size)
        return _StorageRef(
            key, storage_type.dtype, int(view_numel), (int(view_offset), int(view_numel))
        )


def load_checkpoint(path: Path) -> Any:
    """The checkpoint's object, with every tensor replaced by a numpy array."""
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with path.open("rb") as file:
            return _load_legacy(file, path)
    except OSError as exc:
        raise WeightsError(f"cannot read the speaker weights {path}: {exc}") from exc
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        struct.error,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
    ) as exc:
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc


def load_state_dict(path: Path) -> dict[str, Array]:
    """The model's parameters: the checkpoint's `model_state` (or `state_dict`), else itself."""
    checkpoint = load_checkpoint(path)
    state = checkpoint
    if isinstance(checkpoint, dict):
        for key in ("model_state", "state_dict"):
            if isinstance(checkpoint.get(key), dict):
                state = checkpoint[key]
                break
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    arrays = {str(k): v for k, v in state.items() if isinstance(v, np.ndarray)}
    if not arrays:
        raise WeightsError(f"{path} holds no tensors")
    return arrays


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise WeightsError(f"{path} is a zip without exactly one */data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])))
        obj = unpickler.load()
        order = "<"
        if prefix + "byteorder" in archive.namelist():
            order = "<" if archive.read(prefix + "byteorder").strip() == b"little" else ">"
        data = {
            key: _storage_array(archive.read(f"{prefix}data/{key}"), ref, order)
            for key, ref in unpickler.storages.items()
        }
    return _resolve(obj, data, 0)


def _load_legacy(file: BinaryIO, path: Path) -> Any:
    def plain() -> Any:
        return _RestrictedUnpickler(file).load()

    if plain() != LEGACY_MAGIC:
        raise WeightsError(f"{path} is neither a zip nor a legacy PyTorch checkpoint")
    if plain() != LEGACY_PROTOCOL:
        raise WeightsError(f"{path}: unsupported legacy checkpoint protocol")
    sys_info = plain()
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise WeightsError(f"{path}: only little-endian legacy checkpoints are supported")
    unpickler = _RestrictedUnpickler(file)
    obj = unpickler.load()
    keys = plain()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise WeightsError(f"{path}: malformed storage key list")
    remaining = path.stat().st_size - file.tell()
    data: dict[str, Array] = {}
    for key in keys:
        ref = unpickler.storages.get(key)
        if ref is None:
            raise WeightsError(f"{path}: storage {key} is listed but never used")
        (numel,) = struct.unpack("<q", file.read(8))
        nbytes = numel * np.dtype(ref.dtype).itemsize
        remaining -= 8 + nbytes
        if numel < 0 or remaining < 0:
            raise WeightsError(f"{path}: storage {key} runs past the end of the file")
        data[key] = _storage_array(file.read(nbytes), ref, "<")
    return _resolve(obj, data, 0)


def _storage_array(raw: bytes, ref: _StorageRef, order: str) -> Array:
    dtype = np.dtype(order + ref.dtype) if ref.dtype != "b1" else np.dtype(np.bool_)
    if len(raw) % dtype.itemsize:
        raise WeightsError(f"storage {ref.key} is {len(raw)} bytes, not whole {dtype} elements")
    return np.frombuffer(raw, dtype=dtype)


def _resolve(obj: Any, data: Mapping[str, Array], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise WeightsError("the checkpoint is nested too deeply")
    if isinstance(obj, _TensorRef):
        return _tensor(obj, data)
    if isinstance(obj, dict):
        return {k: _resolve(v, data, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, data, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, data, depth + 1) for v in obj)
    return obj


def _tensor(ref: _TensorRef, data: Mapping[str, Array]) -> Array:
    storage = data.get(ref.storage.key)
    if storage is None:
        raise WeightsError(f"tensor data {ref.storage.key} is missing from the checkpoint")
    if ref.storage.view is not None:
        start, count = ref.storage.view
        storage = storage[start : start + count]
    size, stride = ref.size, ref.stride
    if len(size) != len(stride) or min(size, default=1) < 0 or min(stride, default=0) < 0:
        raise WeightsError(f"tensor shape {size} / stride {stride} is malformed")
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype.newbyteorder("="))
    last = ref.offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if ref.offset < 0 or last >= storage.shape[0]:
        raise WeightsError(
            f"tensor of shape {size} at offset {ref.offset} runs past its storage "
            f"({storage.shape[0]} elements)"
        )
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset :], shape=size, strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view, dtype=storage.dtype.newbyteorder("="))
