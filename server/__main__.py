"""Entry points (`python -m server`, the `streamscribe` command): argv -> Settings -> logging ->
asyncio.run(serve(...))."""

from __future__ import annotations

import os

# numpy's BLAS on one thread: the speaker encoder's small products spin several threads for
# no gain (91 ms of CPU per audio second instead of 13 here); CTranslate2 has its own pool.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from server.config import ConfigError, LogSettings, load

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SESSION_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: [%(request_id)s] %(message)s"


def record_extras(record: logging.LogRecord) -> dict[str, object]:
    """The fields a caller passed with `extra=` (e.g. request_id), in the order given."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object a line; `extra=` fields (request_id...) become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_extras(record).items():
            data.setdefault(key, value)  # never let an extra hide a standard key
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT; records that carry a request_id get it in brackets before the message."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._session_style = logging.PercentStyle(SESSION_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None):
            return self._session_style.format(record)
        return super().formatMessage(record)


def configure_logging(settings: LogSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    for noisy in ("websockets", "uvicorn", "botocore", "aiobotocore", "faster_whisper"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def main(argv: Sequence[str] | None = None, prog: str = "python -m server") -> int:
    """Run the server; `prog` is the command name that `--help` and errors show."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = load(sys.argv[1:] if argv is None else argv, os.environ, prog)
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log)
    from server.app import StartupError, serve

    try:
        return asyncio.run(serve(settings))
    except StartupError as exc:
        logging.getLogger("server").error("cannot start: %s", exc)
        return 2
    except OSError as exc:
        logging.getLogger("server").error("cannot start: %s", exc)
        return 2


def streamscribe() -> int:
    """The `streamscribe` console script."""
    return main(prog="streamscribe")


if __name__ == "__main__":
    sys.exit(main())
