"""Read our server's /metrics after a level: batch sizes, engine time and queue waits per kind."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

# histogram family -> short name used in the summary
HISTOGRAMS = {
    "streamscribe_batch_size": "batch",
    "streamscribe_inference_seconds": "inference_s",
    "streamscribe_queue_wait_seconds": "queue_wait_s",
    "streamscribe_result_latency_seconds": "result_latency_s",
}
COUNTERS = frozenset({"streamscribe_interims_dropped", "streamscribe_sessions_refused"})


def summarise(text: str) -> dict[str, float]:
    """Counts, sums and means of the scheduler histograms, by kind (final / interim).

    Keys look like `final_batch_count`, `final_batch_mean`, `interim_inference_s_sum`;
    plus `interims_dropped` and `sessions_refused` when the server exports them.
    """
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    summary: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        short = HISTOGRAMS.get(family.name)
        for sample in family.samples:
            if short is not None:
                key = f"{sample.labels.get('kind', 'all')}_{short}"
                if sample.name.endswith("_sum"):
                    sums[key] = sums.get(key, 0.0) + sample.value
                elif sample.name.endswith("_count"):
                    counts[key] = counts.get(key, 0.0) + sample.value
            elif family.name in COUNTERS and sample.name.endswith("_total"):
                name = family.name.removeprefix("streamscribe_")
                summary[name] = summary.get(name, 0.0) + sample.value
    for key, count in counts.items():
        summary[f"{key}_count"] = count
        summary[f"{key}_sum"] = round(sums.get(key, 0.0), 3)
        if count:
            summary[f"{key}_mean"] = round(sums.get(key, 0.0) / count, 3)
    return summary


def scrape(http_url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """Summary of `http_url`/metrics; empty when the server does not answer."""
    try:
        with urllib.request.urlopen(f"{http_url}/metrics", timeout=timeout_s) as response:
            body: bytes = response.read()
    except (urllib.error.URLError, OSError) as exc:
        logger.warning("could not read %s/metrics: %s", http_url, exc)
        return {}
    return summarise(body.decode("utf-8", errors="replace"))
