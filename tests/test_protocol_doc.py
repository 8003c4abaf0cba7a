"""docs/protocol.md names every Error code, close code and refused parameter the server has."""

from __future__ import annotations

import re
from typing import get_args

from server.protocol import UNSUPPORTED_PROMISES, ErrorCode
from tests.support.paths import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")


def test_every_error_code_is_documented() -> None:
    missing = [code for code in get_args(ErrorCode) if f"`{code}`" not in DOC]
    assert missing == []


def test_every_refused_parameter_is_documented() -> None:
    missing = [name for name in UNSUPPORTED_PROMISES if f"`{name}`" not in DOC]
    assert missing == []


def test_every_close_code_the_server_sends_has_a_row() -> None:
    rows = set(re.findall(r"^\| (\d{4}) \|", DOC, flags=re.MULTILINE))
    assert rows == {"1000", "1001", "1007", "1008", "1009", "1011", "1013"}
