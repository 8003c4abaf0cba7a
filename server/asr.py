"""Whisper engine: batched encode/generate/align over many streams; the ONLY faster_whisper import.

One call of `transcribe_batch` runs the encoder once per prompt group (requests with the
same language, task, prompt layout and decoding mode), decodes every item of the group in
one `generate` call, re-runs only the failing items at higher temperatures, and aligns words
per group. It is safe to call from `workers` threads at once (CTranslate2 replicas).

Requests without a language are detected item by item and decoded in the language that
`server.language` chooses against the stream's (`expected_language`); the prompts of one
`generate` call share their language token, so such a group is split by language. An item
with context is detected on its utterance alone, and loses its context when it is decoded
in another language than the context's. Mandarin comes back in simplified characters.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import numpy.typing as npt
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens, merge_punctuations

from server import hanzi, packing
from server.language import DEFAULT_POLICY, LanguagePolicy, choose
from server.protocol import Task
from server.transcription import SAMPLE_RATE_HZ, AsrRequest, AsrResult, AsrWord

log = logging.getLogger(__name__)

WINDOW_S = 30  # Whisper was trained on 30 s windows of 10 ms mel frames
FRAMES_PER_S = 100
_LOG_MEL_SILENCE = -1.5
"""Whisper's normalised log-mel ((log10 + 4) / 4) of silence: log10 is clipped at -10."""
_LOG_MEL_RANGE = 2.0
"""Whisper keeps 8 decades below the loudest mel bin (2 once normalised)."""
MAX_AUDIO_SAMPLES = WINDOW_S * SAMPLE_RATE_HZ
MAX_DECODER_POSITIONS = 448
MAX_PREFIX_TOKENS = 160
"""Forced prefix tokens a request may carry: with hot words and the output budget of a
25 s utterance the decoder's 448 positions are full."""
LOST_SPEECH_S = 0.8
"""Speech at either end of an utterance decoded after a context, without words, that has it
decoded again alone: whisper-base stopped 0.8 s short of a Spanish final's end ("... en el
archivo de", without "mi imaginación")."""
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"

# Whole outputs that Whisper is known to invent on noise; dropped only when the
# model itself is unsure (see HallucinationFilter). Compared after normalisation.
KNOWN_HALLUCINATIONS = frozenset(
    {
        "thank you",
        "thank you very much",
        "thanks for watching",
        "thank you for watching",
        "thanks for watching and ill see you next time",
        "please subscribe",
        "subscribe to my channel",
        "you",
        "bye",
        "okay",
        "so",
        "oh",
        "the end",
        "music",
        "applause",
        "silence",
        "laughter",
    }
)


class EngineError(RuntimeError):
    """The model could not be loaded or an inference call failed."""


@dataclass(frozen=True)
class DecodeOptions:
    """Decoding knobs shared by all requests of one batch group."""

    beam_size: int = 5
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6)
    best_of: int = 2
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    max_new_tokens: int = 220
    tokens_per_audio_s: float = 12.0
    """Output bound per second of audio (fast speech is about 6), which also bounds loops."""
    max_hotword_tokens: int = 64
    pack_window_s: float = 0.0
    """Pack requests of one group into shared windows of this many seconds (0: never)."""
    pack_gap_s: float = 1.0
    """Silence between packed utterances."""
    max_packed_tokens: int = 400
    """Output bound of a packed window (Whisper's decoder holds 448 positions)."""
    interim_window_s: int = 15
    """Encoder window of an interim (at least its audio plus 1 s, in 5 s steps; 30: full).
    The encoder's cost grows faster than its input: on the speech-dev utterances a 15 s
    window cost a third of the CPU of a 30 s one at WER 0.100 vs 0.092 (greedy, tiny.en);
    10 s windows made Whisper run on past the speech (WER 0.163). Finals keep 30 s."""


@dataclass(frozen=True)
class _Group:
    """What the requests of one group share; `language` None: detected item by item."""

    language: str | None
    task: Task
    hotwords: str | None
    final: bool
    window_s: int


