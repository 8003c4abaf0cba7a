"""Deepgram's pre-recorded response (`POST /v1/listen`) built from a file's finals (pure).

The shape is what Deepgram answers and its SDKs parse: `metadata` (request_id, sha256,
created, duration, channels, models, model_info), `results.channels[0].alternatives[0]`
(transcript, confidence, words) and, with `utterances=true`, `results.utterances` (one per
final: the server's utterances are the VAD's, cut by endpointing; with diarize=true each
names the speaker of most of its words). Words are encoded as on the live path
(`server.protocol.word_json`: `speaker` with diarize=true, `language` with language=multi).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from server.protocol import ModelInfo, Results, word_json

_DIGITS = 3


def _r(value: float, digits: int = _DIGITS) -> float:
    return round(value, digits)


def _speaker(final: Results) -> dict[str, object]:
    """With diarize=true: an utterance's speaker is the one most of its words have."""
    speakers = [w.speaker for w in final.words if w.speaker is not None]
    return {"speaker": Counter(speakers).most_common(1)[0][0]} if speakers else {}


def _confidence(finals: Sequence[Results]) -> float:
    words = [w.confidence for r in finals for w in r.words]
    if words:
        return sum(words) / len(words)
    return sum(r.confidence for r in finals) / len(finals) if finals else 0.0


def response(
    *,
    request_id: str,
    created: datetime,
    duration_s: float,
    channels: int,
    model: ModelInfo,
    sha256: str,
    finals: Sequence[Results],
    utterances: bool,
    warnings: Sequence[str] = (),
) -> dict[str, object]:
    """The JSON body of a pre-recorded transcription."""
    metadata: dict[str, object] = {
        "transaction_key": "deprecated",
        "request_id": request_id,
        "sha256": sha256,
        "created": created.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "duration": _r(duration_s),
        "channels": channels,
        "models": [model.name],
        "model_info": {
            model.uuid: {"name": model.name, "version": model.version, "arch": model.arch}
        },
    }
    if warnings:
        metadata["warnings"] = [
            {"parameter": "encoding", "type": "invalid_audio", "message": text} for text in warnings
        ]
    alternative = {
        "transcript": " ".join(r.transcript for r in finals),
        "confidence": _r(_confidence(finals), 4),
        "words": [word_json(w) for r in finals for w in r.words],
    }
    results: dict[str, object] = {"channels": [{"alternatives": [alternative]}]}
    if utterances:
        results["utterances"] = [
            {
                "start": _r(r.start_s),
                "end": _r(r.start_s + r.duration_s),
                "confidence": _r(r.confidence, 4),
                "channel": 0,
                "transcript": r.transcript,
                "words": [word_json(w) for w in r.words],
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{request_id}/{index}")),
                **_speaker(r),
            }
            for index, r in enumerate(finals)
        ]
    return {"metadata": metadata, "results": results}
