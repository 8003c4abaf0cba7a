"""Log records of a session carry its request id as a field: its own key in JSON lines,
a `[request_id]` prefix in text (server.__main__'s formatters, server.connection.SessionLog)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from server.__main__ import JsonFormatter, TextFormatter
from server.connection import SessionLog

REQUEST_ID = "5f0c9a8e-7d6b-4c3a-9e2f-1a2b3c4d5e6f"


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, logging.StreamHandler[io.StringIO]]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger(f"tests.logging.{id(stream)}")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log, handler
    log.removeHandler(handler)


def lines(handler: logging.StreamHandler[io.StringIO]) -> list[str]:
    return handler.stream.getvalue().splitlines()


def test_json_lines_have_request_id_as_a_key_not_in_the_message(
    logger: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    log, handler = logger
    handler.setFormatter(JsonFormatter())
    SessionLog(log, {"request_id": REQUEST_ID}).info("session end: audio_s=%.1f", 11.0)
    (line,) = lines(handler)
    record = json.loads(line)
    assert record["request_id"] == REQUEST_ID
    assert record["message"] == "session end: audio_s=11.0"
    assert record["level"] == "info" and record["logger"] == log.name


def test_json_keeps_other_extra_fields_and_its_own_keys(
    logger: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    log, handler = logger
    handler.setFormatter(JsonFormatter())
    session = SessionLog(log, {"request_id": REQUEST_ID})
    session.warning("slow client", extra={"close_code": 1008, "level": "not the level"})
    log.info("no session here")
    first, second = (json.loads(line) for line in lines(handler))
    assert first["close_code"] == 1008 and first["request_id"] == REQUEST_ID
    assert first["level"] == "warning"  # an extra never hides a standard key
    assert "request_id" not in second


def test_json_records_an_exception_in_its_own_key(
    logger: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    log, handler = logger
    handler.setFormatter(JsonFormatter())
    try:
        raise ValueError("bad frame")
    except ValueError:
        SessionLog(log, {"request_id": REQUEST_ID}).exception("decoder failed")
    record = json.loads(handler.stream.getvalue())
    assert record["request_id"] == REQUEST_ID and "ValueError: bad frame" in record["exc"]


def test_text_lines_show_the_request_id_before_the_message(
    logger: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    log, handler = logger
    handler.setFormatter(TextFormatter())
    SessionLog(log, {"request_id": REQUEST_ID}).info("session end")
    log.info("listening")
    with_id, without_id = lines(handler)
    assert with_id.endswith(f"INFO {log.name}: [{REQUEST_ID}] session end")
    assert without_id.endswith(f"INFO {log.name}: listening")
