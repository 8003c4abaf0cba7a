"""The pure Session state machine driven with real speech and the real WebRTC classifier.

Transcription results are inputs of the state machine, so the tests hand them in directly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.audio import PcmDecoder
from server.protocol import (
    CloseStream,
    Finalize,
    KeepAlive,
    Metadata,
    ModelInfo,
    Results,
    StreamOptions,
)
from server.session import Action, Close, Send, Session, SessionConfig, State, Transcribe
from server.transcription import AsrResult, AsrWord
from tests.support.paths import AUDIO_DIR, REPO_ROOT
from tests.wsclient import chunks, pcm16, read_wav
from vad.webrtc import WebRtcClassifier

MODEL = ModelInfo("tiny.en", "cpu-int8", "whisper", "u")
SILENCE_1S = bytes(32000)


def new_session(config: SessionConfig | None = None, **options: object) -> Session:
    return Session(
        request_id="r",
        options=StreamOptions(**options),  # type: ignore[arg-type]
        config=config or SessionConfig(),
        classifier=WebRtcClassifier(),
        model=MODEL,
    )


def speech() -> bytes:
    pcm, _, _ = read_wav(Path(AUDIO_DIR) / "jfk_inaugural.wav")
    return pcm


def feed(session: Session, data: bytes, sizes: list[int]) -> list[Action]:
    """Linear16 bytes cut at `sizes`, decoded as the connection does, into the session."""
    decoder = PcmDecoder("linear16", 16000, 1)
    actions: list[Action] = []
    for piece in chunks(data, sizes):
        actions += session.feed_samples(decoder.decode(piece))
    return actions


def transcribes(actions: list[Action]) -> list[Transcribe]:
    return [a for a in actions if isinstance(a, Transcribe)]


def sent(actions: list[Action], kind: type) -> list[object]:
    return [a.message for a in actions if isinstance(a, Send) and isinstance(a.message, kind)]


def result(text: str, start: float = 0.1, *, tokens: bool = False) -> AsrResult:
    """A result whose words are 0.3 s apart from `start`; with `tokens`, word k has the
    made-up token ids (1000 + k, 2000 + k)."""
    words = tuple(
        AsrWord(
            " " + w,
            start + 0.3 * i,
            start + 0.3 * i + 0.25,
            0.9,
            (1000 + i, 2000 + i) if tokens else (),
        )
        for i, w in enumerate(text.split())
    )
    return AsrResult(text=text, words=words, avg_logprob=-0.2)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=9000), min_size=1, max_size=6))
def test_requests_do_not_depend_on_chunking(sizes: list[int]) -> None:
    data = speech() + SILENCE_1S
    config = SessionConfig(context_ms=None)  # every final is asked for at once
    reference = transcribes(feed(new_session(config, encoding="linear16"), data, [3200]))
    other = transcribes(feed(new_session(config, encoding="linear16"), data, sizes))
    assert len(reference) == len(other) >= 2
    for a, b in zip(reference, other, strict=True):
        assert np.array_equal(a.request.audio, b.request.audio)


def test_finals_are_released_in_order_and_close_waits_for_them() -> None:
    session = new_session(SessionConfig(context_ms=None), encoding="linear16")
    actions = feed(session, speech() + SILENCE_1S, [4000])
    actions += session.control(CloseStream())
    finals = [t for t in transcribes(actions) if t.request.final]
    assert len(finals) >= 2 and session.state is State.CLOSING
    assert not any(isinstance(a, Close) for a in actions)
    # Results arrive newest first: nothing may be sent until the oldest is in.
    later = session.on_result(finals[-1].ticket, result("ask what you can do"))
    assert sent(later, Results) == []
    out: list[Action] = []
    for t in finals[:-1]:
        out += session.on_result(t.ticket, result("and so my fellow americans"))
    messages = [a.message for a in out if isinstance(a, Send)]
    texts = [m.transcript for m in messages if isinstance(m, Results)]
    assert texts[-1] == "ask what you can do"
    starts = [m.start_s for m in messages if isinstance(m, Results)]
    assert starts == sorted(starts)
    assert isinstance(messages[-1], Metadata)
    assert isinstance(out[-1], Close) and out[-1].code == 1000
    assert session.state is State.CLOSED


def test_empty_results_send_no_final() -> None:
    session = new_session(encoding="linear16")
    actions = feed(session, speech() + SILENCE_1S, [4000])
    out: list[Action] = []
    queue = transcribes(actions)
    while queue:
        more = session.on_result(queue.pop(0).ticket, AsrResult(text="", rejected="no_speech"))
        queue += transcribes(more)
        out += more
    assert sent(out, Results) == []
    assert session.backlog == 0


def test_finalize_flags_and_word_times_in_stream_time() -> None:
    session = new_session(encoding="linear16")
    head = speech()[: 32000 * 2]
    actions = feed(session, SILENCE_1S + head, [3200]) + session.control(Finalize())
    (final,) = transcribes(actions)
    out = session.on_result(final.ticket, result("and so"))
    (message,) = sent(out, Results)
    assert isinstance(message, Results)
    assert message.is_final and message.from_finalize and not message.speech_final
    assert 0.6 <= message.start_s <= 1.0, "pre-roll reaches back before the onset at 1 s"
    assert message.words[0].start_s >= message.start_s
    assert message.words[0].punctuated_word == "and" and message.words[0].word == "and"
    assert session.state is State.OPEN


def test_shutdown_finalizes_and_closes_with_1001() -> None:
    session = new_session(encoding="linear16")
    actions = feed(session, speech()[: 32000 * 2], [3200]) + session.shutdown()
    (final,) = transcribes(actions)
    assert feed(session, speech(), [3200]) == [], "audio after the drain began is not transcribed"
    out = session.on_result(final.ticket, result("and so"))
    assert isinstance(out[-1], Close) and out[-1].code == 1001


def test_interims_on_stream_time_cadence_and_dropped_once_final() -> None:
    session = new_session(encoding="linear16", interim_results=True)
    actions = feed(session, speech()[: 32000 * 2], [3200])
    (interim,) = transcribes(actions)
    assert not interim.request.final
    out = session.on_result(interim.ticket, AsrResult(text="And so"))
    (message,) = sent(out, Results)
    assert isinstance(message, Results) and not message.is_final and message.words == ()
    # The next interim was asked for at once (enough audio accrued while the first ran).
    (nxt,) = transcribes(out)
    finals = transcribes(session.control(Finalize()))
    assert sent(session.on_result(nxt.ticket, AsrResult(text="And so my")), Results) == []
    assert len(finals) == 1


def test_keepalive_and_silence_do_nothing() -> None:
    session = new_session(encoding="linear16", vad_events=True)
    assert session.control(KeepAlive()) == []
    assert feed(session, SILENCE_1S * 3, [640]) == []
    noise = pcm16(np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.001)
    assert transcribes(feed(session, noise, [640])) == []


def test_context_finals_wait_for_the_one_before_and_carry_its_words() -> None:
    session = new_session(SessionConfig(speculate_ms=None), encoding="linear16")
    actions = feed(session, speech() + SILENCE_1S, [4000])
    finals = [t for t in transcribes(actions) if not t.speculative]
    assert len(finals) == 1, "the next final waits until this one's words are known"
    first = finals[0]
    assert first.request.context_s == 0.0 and first.request.prefix_tokens == ()
    out = session.on_result(first.ticket, result("and so my fellow americans", tokens=True))
    (second,) = transcribes(out)
    request = second.request
    # The whole first utterance's words fit the context window: all of them are forced.
    assert request.prefix_tokens == tuple(t for k in range(5) for t in (1000 + k, 2000 + k))
    assert request.context_s > 0.5
    context = round(request.context_s * 16000)
    assert len(request.audio) - context > 8000, "the utterance itself follows the context"
    # Word times of the second result are measured from the start of its audio, context
    # included: a word 0.1 s after the context starts 0.1 s after the utterance's start.
    late = session.on_result(second.ticket, result("ask not", start=request.context_s + 0.1))
    (message,) = [m for m in sent(late, Results) if isinstance(m, Results)]
    assert abs(message.words[0].start_s - (message.start_s + 0.1)) < 0.03


def test_context_does_not_depend_on_how_far_the_stream_ran_ahead() -> None:
    """The finals' requests are the same whether each result comes back at once or only
    after a minute more of the stream has arrived (a busy engine, audio sent faster than
    real time): context is measured from the utterance, not from the stream's end."""

    def requests(*, lag: bool) -> list[tuple[float, tuple[int, ...]]]:
        session = new_session(SessionConfig(speculate_ms=None), encoding="linear16")
        utterance = speech()[: 32000 * 3] + SILENCE_1S
        actions = feed(session, utterance, [3200])
        if lag:
            actions += feed(session, utterance * 20, [3200])
        seen: list[tuple[float, tuple[int, ...]]] = []
        queue = [t for t in transcribes(actions) if not t.speculative]
        while queue and len(seen) < 4:
            ticket = queue.pop(0)
            seen.append((round(ticket.request.context_s, 2), ticket.request.prefix_tokens))
            out = session.on_result(ticket.ticket, result("and so my fellow", tokens=True))
            if not lag:
                out += feed(session, utterance, [3200])
            queue += [t for t in transcribes(out) if not t.speculative]
        return seen

    eager = requests(lag=False)
    assert len(eager) == 4 and all(prefix for _, prefix in eager[1:])
    assert requests(lag=True) == eager


