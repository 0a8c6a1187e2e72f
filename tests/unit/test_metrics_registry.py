"""The metrics interface: histograms, the registry's merge, and the Prometheus text."""

from __future__ import annotations

import math
from operator import itemgetter

from hypothesis import given
from hypothesis import strategies as st

from kingest.metrics.prometheus import format_value, render
from kingest.metrics.registry import (
    Histogram,
    MetricFamily,
    MetricType,
    Registry,
)


def test_buckets_count_values_up_to_their_bound() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    snapshot = histogram.snapshot()
    assert snapshot.counts == (2, 2)  # 0.1 and 1.0 fall in their own bucket (le)
    assert snapshot.count == 5
    assert math.isclose(snapshot.sum, 8.65)


# Whole numbers: the batch compares keys with origin - bound, one at a time compares
# origin - key with bound, and only exact arithmetic makes the two agree at a bound itself.
@given(
    st.lists(st.integers(min_value=-5, max_value=200).map(float), max_size=300),
    st.integers(min_value=0, max_value=300).map(float),
)
def test_observing_a_sorted_batch_equals_observing_each(keys: list[float], origin: float) -> None:
    items = sorted((key, index) for index, key in enumerate(keys))
    bounds = (1.0, 2.0, 5.0, 10.0, 50.0, 100.0)
    batch = Histogram(bounds)
    batch.observe_before(items, itemgetter(0), origin)
    one_by_one = Histogram(bounds)
    for key, _ in items:
        one_by_one.observe(origin - key)
    expected = one_by_one.snapshot()
    got = batch.snapshot()
    assert got.counts == expected.counts
    assert got.count == expected.count
    assert math.isclose(got.sum, expected.sum, rel_tol=1e-9, abs_tol=1e-6)


def test_families_of_one_name_from_several_collectors_merge() -> None:
    registry = Registry()

    def collector(source: str, value: float) -> list[MetricFamily]:
        family = MetricFamily("kingest_x_total", MetricType.COUNTER, "X.")
        family.add(value, (("source", source),))
        return [family]

    registry.register(lambda: collector("a", 1))
    registry.register(lambda: collector("b", 2))
    (family,) = registry.collect()
    assert family.value() == 3
    assert family.value(source="b") == 2


def test_text_format_escapes_and_orders_histograms() -> None:
    family = MetricFamily("kingest_t_seconds", MetricType.HISTOGRAM, "Help with \\ and\nline.")
    histogram = Histogram((0.5, 1.0))
    histogram.observe(0.2)
    histogram.observe(3.0)
    family.add_histogram(histogram.snapshot(), (("source", 'we"ird\\\n'),))
    text = render([family])
    assert text.splitlines() == [
        "# HELP kingest_t_seconds Help with \\\\ and\\nline.",
        "# TYPE kingest_t_seconds histogram",
        'kingest_t_seconds_bucket{source="we\\"ird\\\\\\n",le="0.5"} 1',
        'kingest_t_seconds_bucket{source="we\\"ird\\\\\\n",le="1.0"} 1',
        'kingest_t_seconds_bucket{source="we\\"ird\\\\\\n",le="+Inf"} 2',
        'kingest_t_seconds_sum{source="we\\"ird\\\\\\n"} 3.2',
        'kingest_t_seconds_count{source="we\\"ird\\\\\\n"} 2',
    ]


def test_values_print_like_prometheus_clients() -> None:
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"
    assert format_value(2.0**60) == repr(2.0**60)
