"""`python -m bench single`: one real-time stream through our server, against issue 2's targets.

Streams every reference file once (interim results on) and prints WER against the offline
ceiling, final latency p50/p95 and caption delay p50/p95, each with its target.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from bench.capacity import TARGETS, RunResult, add_common_arguments, run, settings_from, to_json
from bench.report import LevelReport, format_table


@dataclass(frozen=True)
class Check:
    """One target of issue 2 and whether the measurement meets it."""

    name: str
    measured: float | None
    limit: float
    unit: str

    @property
    def ok(self) -> bool:
        return self.measured is not None and self.measured <= self.limit + 1e-9

    def line(self) -> str:
        value = "-" if self.measured is None else f"{self.measured:.3f}"
        verdict = "ok" if self.ok else "MISSED"
        return f"  {self.name:<28} {value:>8} {self.unit:<6} (target <= {self.limit:g})  {verdict}"


def checks(report: LevelReport) -> list[Check]:
    """Issue 2's one-stream targets for this CPU."""
    wer_gap = None if report.wer is None else (report.wer - report.offline_wer) * 100
    return [
        Check("WER above offline", wer_gap, 1.0, "points"),
        Check("final latency p50", report.final_p50_s, 0.8, "s"),
        Check("final latency p95", report.final_p95_s, 1.5, "s"),
        Check("caption delay p50", report.caption_delay_p50_s, 1.0, "s"),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench single",
        description="One real-time stream through the server: WER, final latency, caption delay.",
    )
    parser.add_argument("--target", choices=sorted(TARGETS), default="ours")
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = settings_from(args, (1,), (TARGETS[args.target],))
    result: RunResult = run(settings)
    report = result.reports[0]
    print(format_table([report]))
    print(f"\n{args.target}, 1 stream, {report.audio_s:.0f} s of audio, interim results on:")
    print(f"  WER {report.wer}  offline ceiling {report.offline_wer}")
    results = checks(report)
    for check in results:
        print(check.line())
    if args.json is not None:
        data = to_json(result, settings)
        data["checks"] = [
            {"name": c.name, "measured": c.measured, "limit": c.limit, "ok": c.ok} for c in results
        ]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if all(c.ok for c in results) else 1
