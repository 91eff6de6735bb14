"""The metrics store and its exposition (pure logic; the real scrape is an integration test)."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from collector.exposition import build_registry
from collector.metrics import MetricsStore
from collector.session import ProcessSession, ResourceSettings, SpanNames
from profiler import wire
from profiler.agent.rules import OVERFLOW


def session(pid: int, service: str = "svc", names: SpanNames | None = None) -> ProcessSession:
    hello = {"pid": pid, "program": service, "clock": (0, 0)}
    s = ProcessSession(hello, ResourceSettings(), names=names)
    s.add_codes([(1, "handle", "app.py", 3, "app"), (2, "db", "app.py", 9, "app")])
    return s


def histogram(durations_ms: list[float]) -> tuple[int, int, list[int]]:
    buckets = [0] * wire.SPAN_BUCKETS
    for ms in durations_ms:
        index = next((i for i, b in enumerate(wire.SPAN_BOUNDS_MS) if ms <= b), len(buckets) - 1)
        buckets[index] += 1
    return len(durations_ms), int(sum(durations_ms) * 1e6), buckets


def stats(*entries: tuple[int, int, tuple[int, int, list[int]]], **runtime: object) -> dict:
    spans = [
        (code, state, count, total, *buckets) for code, state, (count, total, buckets) in entries
    ]
    return {"metrics": {"spans": spans, **runtime}, "dropped": {"buffer_full": 3}}


def scrape(store: MetricsStore, naming: str = "otel") -> dict[str, dict[tuple, float]]:
    text = generate_latest(build_registry(store, naming)).decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def labels(**values: str) -> tuple:
    return tuple(sorted(values.items()))


def test_span_metrics_use_the_spanmetrics_connector_names_and_buckets() -> None:
    store = MetricsStore()
    store.update(
        session(10),
        stats(
            (1, wire.STATE_COMPLETED, histogram([1, 3, 7, 60])),
            (1, wire.STATE_FAILED, histogram([12])),
        ),
    )
    samples = scrape(store)
    base = {"service_name": "svc", "span_name": "handle", "span_kind": "SPAN_KIND_INTERNAL"}
    calls = samples["traces_span_metrics_calls_total"]
    assert calls[labels(**base, status_code="STATUS_CODE_UNSET")] == 4
    assert calls[labels(**base, status_code="STATUS_CODE_ERROR")] == 1
    buckets = samples["traces_span_metrics_duration_milliseconds_bucket"]
    unset = {
        dict(k)["le"]: v for k, v in buckets.items() if ("status_code", "STATUS_CODE_UNSET") in k
    }
    assert unset["2.0"] == 1 and unset["4.0"] == 2 and unset["8.0"] == 3 and unset["50.0"] == 3
    assert unset["100.0"] == 4 and unset["+Inf"] == 4
    assert sorted(float(le) for le in unset if le != "+Inf") == [
        2,
        4,
        6,
        8,
        10,
        50,
        100,
        200,
        400,
        800,
        1000,
        1400,
        2000,
        5000,
        10000,
        15000,
    ]
    total = samples["traces_span_metrics_duration_milliseconds_sum"]
    assert round(total[labels(**base, status_code="STATUS_CODE_UNSET")]) == 71


def test_tempo_naming_is_in_seconds_with_service_label() -> None:
    store = MetricsStore()
    store.update(session(10), stats((2, wire.STATE_COMPLETED, histogram([3, 5]))))
    samples = scrape(store, "tempo")
    key = labels(
        service="svc",
        span_name="db",
        span_kind="SPAN_KIND_INTERNAL",
        status_code="STATUS_CODE_UNSET",
    )
    assert samples["traces_spanmetrics_calls_total"][key] == 2
    buckets = {dict(k)["le"]: v for k, v in samples["traces_spanmetrics_latency_bucket"].items()}
    assert buckets["0.002"] == 0 and buckets["0.004"] == 1 and buckets["0.008"] == 2
    assert abs(samples["traces_spanmetrics_latency_sum"][key] - 0.008) < 1e-9


def test_counters_never_go_back_when_a_process_leaves_and_its_series_expire() -> None:
    store = MetricsStore(stale_after=0.0)
    first, second = session(10), session(11)
    store.update(first, stats((1, wire.STATE_COMPLETED, histogram([1, 1])), tasks_live=2))
    store.update(second, stats((1, wire.STATE_COMPLETED, histogram([1]))))
    store.ended(first, lost=True)
    samples = scrape(store)
    calls = samples["traces_span_metrics_calls_total"]
    assert sum(calls.values()) == 3  # the process that left still counts
    assert samples["async_inspect_processes_lost_total"][labels(service_name="svc")] == 1
    pids = {dict(k)["pid"] for k in samples["async_inspect_process_up"]}
    assert pids == {"11"}  # stale_after=0: the leaver's own series are gone


def test_span_names_are_capped_per_service() -> None:
    store = MetricsStore()
    store.update(
        session(10, names=SpanNames(1)),
        stats((1, wire.STATE_COMPLETED, histogram([1])), (2, wire.STATE_COMPLETED, histogram([1]))),
    )
    names = {dict(k)["span_name"] for k in scrape(store)["traces_span_metrics_calls_total"]}
    assert names == {"handle", OVERFLOW}


def test_process_metrics_and_health() -> None:
    store = MetricsStore()
    store.update(
        session(10),
        stats(
            tasks_live=5,
            tasks_running=1,
            tasks_created=9,
            tasks_finished={"failed": 2},
            polls=40,
            busy_ns=2_000_000_000,
            longest_step_ns=150_000_000,
        ),
    )
    samples = scrape(store)
    ids = {"service_name": "svc", "pid": "10"}
    assert samples["async_inspect_tasks_live"][labels(**ids, state="running")] == 1
    assert samples["async_inspect_tasks_live"][labels(**ids, state="blocked")] == 4
    assert samples["async_inspect_tasks_finished_total"][labels(**ids, outcome="failed")] == 2
    assert samples["async_inspect_busy_seconds_total"][labels(**ids)] == 2.0
    assert samples["async_inspect_longest_step_seconds"][labels(**ids)] == 0.15
    assert samples["async_inspect_records_dropped_total"][labels(**ids, reason="buffer_full")] == 3
    assert samples["async_inspect_processes_attached"][()] == 1


def test_malformed_entries_are_skipped() -> None:
    store = MetricsStore()
    store.update(session(10), {"metrics": {"spans": [(1, 99, 1, 1), "junk", (1,)]}})
    assert scrape(store).get("traces_span_metrics_calls_total", {}) == {}