@dataclass
class _Item:
    index: int
    """The request's position, or -1 for a packed window (see `members`)."""
    request: AsrRequest
    features: npt.NDArray[np.float32]
    num_frames: int
    token_budget: int
    prefix: tuple[int, ...] = ()
    """Forced start of the output (the tokens of the request's context audio)."""
    members: tuple[int, ...] = ()
    spans: tuple[packing.Span, ...] = ()
    tokens: list[int] = field(default_factory=list)
    avg_logprob: float = -math.inf
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    temperature: float = 0.0
    language_probability: float = 1.0
    offset_s: float = 0.0
    """Seconds of the request's audio (its context) cut off before `request.audio`."""


def _without_context(request: AsrRequest) -> AsrRequest:
    """The request for its utterance alone."""
    cut = round(request.context_s * SAMPLE_RATE_HZ)
    return replace(request, audio=request.audio[cut:], context_s=0.0, prefix_tokens=())


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


_NORMALISE = re.compile(r"[^a-z0-9 ]+")


def normalise_phrase(text: str) -> str:
    return " ".join(_NORMALISE.sub("", text.lower()).split())


def collapse_loops(text: str, *, max_repeats: int = 3) -> str:
    """Cut n-gram loops ("a b a b a b a b ...") down to `max_repeats` occurrences."""
    words = text.split()
    for n in range(1, 6):
        i = 0
        out: list[str] = []
        while i < len(words):
            gram = words[i : i + n]
            reps = 1
            while words[i + reps * n : i + (reps + 1) * n] == gram and len(gram) == n:
                reps += 1
            if reps > max_repeats:
                out.extend(gram * max_repeats)
                i += reps * n
            else:
                out.append(words[i])
                i += 1
        words = out
    return " ".join(words)


def outranks(
    candidate: tuple[float, float], kept: tuple[float, float], max_compression_ratio: float
) -> bool:
    """Whether a sampled decode (compression ratio, mean log probability) should replace
    the one kept: one that does not loop beats one that does whatever their scores (a loop
    is likely token by token, so it often scores best, and keeping it dropped whole finals
    as repetitive), then the likelier wins."""
    return (candidate[0] <= max_compression_ratio, candidate[1]) > (
        kept[0] <= max_compression_ratio,
        kept[1],
    )


@dataclass(frozen=True)
class HallucinationFilter:
    """Decides whether a decoded text was heard or invented."""

    options: DecodeOptions = DecodeOptions()
    phrase_no_speech: float = 0.2
    phrase_logprob: float = -0.7
    phrase_word_probability: float = 0.5

    def verdict(self, text: str, avg_logprob: float, no_speech: float, ratio: float) -> str | None:
        opts = self.options
        if not text.strip():
            return "empty"
        if no_speech > opts.no_speech_threshold and avg_logprob < opts.log_prob_threshold:
            return "no_speech"
        if ratio > opts.compression_ratio_threshold:
            return "repetitive"
        if avg_logprob < opts.log_prob_threshold - 0.5:
            return "low_confidence"
        phrase = normalise_phrase(text)
        if phrase in KNOWN_HALLUCINATIONS and (
            no_speech > self.phrase_no_speech or avg_logprob < self.phrase_logprob
        ):
            return "known_phrase"
        return None

    def share_verdict(self, text: str, word_probability: float) -> str | None:
        """The same judgement for one utterance's share of a packed window, whose scores
        belong to the whole window: only its text and mean word probability are its own."""
        if not text.strip():
            return "empty"
        if compression_ratio(text) > self.options.compression_ratio_threshold:
            return "repetitive"
        if (
            normalise_phrase(text) in KNOWN_HALLUCINATIONS
            and word_probability < self.phrase_word_probability
        ):
            return "known_phrase"
        return None


