"""`python -m bench MODE [flags]`: dispatch to a benchmark module (`capacity`, `single`, ...).

A mode is the module `bench.MODE` with a `main(argv) -> int`; modes added later (for example
`bench.hydration`, `bench.vad`) are found the same way without changes here.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

KNOWN_MODES = {
    "capacity": "N concurrent real-time streams: ours, ours without batching, WhisperLive",
    "single": "one real-time stream: WER vs offline, final latency, caption delay",
    "accuracy": "every evaluation set: offline vs streamed WER at 1 and 8 streams, S/D/I",
}
USAGE = "\n".join(
    [
        "usage: python -m bench MODE [flags]   (python -m bench MODE --help)",
        "modes:",
        *(f"  {name:<10} {text}" for name, text in KNOWN_MODES.items()),
        "  NAME       any other bench/NAME.py with a main(argv), e.g. hydration, vad",
    ]
)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if args else 2
    mode, rest = args[0], args[1:]
    if not mode.isidentifier() or mode.startswith("_"):
        print(f"unknown mode {mode!r}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"bench.{mode}")
    except ModuleNotFoundError as exc:
        if exc.name != f"bench.{mode}":
            raise
        print(f"unknown mode {mode!r}\n{USAGE}", file=sys.stderr)
        return 2
    entry: Callable[[Sequence[str]], int] | None = getattr(module, "main", None)
    if entry is None:
        print(f"bench.{mode} has no main(); run it as python -m bench.{mode}", file=sys.stderr)
        return 2
    return entry(rest)


if __name__ == "__main__":
    sys.exit(main())
