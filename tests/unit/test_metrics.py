"""The plain-number metric families read exactly as prometheus_client's own would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.metrics import Metrics

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# On a bound, between bounds, below the first and above the last.
OBSERVATIONS = (0.001, 0.0007, 0.01, 0.0101, 1, 2.4999, 60, 61, 0.0)


def samples(registry: CollectorRegistry, prefix: str) -> list[str]:
    """The sample lines of one metric, without the _created ones prometheus_client adds."""
    text = generate_latest(registry).decode()
    return [
        line
        for line in text.splitlines()
        if line.startswith(prefix) and not line.startswith(f"{prefix}_created")
    ]


def test_upstream_histogram_buckets_match_prometheus_clients_own() -> None:
    """Bucket counts (le inclusive), count and sum equal those of a prometheus_client Histogram."""
    metrics = Metrics()
    reference = CollectorRegistry()
    expected = Histogram("ref", "", ["storefront"], buckets=BUCKETS, registry=reference).labels("main")
    ours = metrics.upstream_seconds.labels("main")
    for seconds in OBSERVATIONS:
        ours.observe(seconds)
        expected.observe(seconds)
    ours_lines = samples(metrics.registry, "cc_sidecar_upstream_seconds")
    expected_lines = samples(reference, "ref")
    assert [line.replace("cc_sidecar_upstream_seconds", "ref", 1) for line in ours_lines] == expected_lines


def test_request_counter_matches_prometheus_clients_own() -> None:
    """Labelled counts read the same as a prometheus_client Counter's; an int status is spelled as text."""
    metrics = Metrics()
    reference = CollectorRegistry()
    expected = Counter("ref", "", ["storefront", "status"], registry=reference)
    for storefront, status in (("main", 200), ("main", 200), ("main", 502), ("other", 200)):
        metrics.requests.labels(storefront, status).inc()
        expected.labels(storefront, str(status)).inc()
    ours_lines = samples(metrics.registry, "cc_sidecar_requests_total")
    assert [line.replace("cc_sidecar_requests", "ref", 1) for line in ours_lines] == samples(
        reference, "ref_total"
    )


def test_counter_without_labels_reads_zero_before_any_increment() -> None:
    """An unlabelled family is exported at 0 from the start, as prometheus_client's is."""
    metrics = Metrics()
    assert metrics.registry.get_sample_value("cc_sidecar_token_cache_hits_total") == 0.0
    metrics.token_cache_hits.inc()
    assert metrics.registry.get_sample_value("cc_sidecar_token_cache_hits_total") == 1.0


def test_wrong_number_of_label_values_is_refused() -> None:
    """A family asked for the wrong number of label values raises instead of exporting nonsense."""
    with pytest.raises(ValueError, match="cc_sidecar_injections takes labels"):
        Metrics().injections.labels("main")
