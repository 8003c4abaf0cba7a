"""The web page's text/SRT/WebVTT export (clients/web/formats.js, run in Node) against
clients/formats.py: the same final messages, with speakers or without, must give the same
documents, byte for byte."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.formats import TranscriptWriter, cues_from_final, to_srt, to_vtt
from server.protocol import Results, from_json
from tests.support.paths import REPO_ROOT

NODE = shutil.which("node")
FORMATS_JS = REPO_ROOT / "clients" / "web" / "formats.js"
# Reads final messages (JSON) on stdin, prints {"text", "srt", "vtt"} as the page would export
# them.
EXPORT_JS = f"""
import {{ finalOf, toSrt, toText, toVtt }} from {json.dumps(FORMATS_JS.as_uri())};
let input = "";
for await (const chunk of process.stdin) input += chunk;
const finals = JSON.parse(input).map((message) => finalOf(message)).filter(Boolean);
const exports = {{ text: toText(finals), srt: toSrt(finals), vtt: toVtt(finals) }};
process.stdout.write(JSON.stringify(exports));
"""

pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js to run the page's module")


def page_exports(messages: list[dict[str, Any]]) -> dict[str, str]:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", EXPORT_JS],
        input=json.dumps(messages),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    exports: dict[str, str] = json.loads(done.stdout)
    return exports


def python_exports(messages: list[dict[str, Any]]) -> dict[str, str]:
    finals = [from_json(json.dumps(m)) for m in messages]
    cues = [cue for f in finals if isinstance(f, Results) for cue in cues_from_final(f)]
    writer = TranscriptWriter("text")
    text = "".join(writer.on_message(f, "") for f in finals)
    return {"text": text, "srt": to_srt(cues), "vtt": to_vtt(cues)}


def message(
    start_s: float,
    words: list[tuple[str, float]],
    end_s: float,
    speakers: list[int] | None = None,
) -> dict[str, Any]:
    """A final Results message as the server sends it; words are (punctuated, start_s), with
    `speakers` (one a word) as diarize=true sends them."""
    return {
        "type": "Results",
        "start": start_s,
        "duration": round(end_s - start_s, 2),
        "is_final": True,
        "speech_final": True,
        "channel": {
            "alternatives": [
                {
                    "transcript": " ".join(text for text, _ in words),
                    "confidence": 0.9,
                    "words": [
                        {"word": text.lower(), "punctuated_word": text, "start": at_s}
                        | (
                            {}
                            if speakers is None
                            else {"speaker": speakers[i], "speaker_confidence": 0.8}
                        )
                        for i, (text, at_s) in enumerate(words)
                    ],
                }
            ]
        },
    }


def spoken(
    text: str, start_s: float, step_s: float = 0.3, speakers: list[int] | None = None
) -> dict[str, Any]:
    timed = [(word, round(start_s + i * step_s, 2)) for i, word in enumerate(text.split())]
    return message(start_s, timed, round(start_s + len(timed) * step_s, 2), speakers)


LONG = (
    "And so, my fellow Americans: ask not what your country can do for you, "
    "ask what you can do for your country. My fellow citizens of the world: ask not what "
    "America will do for you, but what together we can do for the freedom of man."
)


def test_long_finals_are_split_into_cues_by_word_timings() -> None:
    messages = [spoken("Hello there.", 0.5), spoken(LONG, 2.0)]
    exports = page_exports(messages)
    assert exports == python_exports(messages)
    srt_blocks = exports["srt"].strip().split("\n\n")
    assert len(srt_blocks) >= 4  # the long final became several cues
    for block in srt_blocks:
        lines = block.split("\n")[2:]
        assert 1 <= len(lines) <= 2 and all(len(line) <= 42 for line in lines), block


def test_vtt_export_escapes_cue_text() -> None:
    messages = [spoken("if a < b && c > d --> stop", 1.0)]
    exports = page_exports(messages)
    assert exports == python_exports(messages)
    assert "a &lt; b &amp;&amp; c &gt; d --&gt; stop" in exports["vtt"]
    assert exports["vtt"].count("-->") == 1


def test_speakers_label_lines_and_cues() -> None:
    turn = "Ask not what your country can do for you. Yes, sir. " + LONG
    words = turn.split()
    speakers = [0] * 9 + [1] * 2 + [0] * (len(words) - 11)
    messages = [spoken("Hello there.", 0.5, speakers=[1, 1]), spoken(turn, 2.0, speakers=speakers)]
    exports = page_exports(messages)
    assert exports == python_exports(messages)
    assert exports["text"].splitlines()[:3] == [
        "[Speaker 1] Hello there.",
        "[Speaker 0] Ask not what your country can do for you.",
        "[Speaker 1] Yes, sir.",
    ]
    assert "\n<v Speaker 1>Yes, sir.\n\n" in exports["vtt"]
    assert "\n[Speaker 1] Yes, sir.\n\n" in exports["srt"]
    for block in exports["srt"].strip().split("\n\n"):
        lines = block.split("\n")[2:]
        assert lines[0].startswith(("[Speaker 0] ", "[Speaker 1] ")), block
        assert 1 <= len(lines) <= 2 and all(len(line) <= 42 for line in lines), block


_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz<>&-',.", min_size=1, max_size=14)
# Now and then a word too long to share a line with a speaker tag (or to fit a line at all).
_ANY_WORD = _WORD | _WORD | _WORD | st.text(alphabet="abc<&", min_size=29, max_size=50)
# Mostly long turns of two speakers, sometimes a two-digit one (a longer tag).
_SPEAKER = st.sampled_from([0, 0, 0, 0, 1, 1, 1, 10])


@st.composite
def finals(draw: st.DrawFn) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    start_s = 0.0
    for _ in range(draw(st.integers(1, 4))):
        words = draw(st.lists(_ANY_WORD, min_size=1, max_size=40))
        steps = draw(st.lists(st.integers(0, 90), min_size=len(words), max_size=len(words)))
        times = [round(start_s + sum(steps[: i + 1]) / 100, 2) for i in range(len(words))]
        end_s = round(times[-1] + 0.3, 2)
        speakers = draw(st.none() | st.lists(_SPEAKER, min_size=len(words), max_size=len(words)))
        out.append(message(start_s, list(zip(words, times, strict=True)), end_s, speakers))
        start_s = end_s
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(finals())
def test_page_and_python_export_the_same_documents(messages: list[dict[str, Any]]) -> None:
    assert page_exports(messages) == python_exports(messages)