def test_finals_hear_the_same_audio_however_late_results_come_back() -> None:
    """Over 40 s of talk (so older context is dropped and trimmed), every final's request,
    audio and prefix, is the same whether each result comes back at once or 0.15, 0.6, 2 or
    5 s later. An idle engine's finals are guesses made at the pause and promoted; a
    busy one's are asked for at the endpoint (no guess while the final before is out)."""
    from server.session import Promote

    utterance = speech()[: 32000 * 3] + SILENCE_1S

    def finals(delay_chunks: int) -> list[tuple[bytes, tuple[int, ...], bool]]:
        session = new_session(encoding="linear16")
        asked: dict[int, Transcribe] = {}
        final_tickets: list[int] = []
        due: list[tuple[int, int]] = []  # (chunk index, ticket)

        def handle(actions: list[Action], now: int) -> None:
            for action in actions:
                if isinstance(action, Promote):
                    final_tickets.append(action.ticket)
                elif isinstance(action, Transcribe):
                    asked[action.ticket] = action
                    if not action.speculative:
                        final_tickets.append(action.ticket)
                    due.append((now + delay_chunks, action.ticket))

        def answer_due(now: int) -> None:
            while ready := [d for d in due if d[0] <= now]:
                due.remove(ready[0])
                ticket = ready[0][1]
                heard = result("and so my", asked[ticket].request.context_s + 0.1, tokens=True)
                handle(session.on_result(ticket, heard), now)

        for now, piece in enumerate(chunks(utterance * 10 + SILENCE_1S, [1600])):
            handle(feed(session, piece, [len(piece)]), now)
            answer_due(now)
        while due:  # the stream is over; the engine catches up
            answer_due(min(d[0] for d in due))
        return [
            (asked[t].request.audio.tobytes(), asked[t].request.prefix_tokens, asked[t].speculative)
            for t in final_tickets
        ]

    eager = finals(0)
    assert len(eager) == 10 and all(prefix for _, prefix, _ in eager[1:])
    assert all(guess for _, _, guess in eager), "an idle engine's finals are promoted guesses"
    for delay_chunks in (3, 12, 40, 100):  # of 50 ms
        late = finals(delay_chunks)
        assert [f[:2] for f in late] == [f[:2] for f in eager], f"{delay_chunks * 50} ms late"
    assert not any(guess for _, _, guess in late[1:]), "5 s late, no guess goes out"


