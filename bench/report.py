"""Score one load level from its clients' records, and render levels as a table and JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from bench.drivers import ClientResult
from bench.metrics_calc import (
    CapacityRule,
    LevelResult,
    caption_delays_s,
    corpus_wer,
    final_latencies_s,
    lost_spans,
    meets,
    percentile,
    settled_latencies_s,
    speech_end_latencies_s,
    transcript,
)
from bench.servers import ResourceUsage
from bench.workload import ClientStream


@dataclass(frozen=True)
class ClientDetail:
    """One client's part of a level, for reading a run's JSON after the fact."""

    client: int
    files: tuple[str, ...]
    refused: bool
    close_code: int | None
    final_latencies_s: tuple[float, ...]
    lost: int
    transcript: str
    errors: tuple[str, ...]


@dataclass(frozen=True)
class LevelReport:
    """Everything measured for one target at one number of concurrent streams."""

    target: str
    streams: int
    accepted: int
    refusals: int
    utterances: int  # reference files streamed by accepted clients
    utterances_lost: int  # of those, files no final text overlaps
    finals: int
    final_p50_s: float | None
    final_p95_s: float | None
    final_max_s: float | None
    settled_p50_s: float | None  # from when a final's text last changed (peer: before completion)
    settled_p95_s: float | None
    speech_end_p50_s: float | None  # final arrival minus when its last speech was sent
    speech_end_p95_s: float | None
    caption_delay_p50_s: float | None
    caption_delay_p95_s: float | None
    captions_missing: int  # utterances that no text ever covered
    interim_per_s_per_stream: float
    wer: float | None
    offline_wer: float
    wer_with_pending: float | None  # finals plus text still in progress at the end
    cpu_s: float
    cpu_cores: float
    rss_peak_mb: float
    machine_busy_cores: float  # every process on the machine: shows load from others
    load_avg_1m: float
    audio_s: float
    errors: tuple[str, ...]
    meets_target: bool
    clients: tuple[ClientDetail, ...] = ()
    server_metrics: tuple[tuple[str, float], ...] = ()  # our server's /metrics summary

    def to_json(self) -> dict[str, object]:
        data = dict(asdict(self))
        data["server_metrics"] = dict(self.server_metrics)
        return data


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def score_level(
    target: str,
    streams: Sequence[ClientStream],
    results: Sequence[ClientResult],
    offline: Mapping[str, str],
    usage: ResourceUsage,
    rule: CapacityRule,
    server_metrics: Mapping[str, float] | None = None,
) -> LevelReport:
    """Turn the raw client records of one run into its numbers."""
    by_client = {r.client: r for r in results}
    accepted = [(s, by_client[s.index]) for s in streams if not by_client[s.index].refused]
    final_lat: list[float] = []
    settled_lat: list[float] = []
    speech_end_lat: list[float] = []
    delays: list[float] = []
    missing = 0
    lost = 0
    refs: list[str] = []
    hyps: list[str] = []
    hyps_pending: list[str] = []
    offline_hyps: list[str] = []
    interims = 0
    audio_s = 0.0
    details: list[ClientDetail] = []
    for stream in streams:
        result = by_client[stream.index]
        latencies = (
            final_latencies_s(result.captions, result.send_log) if len(result.send_log) else []
        )
        client_lost = lost_spans([p.speech for p in stream.placements], result.captions)
        details.append(
            ClientDetail(
                client=stream.index,
                files=tuple(p.name for p in stream.placements),
                refused=result.refused,
                close_code=result.close_code,
                final_latencies_s=tuple(round(v, 3) for v in latencies),
                lost=client_lost,
                transcript=transcript(result.captions),
                errors=tuple(result.errors),
            )
        )
        if result.refused:
            continue
        if len(result.send_log):
            final_lat += latencies
            settled_lat += settled_latencies_s(result.captions, result.send_log)
            utterances = [u for p in stream.placements for u in p.utterances]
            speech_end_lat += speech_end_latencies_s(result.captions, utterances, result.send_log)
            d, m = caption_delays_s(utterances, result.captions, result.send_log)
            delays += d
            missing += m
        lost += client_lost
        refs.append(" ".join(p.reference for p in stream.placements))
        hyp = transcript(result.captions)
        hyps.append(hyp)
        hyps_pending.append(f"{hyp} {result.pending_text}".strip())
        offline_hyps.append(" ".join(offline[p.name] for p in stream.placements))
        interims += result.interim_updates
        audio_s += result.audio_sent_s
    all_refs = [" ".join(p.reference for p in s.placements) for s in streams]
    all_offline = [" ".join(offline[p.name] for p in s.placements) for s in streams]
    offline_wer = (
        corpus_wer(refs, offline_hyps).wer if refs else corpus_wer(all_refs, all_offline).wer
    )
    wer = corpus_wer(refs, hyps).wer if refs else None
    wer_pending = corpus_wer(refs, hyps_pending).wer if refs else None
    refusals = sum(1 for r in results if r.refused)
    final_p95 = percentile(final_lat, 95)
    level = LevelResult(
        streams=len(streams),
        final_p95_s=final_p95,
        wer=wer,
        offline_wer=offline_wer,
        refusals=refusals,
    )
    errors = sorted({e for r in results for e in r.errors})
    return LevelReport(
        target=target,
        streams=len(streams),
        accepted=len(accepted),
        refusals=refusals,
        utterances=sum(len(s.placements) for s, _ in accepted),
        utterances_lost=lost,
        finals=len(final_lat),
        final_p50_s=_round(percentile(final_lat, 50)),
        final_p95_s=_round(final_p95),
        final_max_s=_round(max(final_lat, default=None) if final_lat else None),
        settled_p50_s=_round(percentile(settled_lat, 50)),
        settled_p95_s=_round(percentile(settled_lat, 95)),
        speech_end_p50_s=_round(percentile(speech_end_lat, 50)),
        speech_end_p95_s=_round(percentile(speech_end_lat, 95)),
        caption_delay_p50_s=_round(percentile(delays, 50)),
        caption_delay_p95_s=_round(percentile(delays, 95)),
        captions_missing=missing,
        interim_per_s_per_stream=round(interims / audio_s, 3) if audio_s else 0.0,
        wer=_round(wer, 4),
        offline_wer=round(offline_wer, 4),
        wer_with_pending=_round(wer_pending, 4),
        cpu_s=round(usage.cpu_s, 1),
        cpu_cores=round(usage.cpu_cores, 2),
        rss_peak_mb=round(usage.rss_peak_mb, 1),
        machine_busy_cores=round(usage.machine_busy_cores, 2),
        load_avg_1m=round(usage.load_avg_1m, 2),
        audio_s=round(audio_s, 1),
        errors=tuple(errors[:10]),
        meets_target=meets(level, rule),
        clients=tuple(details),
        server_metrics=tuple(sorted((server_metrics or {}).items())),
    )


def level_result(report: LevelReport) -> LevelResult:
    """The part of a report that decides capacity."""
    return LevelResult(
        streams=report.streams,
        final_p95_s=report.final_p95_s,
        wer=report.wer,
        offline_wer=report.offline_wer,
        refusals=report.refusals,
    )


COLUMNS: tuple[tuple[str, str], ...] = (
    ("target", "target"),
    ("streams", "N"),
    ("refusals", "refused"),
    ("utterances_lost", "lost"),
    ("final_p50_s", "final p50"),
    ("final_p95_s", "final p95"),
    ("settled_p95_s", "settled p95"),
    ("speech_end_p95_s", "from speech p95"),
    ("caption_delay_p50_s", "caption p50"),
    ("caption_delay_p95_s", "caption p95"),
    ("interim_per_s_per_stream", "interim/s"),
    ("wer", "WER"),
    ("offline_wer", "offline"),
    ("cpu_cores", "CPU cores"),
    ("rss_peak_mb", "RSS MB"),
    ("machine_busy_cores", "machine cores"),
    ("meets_target", "ok"),
)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def format_table(reports: Sequence[LevelReport]) -> str:
    """A plain-text table, one row per (target, N)."""
    rows = [[header for _, header in COLUMNS]]
    for report in reports:
        data = asdict(report)
        rows.append([_cell(data[name]) for name, _ in COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
