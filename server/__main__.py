"""Entry point: argv -> Settings -> logging -> asyncio.run(serve(...))."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence

from server.config import ConfigError, LogSettings, load


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def configure_logging(settings: LogSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    for noisy in ("websockets", "botocore", "aiobotocore", "faster_whisper"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = load(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"streamscribe: configuration error: {exc}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