def test_no_context_across_a_long_silence() -> None:
    config = SessionConfig(context_gap_ms=2000, speculate_ms=None)
    session = new_session(config, encoding="linear16")
    head = speech()[: 32000 * 2]
    actions = feed(session, head + SILENCE_1S, [3200])
    (first,) = [t for t in transcribes(actions) if not t.speculative]
    session.on_result(first.ticket, result("and so my", tokens=True))
    near = feed(session, head + SILENCE_1S, [3200])
    (second,) = [t for t in transcribes(near) if not t.speculative]
    assert second.request.prefix_tokens, "1 s of silence keeps the talk's context"
    session.on_result(second.ticket, result("and so my", tokens=True))
    far = feed(session, SILENCE_1S * 3 + head + SILENCE_1S, [3200])
    (third,) = [t for t in transcribes(far) if not t.speculative]
    assert third.request.prefix_tokens == () and third.request.context_s == 0.0


def test_failure_result_ends_session_with_1011() -> None:
    session = new_session(encoding="linear16")
    actions = feed(session, speech() + SILENCE_1S, [4000])
    out = session.on_result(transcribes(actions)[0].ticket, RuntimeError("boom"))
    assert isinstance(out[-1], Close) and out[-1].code == 1011
    errors = [a.message for a in out if isinstance(a, Send)]
    assert "boom" not in str(errors), "internal details never reach a client"