class WhisperEngine:
    """A loaded faster-whisper model with a batched, multi-stream transcription call."""

    def __init__(
        self,
        model_dir: Path,
        *,
        name: str,
        device: str = "auto",
        compute_type: str = "auto",
        cpu_threads: int = 1,
        workers: int = 2,
        decode: DecodeOptions = DecodeOptions(),
        language_policy: LanguagePolicy = DEFAULT_POLICY,
    ) -> None:
        if not (model_dir / "model.bin").is_file():
            raise EngineError(
                f"{model_dir} is not a CTranslate2 Whisper model directory (no model.bin); "
                "pass --model with a faster-whisper model directory or an s3:// URL"
            )
        self.device = resolve_device(device)
        self.compute_type = resolve_compute_type(compute_type, self.device)
        self.name = name
        self.decode = decode
        self.language_policy = language_policy
        self.filter = HallucinationFilter(decode)
        try:
            self._model = WhisperModel(
                str(model_dir),
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=cpu_threads,
                num_workers=workers,
                local_files_only=True,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise EngineError(f"could not load the model in {model_dir}: {exc}") from exc
        self._ct2: Any = self._model.model
        self.multilingual = bool(self._ct2.is_multilingual)
        # faster-whisper names every code it knows (100); a model has tokens for its own
        # (Whisper before large-v3 has no <|yue|>).
        vocabulary = self._model.hf_tokenizer
        self.languages: tuple[str, ...] = tuple(
            code
            for code in self._model.supported_languages
            if not self.multilingual or vocabulary.token_to_id(f"<|{code}|>") is not None
        )
        self.default_language = None if self.multilingual else "en"
        self._tokenizers: dict[tuple[str, Task], Tokenizer] = {}
        self._suppress: dict[str, list[int]] = {}
        """Tokens suppressed while decoding, by language (the same for both tasks)."""
        self._tokenizer("en", "transcribe")

    # ------------------------------------------------------------------ helpers

    def _tokenizer(self, language: str, task: Task) -> Tokenizer:
        key = (language, task)
        tok = self._tokenizers.get(key)
        if tok is None:
            tok = Tokenizer(
                self._model.hf_tokenizer, self.multilingual, task=task, language=language
            )
            self._tokenizers[key] = tok
            self._suppress[tok.language_code] = list(get_suppressed_tokens(tok, (-1,)) or ())
        return tok

    def window_s(self, request: AsrRequest) -> int:
        """The encoder window a request is decoded in (see DecodeOptions.interim_window_s)."""
        shortest = self.decode.interim_window_s
        if request.final or shortest >= WINDOW_S:
            return WINDOW_S
        needed = math.ceil(request.duration_s + 1.0)
        return min(WINDOW_S, max(shortest, 5 * math.ceil(needed / 5)))

    def _features(
        self, audio: npt.NDArray[np.float32], window_s: int = WINDOW_S
    ) -> tuple[npt.NDArray[np.float32], int]:
        clipped = audio[: window_s * SAMPLE_RATE_HZ]
        feats = self._model.feature_extractor(clipped)[..., :-1]
        window_frames = window_s * FRAMES_PER_S
        num_frames = min(int(feats.shape[-1]), window_frames)
        # The window past the audio is what zero samples would give (Whisper's own
        # front end pads the waveform): the floor of its log-mel normalisation. Padding
        # the features with 0 instead, as `pad_or_trim` does, reads as a steady sound
        # above the speech of a quiet talker.
        floor = (
            max(_LOG_MEL_SILENCE, float(feats.max()) - _LOG_MEL_RANGE)
            if feats.size
            else _LOG_MEL_SILENCE
        )
        padded = np.pad(
            feats[..., :window_frames],
            [(0, 0), (0, window_frames - num_frames)],
            constant_values=floor,
        )
        return np.ascontiguousarray(padded, dtype=np.float32), num_frames

    def _encode(self, items: Sequence[_Item]) -> Any:
        batch = np.stack([item.features for item in items])
        return self._model.encode(batch)

    def _languages(self, encoded: Any) -> list[list[tuple[str, float]]]:
        """The detector's (language, probability) pairs for each encoded window."""
        return [
            [(token[2:-2], float(p)) for token, p in pairs]
            for pairs in self._ct2.detect_language(encoded)
        ]

    def _detect(self, items: Sequence[_Item], encoded: Any) -> list[list[tuple[str, float]]]:
        """What the detector hears in each item's utterance: from the group's encoding, or
        for an item with context, from its utterance alone (the context would outvote a
        change of language)."""
        detected: list[list[tuple[str, float]]] = [[] for _ in items]
        if any(not it.prefix for it in items):
            detected = self._languages(encoded)
        own = [k for k, it in enumerate(items) if it.prefix]
        if own:
            features = [self._features(_without_context(items[k].request).audio)[0] for k in own]
            for k, pairs in zip(
                own, self._languages(self._model.encode(np.stack(features))), strict=True
            ):
                detected[k] = pairs
        return detected

    # ------------------------------------------------------------------ public

    def pack_cost_s(self, request: AsrRequest) -> float:
        """What a request takes of a packed window (its audio and the gap after it)."""
        return request.duration_s + self.decode.pack_gap_s

    @property
    def pack_capacity_s(self) -> float:
        """The summed `pack_cost_s` that fits one packed window (inf: packing is off)."""
        if self.decode.pack_window_s <= 0:
            return math.inf
        return self.decode.pack_window_s + self.decode.pack_gap_s

    def transcribe_batch(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        """Transcribe many utterances (of any sessions) with shared encoder/decoder calls."""
        results: list[AsrResult | None] = [None] * len(requests)
        groups: dict[_Group, list[int]] = {}
        for index, request in enumerate(requests):
            language = request.language or self.default_language
            group = _Group(
                language,
                request.task,
                request.hotwords or None,
                request.final,
                self.window_s(request),
            )
            groups.setdefault(group, []).append(index)
        for group, indices in groups.items():
            # A packed window is a full one; a language token is shared by all its members.
            pack = group.language is not None and group.window_s == WINDOW_S
            items = self._items(requests, indices, pack=pack)
            redo: list[int] = []
            for item, result in zip(items, self._run_group(items, group), strict=True):
                if not item.members:
                    results[item.index] = result
                    continue
                shares = self._split(item, result, requests)
                for member, share in zip(item.members, shares, strict=True):
                    if share is None:
                        redo.append(member)
                    else:
                        results[member] = share
            if redo:
                log.debug("%d packed utterance(s) transcribed again on their own", len(redo))
                items = self._items(requests, redo, pack=False)
                for item, result in zip(items, self._run_group(items, group), strict=True):
                    results[item.index] = result
        return [r if r is not None else AsrResult(text="", rejected="empty") for r in results]

    def _items(
        self, requests: Sequence[AsrRequest], indices: list[int], *, pack: bool
    ) -> list[_Item]:
        """One item per request, or packed windows of several when packing is on. Packing
        needs a known language: a window holds one language token."""
        opts = self.decode
        packable = [i for i in indices if not requests[i].prefix_tokens]
        windows = (
            packing.plan_windows(
                [requests[i].duration_s for i in packable],
                window_s=opts.pack_window_s,
                gap_s=opts.pack_gap_s,
            )
            if pack and opts.pack_window_s > 0
            else [[k] for k in range(len(packable))]
        )
        items: list[_Item] = [
            self._single(i, requests[i]) for i in indices if requests[i].prefix_tokens
        ]
        for window in windows:
            members = [packable[k] for k in window]
            if len(members) == 1:
                items.append(self._single(members[0], requests[members[0]]))
                continue
            first = requests[members[0]]
            audio, spans = packing.lay_out([requests[i].audio for i in members], opts.pack_gap_s)
            packed = AsrRequest(audio, first.language, first.hotwords, first.final, task=first.task)
            feats, frames = self._features(audio)
            speech_s = sum(requests[i].duration_s for i in members)
            budget = self._token_budget(speech_s, opts.max_packed_tokens)
            items.append(
                _Item(-1, packed, feats, frames, budget, members=tuple(members), spans=tuple(spans))
            )
        return items

    def _single(self, index: int, request: AsrRequest, *, alone: bool = False) -> _Item:
        """The item of one request; `alone` (or with a context too long for the decoder)
        the utterance is decoded without its context, its word times still counted from
        the start of the request's audio."""
        budget = self._token_budget(request.utterance_s, self.decode.max_new_tokens)
        prefix = request.prefix_tokens
        if prefix and len(prefix) > MAX_PREFIX_TOKENS:
            log.warning(
                "a context of %d tokens was dropped (limit %d)", len(prefix), MAX_PREFIX_TOKENS
            )
            alone = True
        offset_s = 0.0
        if alone:
            offset_s, request = request.context_s, _without_context(request)
        feats, frames = self._features(request.audio, self.window_s(request))
        return _Item(
            index, request, feats, frames, budget, request.prefix_tokens, offset_s=offset_s
        )

    def _split(
        self, item: _Item, result: AsrResult, requests: Sequence[AsrRequest]
    ) -> list[AsrResult | None]:
        """A packed window's result shared out to its members; None where a member must be
        transcribed on its own: all of them when the window was judged invented, else a
        member whose share looks wrong (see `packing.needs_redo`) and, as misplaced words
        move between neighbours, the members on either side of it."""
        if result.rejected is not None:
            return [None] * len(item.members)
        owners = packing.assign([(w.start_s + w.end_s) / 2 for w in result.words], item.spans)
        shares: list[tuple[tuple[AsrWord, ...], bool]] = []
        for k, (member, span) in enumerate(zip(item.members, item.spans, strict=True)):
            duration_s = requests[member].duration_s
            words = tuple(
                replace(
                    w,
                    start_s=min(max(0.0, w.start_s - span.start_s), duration_s),
                    end_s=min(max(0.0, w.end_s - span.start_s), duration_s),
                )
                for w, owner in zip(result.words, owners, strict=True)
                if owner == k
            )
            times = [(w.start_s, w.end_s) for w in words]
            extent = packing.speech_extent_s(requests[member].audio)
            shares.append((words, packing.needs_redo(times, extent)))
        redo = {k + d for k, (_, bad) in enumerate(shares) if bad for d in (-1, 0, 1)}
        return [
            None if k in redo else self._share(result, words, requests[member].final)
            for k, (member, (words, _)) in enumerate(zip(item.members, shares, strict=True))
        ]

    def _share(self, result: AsrResult, words: tuple[AsrWord, ...], final: bool) -> AsrResult:
        """One member's result from its words of a packed window."""
        raw = "".join(w.text for w in words).strip()
        text = collapse_loops(raw)
        confidence = float(np.mean([w.probability for w in words])) if words else 0.0
        verdict = self.filter.share_verdict(text, confidence)
        kept = words if verdict is None and final else ()
        if kept and text != raw:
            kept = kept[: len(text.split())]
        return replace(
            result,
            text=text if verdict is None else "",
            words=kept,
            compression_ratio=compression_ratio(text),
            rejected=verdict,
        )

    def _run_group(self, items: list[_Item], group: _Group) -> list[AsrResult]:
        encoded = self._encode(items)
        if group.language is None:
            return self._run_detected(items, encoded, group)
        return self._run_known(items, encoded, group)

    def _run_detected(self, items: list[_Item], encoded: Any, group: _Group) -> list[AsrResult]:
        """Each item decoded in the language chosen for it; one `generate` call per language."""
        items = list(items)
        by_language: dict[str, list[int]] = {}
        unchanged = True
        for k, (item, detected) in enumerate(zip(items, self._detect(items, encoded), strict=True)):
            request = item.request
            extent = packing.speech_extent_s(_without_context(request).audio)
            speech_s = extent[1] - extent[0] if extent else 0.0
            choice = choose(
                detected,
                expected=request.expected_language,
                speech_s=speech_s,
                policy=self.language_policy,
            )
            log.debug(
                "heard %s (p %.3f), stream's %s (p %.4f), %.1f s of speech: decoding in %s",
                *detected[0],  # CTranslate2 lists the likeliest first
                request.expected_language,
                dict(detected).get(request.expected_language or "", 0.0),
                speech_s,
                choice.language,
            )
            if item.prefix and choice.language != request.expected_language:
                item = items[k] = self._single(item.index, request, alone=True)
                unchanged = False
            item.language_probability = choice.probability
            by_language.setdefault(choice.language, []).append(k)
        if unchanged and len(by_language) == 1:
            return self._run_known(items, encoded, replace(group, language=next(iter(by_language))))
        results: dict[int, AsrResult] = {}
        for language, positions in by_language.items():
            sub = [items[k] for k in positions]
            decoded = self._run_known(sub, self._encode(sub), replace(group, language=language))
            results.update(zip(positions, decoded, strict=True))
        return [results[k] for k in range(len(items))]

    def _run_known(self, items: list[_Item], encoded: Any, group: _Group) -> list[AsrResult]:
        language, final = group.language, group.final
        assert language is not None, "detected groups go through _run_detected"
        tok = self._tokenizer(language, group.task)
        hotwords = group.hotwords
        if hotwords:
            # A long list of tiny words costs a lot of decoder time for every item.
            hotwords = tok.decode(tok.encode(" " + hotwords)[: self.decode.max_hotword_tokens])
        prompt = self._model.get_prompt(tok, [], without_timestamps=True, hotwords=hotwords)
        self._decode(items, encoded, tok, prompt, final, temperature=0.0)
        for temperature in self.decode.temperatures[1:]:
            failing = [it for it in items if self._needs_fallback(it)]
            if not failing:
                break
            self._decode(failing, self._encode(failing), tok, prompt, final, temperature)
        words: list[tuple[AsrWord, ...]] = [() for _ in items]
        # Packed windows are split by word times; interims of one group share the call.
        packed = any(it.members for it in items)
        texts = [tok.decode(it.tokens).strip() for it in items]
        verdicts = [
            self.filter.verdict(text, it.avg_logprob, it.no_speech_prob, it.compression_ratio)
            for text, it in zip(texts, items, strict=True)
        ]
        for text, it, verdict in zip(texts, items, verdicts, strict=True):
            if verdict is not None and text:
                log.debug(
                    "dropped (%s): %r, logprob %.2f, no-speech %.2f, compression %.2f",
                    verdict,
                    text,
                    it.avg_logprob,
                    it.no_speech_prob,
                    it.compression_ratio,
                )
        aligned = [
            i for i, v in enumerate(verdicts) if v is None and items[i].tokens and (final or packed)
        ]
        if aligned:
            words_by_index = self._align(items, aligned, encoded, tok)
            for i, ws in words_by_index.items():
                words[i] = ws
        results: list[AsrResult] = []
        for i, it in enumerate(items):
            text = collapse_loops(texts[i]) if verdicts[i] is None else ""
            kept_words = words[i] if verdicts[i] is None else ()
            if kept_words and text != texts[i]:
                kept_words = kept_words[: len(text.split())]
            if language == "zh" and group.task == "transcribe":
                text, kept_words = _simplified(text, kept_words)
            if it.offset_s:
                kept_words = tuple(
                    replace(w, start_s=w.start_s + it.offset_s, end_s=w.end_s + it.offset_s)
                    for w in kept_words
                )
            results.append(
                AsrResult(
                    text=text,
                    words=kept_words,
                    avg_logprob=it.avg_logprob,
                    no_speech_prob=it.no_speech_prob,
                    compression_ratio=it.compression_ratio,
                    temperature=it.temperature,
                    language=language,
                    language_probability=it.language_probability,
                    rejected=verdicts[i],
                )
            )
        lost = [i for i, it in enumerate(items) if final and self._lost_speech(it, results[i])]
        if lost:
            # Whisper may stop after the context's words (or re-read context speech the
            # prefix missed) and skip the utterance: decode those without their context.
            log.debug("%d utterance(s) transcribed again without their context", len(lost))
            alone = [self._single(items[i].index, items[i].request, alone=True) for i in lost]
            for i, item in zip(lost, alone, strict=True):
                item.language_probability = items[i].language_probability
            redone = self._run_known(alone, self._encode(alone), group)
            for i, result in zip(lost, redone, strict=True):
                results[i] = result
        return results

    def _lost_speech(self, item: _Item, result: AsrResult) -> bool:
        """Whether a result decoded after a context misses speech of its utterance (see
        `packing.needs_redo`; times relative to the utterance)."""
        if not item.prefix or not (result.words or result.rejected == "empty"):
            return False
        context_s = item.request.context_s
        times = [
            (max(0.0, w.start_s - context_s), max(0.0, w.end_s - context_s)) for w in result.words
        ]
        extent = packing.speech_extent_s(_without_context(item.request).audio)
        return packing.needs_redo(times, extent, max_missing_s=LOST_SPEECH_S)

    def _needs_fallback(self, item: _Item) -> bool:
        opts = self.decode
        if item.members:
            return False  # a doubtful window is redone member by member instead
        if item.no_speech_prob > opts.no_speech_threshold and (
            item.avg_logprob < opts.log_prob_threshold
        ):
            return False  # silence: no point in sampling harder
        return (
            item.compression_ratio > opts.compression_ratio_threshold
            or item.avg_logprob < opts.log_prob_threshold
        )

    def _decode(
        self,
        items: Sequence[_Item],
        encoded: Any,
        tok: Tokenizer,
        prompt: list[int],
        final: bool,
        temperature: float,
    ) -> None:
        opts = self.decode
        beam = opts.beam_size if final else 1
        sampling = temperature > 0
        prompts = [prompt + list(it.prefix) for it in items]
        outputs = self._ct2.generate(
            encoded,
            prompts,
            beam_size=1 if sampling else beam,
            num_hypotheses=opts.best_of if sampling else 1,
            sampling_topk=0 if sampling else 1,
            sampling_temperature=temperature if sampling else 1.0,
            patience=1.0,
            length_penalty=1.0,
            max_length=_max_length(prompt, items),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress[tok.language_code],
            max_initial_timestamp_index=50,
        )
        for item, output in zip(items, outputs, strict=True):
            best = int(np.argmax(output.scores)) if len(output.scores) > 1 else 0
            sequence = list(output.sequences_ids[best])
            # The output repeats the forced prefix, whose tokens are not scored; the score
            # is the new tokens' log probability over the whole output length.
            tokens = [t for t in sequence[len(item.prefix) :] if t < tok.eot]
            avg_logprob = output.scores[best] * len(sequence) / (len(tokens) + 1)
            text = tok.decode(tokens)
            ratio = compression_ratio(text)
            no_speech = float(output.no_speech_prob)
            threshold = opts.compression_ratio_threshold
            if temperature == 0.0 or outranks(
                (ratio, avg_logprob), (item.compression_ratio, item.avg_logprob), threshold
            ):
                item.tokens = tokens
                item.avg_logprob = float(avg_logprob)
                item.compression_ratio = ratio
                item.temperature = temperature
            if temperature == 0.0:
                item.no_speech_prob = no_speech

    def _token_budget(self, speech_s: float, cap: int) -> int:
        return min(cap, 16 + int(speech_s * self.decode.tokens_per_audio_s))

    def _align(
        self, items: Sequence[_Item], which: Sequence[int], encoded: Any, tok: Tokenizer
    ) -> dict[int, tuple[AsrWord, ...]]:
        if len(which) != len(items):
            # align() takes the whole encoder batch; re-encode just the kept items.
            encoded = self._encode([items[i] for i in which])
        # Words are aligned over the whole audio, the prefix's words included, so that
        # the new ones keep their place after the context.
        token_lists = [[*items[i].prefix, *items[i].tokens] for i in which]
        frames = [items[i].num_frames for i in which]
        alignments = self._model.find_alignment(tok, token_lists, encoded, frames)
        out: dict[int, tuple[AsrWord, ...]] = {}
        for i, alignment in zip(which, alignments, strict=True):
            merge_punctuations(alignment, PREPEND_PUNCTUATION, APPEND_PUNCTUATION)
            out[i] = tuple(_new_words(alignment, len(items[i].prefix)))
        return out


def _simplified(text: str, words: tuple[AsrWord, ...]) -> tuple[str, tuple[AsrWord, ...]]:
    texts = hanzi.pieces_to_simplified([w.text for w in words])
    return hanzi.to_simplified(text), tuple(
        replace(w, text=t) for w, t in zip(words, texts, strict=True)
    )


def _max_length(base: Sequence[int], items: Sequence[_Item]) -> int:
    """`generate`'s max_length for prompts `base` + each item's prefix and its budget.

    CTranslate2 (4.6-4.8) ends a Whisper output, forced prefix included, at max_length / 2
    tokens (measured: max_length 10, 20, 40 gave 5, 10, 20 tokens); the prompt and the
    output share the decoder's 448 positions.
    """
    output = max(len(it.prefix) + it.token_budget for it in items)
    return 2 * min(MAX_DECODER_POSITIONS - len(base) - 1, output)


def _new_words(alignment: Sequence[dict[str, Any]], prefix_len: int) -> list[AsrWord]:
    """The aligned words after the first `prefix_len` tokens (a word that straddles the
    boundary counts as new). Punctuation merged into a neighbour leaves an empty entry
    whose tokens moved: token positions are counted over every entry."""
    words: list[AsrWord] = []
    seen = 0
    for entry in alignment:
        tokens = tuple(int(t) for t in entry["tokens"])
        seen += len(tokens)
        if entry["word"] and seen > prefix_len:
            words.append(
                AsrWord(
                    text=str(entry["word"]),
                    start_s=float(entry["start"]),
                    end_s=float(entry["end"]),
                    probability=float(entry["probability"]),
                    tokens=tokens,
                )
            )
    return words


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except RuntimeError:
        return "cpu"


def resolve_compute_type(compute_type: str, device: str) -> str:
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"
