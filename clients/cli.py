"""Plumbing shared by the command-line clients: common flags, caption routing, Ctrl-C handling."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO

from clients.console import LiveConsole
from clients.formats import OUTPUT_FORMATS, OutputFormat, TranscriptWriter, text_lines
from clients.stream import DEFAULT_URL, StreamConfig
from server.protocol import DecodedMessage, Error, Results

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every client takes: server, key, language, translation, speakers, interim,
    output."""
    parser.add_argument(
        "--url",
        default=os.environ.get("STREAMSCRIBE_URL", DEFAULT_URL),
        help="server address, ws://HOST:PORT or wss://HOST[/prefix] (env STREAMSCRIBE_URL; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("STREAMSCRIBE_TOKEN"),
        help="API key, sent as 'Authorization: Token KEY' (env STREAMSCRIBE_TOKEN)",
    )
    parser.add_argument(
        "--language",
        help="language code, e.g. de, or multi to detect it per utterance and show it "
        "(default: the model's)",
    )
    parser.add_argument(
        "--translate",
        action="store_true",
        help="English text whatever is spoken (multilingual models only)",
    )
    parser.add_argument(
        "--diarize",
        action="store_true",
        help="label who speaks: captions and transcripts get [Speaker N] (SRT/text) or "
        "<v Speaker N> (WebVTT); the server needs the speaker encoder",
    )
    parser.add_argument(
        "--interim", action="store_true", help="ask for interim results and show them live"
    )
    parser.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default="text",
        help="transcript format: text, json (server messages, one per line), srt or vtt "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--output", type=Path, help="write the transcript to FILE (live captions still print)"
    )


def stream_config(args: argparse.Namespace, sample_rate_hz: int = 16_000) -> StreamConfig:
    return StreamConfig(
        url=args.url,
        token=args.token or None,
        language=args.language or None,
        translate=bool(args.translate),
        diarize=bool(args.diarize),
        interim_results=bool(args.interim),
        sample_rate_hz=sample_rate_hz,
    )


def _tagged(message: Results) -> str:
    """A final's caption lines (one per speaker with diarize), each after the languages heard
    when the server named them: `[de] [Speaker 1] text`."""
    lines = text_lines(message)
    if message.languages:
        languages = f"[{','.join(message.languages)}]"
        lines = [f"{languages} {line}" for line in lines]
    return "\n".join(lines)


class CaptionRouter:
    """Sends each server message to the live console and/or the transcript writer.

    With `--output FILE` the transcript goes to the file in `--format` and the terminal
    shows live captions; without it, `text` shows live captions and other formats go to
    stdout as they are produced.
    """

    def __init__(
        self,
        output_format: OutputFormat,
        show_interim: bool,
        output: TextIO | None,
        stdout: TextIO = sys.stdout,
        stderr: TextIO = sys.stderr,
    ) -> None:
        self._stderr = stderr
        self._console: LiveConsole | None = None
        self._writer: TranscriptWriter | None = None
        self._target: TextIO | None = None
        if output is not None or output_format == "text":
            self._console = LiveConsole(stdout, show_interim=show_interim and stdout.isatty())
        if output is not None:
            self._writer, self._target = TranscriptWriter(output_format, show_interim), output
        elif output_format != "text":
            self._writer, self._target = TranscriptWriter(output_format, show_interim), stdout
        if self._writer is not None and self._target is not None:
            self._write(self._writer.header())

    def _write(self, text: str) -> None:
        if text and self._target is not None:
            self._target.write(text)
            self._target.flush()

    def handle(self, message: DecodedMessage, raw: str, offset_s: float = 0.0) -> None:
        if isinstance(message, Error):
            self.status(f"server error {message.code}: {message.message}")
        elif isinstance(message, Results) and self._console is not None:
            if message.is_final:
                self._console.final(_tagged(message))
            else:
                self._console.interim(message.transcript)
        if self._writer is not None:
            self._write(self._writer.on_message(message, raw, offset_s))

    def status(self, text: str) -> None:
        """A line for the person at the terminal (stderr), never mixed into the transcript."""
        if self._console is not None:
            self._console.clear_interim()
        self._stderr.write(text + "\n")
        self._stderr.flush()


class Interrupts:
    """First Ctrl-C (or SIGTERM) sets `stop`, so the client finishes cleanly; a second quits."""

    def __init__(self, on_stop: Callable[[], None] | None = None) -> None:
        self.stop = asyncio.Event()
        self._on_stop = on_stop
        self._task: asyncio.Task[object] | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)

    def _on_signal(self) -> None:
        if not self.stop.is_set():
            self.stop.set()
            if self._on_stop is not None:
                self._on_stop()
            sys.stderr.write("\nfinishing the stream (Ctrl-C again to quit at once)\n")
            sys.stderr.flush()
        elif self._task is not None:
            self._task.cancel()

    async def wait(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for a stop request; True if one came."""
        try:
            await asyncio.wait_for(self.stop.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


def open_output(path: Path | None) -> TextIO | None:
    if path is None:
        return None
    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise SystemExit(f"cannot write {path}: {exc.strerror}") from exc


def run_captioning(
    args: argparse.Namespace,
    work: Callable[[argparse.Namespace, CaptionRouter], Coroutine[Any, Any, int]],
    errors: tuple[type[Exception], ...],
) -> int:
    """Run one CLI's captioning coroutine with its output file; errors become exit codes."""
    output = open_output(args.output)
    router = CaptionRouter(args.format, bool(args.interim), output)
    try:
        return asyncio.run(work(args, router))
    except errors as exc:
        router.status(f"error: {exc}")
        return EXIT_FAILED
    except (KeyboardInterrupt, asyncio.CancelledError):
        router.status("interrupted")
        return EXIT_INTERRUPTED
    finally:
        if output is not None:
            with contextlib.suppress(OSError):
                output.close()