def test_a_pause_asks_for_the_final_early_and_the_endpoint_promotes_it() -> None:
    from server.session import Promote

    session = new_session(encoding="linear16")
    pause = bytes(32000 * 3 // 10)  # 300 ms: past speculate_ms, short of the endpoint
    actions = feed(session, speech()[: 32000 * 2] + pause, [3200])
    (guess,) = [t for t in transcribes(actions) if t.speculative]
    assert guess.request.final
    early = session.on_result(guess.ticket, result("and so my"))
    assert sent(early, Results) == [], "a guess is not sent before the endpoint confirms it"
    actions = feed(session, SILENCE_1S, [3200])
    assert [a for a in actions if isinstance(a, Promote)] == [Promote(guess.ticket)]
    assert transcribes(actions) == [], "no second transcription of the same audio"
    (final,) = sent(actions, Results)
    assert isinstance(final, Results) and final.is_final and final.speech_final
    assert final.transcript == "and so my"


def test_speech_after_a_pause_withdraws_the_guess() -> None:
    from server.session import Cancel

    session = new_session(encoding="linear16")
    pcm = speech()
    pause = bytes(32000 * 3 // 10)
    actions = feed(session, pcm[: 32000 * 2] + pause, [3200])
    (guess,) = [t for t in transcribes(actions) if t.speculative]
    actions = feed(session, pcm[32000 * 2 : 32000 * 3], [3200])
    assert Cancel(guess.ticket) in actions


def test_a_guess_that_ends_a_sentence_closes_the_utterance_sooner() -> None:
    from server.session import Promote

    def run(text: str) -> list[Action]:
        session = new_session(encoding="linear16")
        pause = bytes(32000 * 3 // 10)  # 300 ms of silence: the guess is out, no endpoint yet
        actions = feed(session, speech()[: 32000 * 2] + pause, [3200])
        (guess,) = [t for t in transcribes(actions) if t.speculative]
        session.on_result(guess.ticket, result(text))
        return feed(session, bytes(32000 * 6 // 100), [640])  # 60 ms more

    assert any(isinstance(a, Promote) for a in run("And so, my fellow Americans."))
    assert not any(isinstance(a, Promote) for a in run("and so my fellow"))


def test_explicit_endpointing_is_never_shortened() -> None:
    session = new_session(encoding="linear16", endpointing_ms=500)
    pause = bytes(32000 * 3 // 10)
    actions = feed(session, speech()[: 32000 * 2] + pause, [3200])
    (guess,) = [t for t in transcribes(actions) if t.speculative]
    session.on_result(guess.ticket, result("A sentence."))
    assert transcribes(feed(session, bytes(32000 * 6 // 100), [640])) == []
    assert session.backlog == 0


def test_no_interim_for_a_pause_only_for_new_speech() -> None:
    config = SessionConfig(speculate_ms=None, context_ms=None)
    session = new_session(config, encoding="linear16", interim_results=True, endpointing_ms=3000)
    head = speech()[: 32000 * 2]
    (interim,) = transcribes(feed(session, head, [3200]))
    out = session.on_result(interim.ticket, AsrResult(text="And so"))
    for t in transcribes(out):  # the cadence asked for more while the first one ran
        session.on_result(t.ticket, AsrResult(text="And so my"))
    pause = feed(session, bytes(32000 * 15 // 10), [3200])  # 1.5 s: two cadences pass
    assert transcribes(pause) == [], "silence says nothing new"
    resumed = feed(session, speech()[32000 * 2 : 32000 * 3], [3200])
    assert len(transcribes(resumed)) == 1, "new speech gets its interim"


def spoken(text: str, language: str, first_token: int, start: float = 0.1) -> AsrResult:
    """A result in `language` whose word k has the token id `first_token + k`."""
    words = tuple(
        AsrWord(" " + w, start + 0.3 * i, start + 0.3 * i + 0.25, 0.9, (first_token + i,))
        for i, w in enumerate(text.split())
    )
    return AsrResult(text=text, words=words, avg_logprob=-0.2, language=language)


def test_a_detected_stream_names_its_languages_and_forgets_context_of_another() -> None:
    session = new_session(
        SessionConfig(speculate_ms=None), encoding="linear16", report_languages=True
    )
    (first,) = transcribes(feed(session, speech() + SILENCE_1S, [4000]))
    assert first.request.language is None and first.request.expected_language is None
    out = session.on_result(first.ticket, spoken("und so meine", "de", 1000))
    (message,) = sent(out, Results)
    assert isinstance(message, Results) and message.languages == ("de",)
    assert {w.language for w in message.words} == {"de"}
    (second,) = transcribes(out)
    assert second.request.expected_language == "de"
    assert second.request.prefix_tokens == (1000, 1001, 1002)
    out = session.on_result(second.ticket, spoken("y así", "es", 3000))
    (message,) = sent(out, Results)
    assert isinstance(message, Results) and message.languages == ("es",)
    (third,) = transcribes(out)
    assert third.request.expected_language == "es"
    assert third.request.prefix_tokens == (3000, 3001), "German words are no context for Spanish"


def test_fixed_and_default_language_streams_send_no_language_fields() -> None:
    for options in ({"language": "de"}, {}):
        session = new_session(SessionConfig(speculate_ms=None), encoding="linear16", **options)
        (first,) = transcribes(feed(session, speech() + SILENCE_1S, [4000]))
        assert first.request.task == "transcribe"
        out = session.on_result(first.ticket, spoken("und so meine", "de", 1000))
        (message,) = sent(out, Results)
        assert isinstance(message, Results) and message.languages is None
        assert all(w.language is None for w in message.words)
        (second,) = transcribes(out)
        assert second.request.expected_language == (None if options else "de")


def test_translate_is_asked_of_the_engine() -> None:
    session = new_session(encoding="linear16", task="translate")
    requests = [t.request for t in transcribes(feed(session, speech() + SILENCE_1S, [4000]))]
    assert requests and all(r.task == "translate" for r in requests)


def test_the_session_module_loads_no_model_stack_and_starts_no_thread() -> None:
    """Session is a pure state machine: importing it pulls in neither the ML stack nor
    the audio container decoder, and starts no thread."""
    probe = (
        "import sys, threading\n"
        "import server.session\n"
        "heavy = {'faster_whisper', 'ctranslate2', 'onnxruntime', 'av', 'tokenizers'}\n"
        "loaded = sorted(heavy & set(sys.modules))\n"
        "assert not loaded, loaded\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=REPO_ROOT, timeout=60)
