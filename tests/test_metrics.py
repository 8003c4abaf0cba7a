"""server.metrics without a server: names, process and platform collectors, info metrics."""

from __future__ import annotations

import sys
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from server.metrics import CONTENT_TYPE_LATEST, Metrics, package_version


def samples(metrics: Metrics) -> dict[str, list[Sample]]:
    """Sample name -> its samples, parsed back from the rendered text."""
    parsed: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            parsed.setdefault(sample.name, []).append(sample)
    return parsed


def family_types(metrics: Metrics) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(metrics.render().decode())}


def test_no_gauge_is_named_like_a_counter() -> None:
    for name, kind in family_types(Metrics()).items():
        if kind == "gauge":
            assert "_total" not in name, name  # `_total` is the counter suffix


def test_hydration_gauges_have_their_new_names() -> None:
    metrics = Metrics()
    metrics.hydration_bytes.set(1_000)
    metrics.hydration_bytes_expected.set(4_000)
    parsed = samples(metrics)
    assert parsed["streamscribe_hydration_bytes"][0].value == 1_000
    assert parsed["streamscribe_hydration_bytes_expected"][0].value == 4_000
    assert "streamscribe_hydration_bytes_total_expected" not in parsed


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process metrics need /proc")
def test_process_metrics_are_on_the_private_registry() -> None:
    parsed = samples(Metrics())
    assert parsed["process_resident_memory_bytes"][0].value > 0
    assert parsed["process_open_fds"][0].value > 0
    assert "process_cpu_seconds_total" in parsed


def test_platform_info_is_on_the_private_registry() -> None:
    (info,) = samples(Metrics())["python_info"]
    assert info.labels["major"] == str(sys.version_info.major)


def test_build_info_carries_the_version() -> None:
    (given,) = samples(Metrics(version="9.9.9"))["streamscribe_build_info"]
    assert given.labels == {"version": "9.9.9"} and given.value == 1
    (installed,) = samples(Metrics())["streamscribe_build_info"]
    assert installed.labels["version"] == package_version() != ""


def test_model_info_appears_when_set_and_is_replaced() -> None:
    metrics = Metrics()
    assert "streamscribe_model_info" not in samples(metrics)
    metrics.set_model_info("tiny.en", "cpu", "int8")
    metrics.set_model_info("large-v3", "cuda", "float16")
    (model,) = samples(metrics)["streamscribe_model_info"]
    assert model.labels == {"name": "large-v3", "device": "cuda", "compute_type": "float16"}
    assert model.value == 1


def test_two_servers_in_one_process_do_not_share_metrics() -> None:
    first, second = Metrics(), Metrics()
    first.sessions_active.inc()
    assert samples(second)["streamscribe_sessions_active"][0].value == 0


def test_content_type_is_the_one_prometheus_client_renders() -> None:
    assert CONTENT_TYPE_LATEST == prometheus_client.CONTENT_TYPE_LATEST
    assert CONTENT_TYPE_LATEST.startswith("text/plain")
