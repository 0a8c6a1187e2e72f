"""``kingest top`` without sockets: the text-format parser, rates between scrapes, quantiles,
and what a rendered frame shows."""

from __future__ import annotations

import contextlib
import io
import math
import re
import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kingest.cli.main import build_parser
from kingest.cli.top import once
from kingest.metrics import prometheus
from kingest.metrics.registry import Histogram, MetricFamily, MetricType
from kingest.metrics.scrape import (
    DEFAULT_METRICS_ADDRESS,
    ExpositionError,
    ScrapeError,
    metrics_url,
    parse,
)
from kingest.metrics.top import (
    Count,
    Monitor,
    Scrape,
    View,
    build_view,
    histogram_quantile,
)
from kingest.metrics.top_render import count as exact_count
from kingest.metrics.top_render import human, render

# The example of the format's documentation
# (https://prometheus.io/docs/instrumenting/exposition_formats/#text-format-example).
PROMETHEUS_EXAMPLE = r"""
# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# Escaping in label values:
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9

# Minimalistic line:
metric_without_timestamp_and_labels 12.47

# A weird metric from before the epoch:
something_weird{problem="division by zero"} +Inf -3982045

# A histogram, which has a pretty complex representation in the text format:
# HELP http_request_duration_seconds A histogram of the request duration.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="0.1"} 33444
http_request_duration_seconds_bucket{le="0.2"} 100392
http_request_duration_seconds_bucket{le="0.5"} 129389
http_request_duration_seconds_bucket{le="1"} 133988
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320

# Finally a summary, which has a complex representation, too:
# HELP rpc_duration_seconds A summary of the RPC duration in seconds.
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.01"} 3102
rpc_duration_seconds{quantile="0.05"} 3272
rpc_duration_seconds{quantile="0.5"} 4773
rpc_duration_seconds{quantile="0.9"} 9001
rpc_duration_seconds{quantile="0.99"} 76656
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
"""  # noqa: E501

WALL = 1_716_719_400.0  # 2024-05-26T10:30:00Z


def families_of(text: str) -> dict[str, MetricFamily]:
    return {family.name: family for family in parse(textwrap.dedent(text))}


def scrape_of(text: str, at_s: float) -> Scrape:
    return Scrape.of(parse(textwrap.dedent(text)), monotonic_s=at_s, wall_s=WALL + at_s)


def row_cells(frame: list[str], name: str) -> list[str]:
    """The cells of the line whose first cell is ``name``."""
    for line in frame:
        cells = line.split()
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no line for {name} in:\n" + "\n".join(frame))


# --- The parser ---------------------------------------------------------------------------


def test_the_documentation_example_parses() -> None:
    families = families_of(PROMETHEUS_EXAMPLE)
    assert list(families) == [
        "http_requests_total",
        "msdos_file_access_time_seconds",
        "metric_without_timestamp_and_labels",
        "something_weird",
        "http_request_duration_seconds",
    ]  # the summary is skipped
    requests = families["http_requests_total"]
    assert requests.type is MetricType.COUNTER
    assert requests.help == "The total number of HTTP requests."
    assert requests.value(code="200") == 1027
    assert requests.value(method="post") == 1030
    msdos = families["msdos_file_access_time_seconds"].samples[0]
    assert msdos.label("path") == "C:\\DIR\\FILE.TXT"
    assert msdos.label("error") == 'Cannot find file:\n"FILE.TXT"'
    assert msdos.value == 1.458255915e9
    assert families["msdos_file_access_time_seconds"].type is MetricType.GAUGE  # untyped
    assert families["metric_without_timestamp_and_labels"].samples[0].labels == ()
    assert families["something_weird"].samples[0].value == math.inf
    duration = families["http_request_duration_seconds"]
    assert duration.type is MetricType.HISTOGRAM
    assert [s.name for s in duration.samples[-3:]] == [
        "http_request_duration_seconds_bucket",
        "http_request_duration_seconds_sum",
        "http_request_duration_seconds_count",
    ]
    assert duration.samples[5].labels == (("le", "+Inf"),)


def test_special_values_timestamps_and_spacing() -> None:
    families = families_of(
        """
        # TYPE g gauge
        g{k="nan"} NaN
        g{k="minus"} -Inf 1
        g{k="exp"} 1.5e-3 -20
        g{ k = "spaced" , } 7
        g{k="tab"}\t8\t1716719400000
        """
    )
    values = {s.label("k"): s.value for s in families["g"].samples}
    assert math.isnan(values.pop("nan"))
    assert values == {"minus": -math.inf, "exp": 0.0015, "spaced": 7, "tab": 8}


def test_help_escapes_and_families_without_samples() -> None:
    families = families_of(
        r"""
        # HELP a Line one\nline two \\ backslash
        # TYPE a counter
        # HELP b
        # TYPE b histogram
        # some comment that is neither
        #
        """
    )
    assert families["a"].help == "Line one\nline two \\ backslash"
    assert families["a"].samples == []
    assert families["b"].type is MetricType.HISTOGRAM
    assert families["b"].help == ""


def test_samples_of_a_family_typed_later_by_another_name_stay_apart() -> None:
    # x_count is a histogram's only when x is declared a histogram.
    families = families_of(
        """
        # TYPE x counter
        x 1
        x_count 2
        """
    )
    assert families["x"].samples[0].value == 1
    assert families["x_count"].type is MetricType.GAUGE


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('foo{a="b', "unterminated"),
        ('foo{a="b\\"} 1', "unterminated"),
        ('foo{a="b"', "expected ',' or '}'"),
        ('foo{a="b" 1', "expected ',' or '}'"),
        ("foo{a=b} 1", "quoted value"),
        ("foo{a} 1", "expected '='"),
        ('foo{="x"} 1', "label name"),
        ('foo{a="\\x"} 1', "unknown escape"),
        ('foo{a="1",a="2"} 1', "given twice"),
        ('{a="b"} 1', "not a sample"),
        ("foo", "without a value"),
        ("foo abc", "not a number"),
        ("foo 1_000", "not a number"),
        ("foo 1 2 3", "unexpected text"),
        ("foo 1 1.5", "timestamp"),
        ("foo-bar 1", "unexpected '-'"),
        ("# TYPE foo bogus", "unknown metric type"),
        ("# TYPE foo", "unknown metric type"),
        ("# TYPE", "without a metric name"),
        ("# HELP 9foo x", "valid metric name"),
        ("# TYPE foo counter\n# TYPE foo gauge", "a second TYPE"),
        ("# HELP foo a\n# HELP foo b", "a second HELP"),
        ("foo 1\n# TYPE foo counter", "after its samples"),
        ("# TYPE h histogram\nh_bucket 1", "without an le label"),
        ("# TYPE h histogram\nh 1", "without a suffix"),
    ],
)
def test_garbage_is_a_clear_error(line: str, message: str) -> None:
    text = f"# TYPE ok gauge\nok 1\n{line}\n"
    with pytest.raises(ExpositionError, match=re.escape(message)) as caught:
        parse(text)
    assert caught.value.line_number >= 3
    assert f"line {caught.value.line_number}:" in str(caught.value)


def test_an_html_page_is_refused_on_its_first_line() -> None:
    with pytest.raises(ExpositionError, match="line 1: not a sample"):
        parse("<html><body>Not Found</body></html>\n")


@given(st.text())
def test_arbitrary_text_parses_or_fails_cleanly(text: str) -> None:
    with contextlib.suppress(ExpositionError):
        parse(text)


@given(st.text(alphabet='#{}="\\, \n\tabcle_019.+-eEINnfa'))
def test_text_near_the_format_parses_or_fails_cleanly(text: str) -> None:
    with contextlib.suppress(ExpositionError):
        parse(text)


METRIC_NAMES = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True)
LABEL_NAMES = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True)
# HELP text loses its leading blanks in the format (they separate it from the name).
HELP = st.text().map(lambda text: text.lstrip(" \t"))
LABELS = st.dictionaries(LABEL_NAMES, st.text(), max_size=4).map(lambda d: tuple(d.items()))


@st.composite
def families(draw: Any) -> list[MetricFamily]:
    names = draw(st.lists(METRIC_NAMES, min_size=1, max_size=4, unique=True))
    result = []
    for name in names:
        family = MetricFamily(
            name, draw(st.sampled_from([MetricType.COUNTER, MetricType.GAUGE])), draw(HELP)
        )
        for labels in draw(st.lists(LABELS, max_size=4)):
            family.add(draw(st.floats()), labels)
        result.append(family)
    return result


def comparable(items: list[MetricFamily]) -> list[Any]:
    return [
        (
            f.name,
            f.type,
            f.help,
            [(s.name, s.labels, "NaN" if math.isnan(s.value) else s.value) for s in f.samples],
        )
        for f in items
    ]


@settings(max_examples=300)
@given(families())
def test_what_the_agent_renders_parses_back_the_same(written: list[MetricFamily]) -> None:
    assert comparable(parse(prometheus.render(written))) == comparable(written)


@given(
    st.lists(st.floats(min_value=0, max_value=500), max_size=50),
    st.dictionaries(LABEL_NAMES.filter(lambda n: n != "le"), st.text(), max_size=2),
)
def test_histograms_render_and_parse_back(observations: list[float], labels: Any) -> None:
    histogram = Histogram()
    for value in observations:
        histogram.observe(value)
    family = MetricFamily("kingest_x_seconds", MetricType.HISTOGRAM, "Latency.")
    family.add_histogram(histogram.snapshot(), tuple(labels.items()))
    assert comparable(parse(prometheus.render([family]))) == comparable([family])


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("127.0.0.1:9108", "http://127.0.0.1:9108/metrics"),
        ("agent.local:80", "http://agent.local:80/metrics"),
        ("[::1]:9108", "http://[::1]:9108/metrics"),
        ("http://10.0.0.5:9108", "http://10.0.0.5:9108/metrics"),
        ("https://agent/", "https://agent/metrics"),
        ("http://agent:9108/custom/metrics", "http://agent:9108/custom/metrics"),
    ],
)
def test_metrics_urls(address: str, url: str) -> None:
    assert metrics_url(address) == url


@pytest.mark.parametrize("address", ["agent", "ftp://agent/", "http://:80/", "http://a:99999/"])
def test_bad_metrics_addresses(address: str) -> None:
    with pytest.raises(ValueError):
        metrics_url(address)


def test_the_default_address_is_the_agents() -> None:
    port = prometheus.DEFAULT_METRICS_PORT
    assert metrics_url(DEFAULT_METRICS_ADDRESS) == f"http://127.0.0.1:{port}/metrics"


# --- Rates, totals, quantiles -------------------------------------------------------------

BEFORE = """
    # TYPE kingest_source_received_records_total counter
    kingest_source_received_records_total{source="web_logs"} 1000
    kingest_source_received_records_total{source="mqtt"} 40
    # TYPE kingest_producer_accepted_records_total counter
    kingest_producer_accepted_records_total{source="web_logs"} 900
    kingest_producer_accepted_records_total{source="mqtt"} 40
    # TYPE kingest_producer_retried_records_total counter
    kingest_producer_retried_records_total{source="web_logs",error_code="ProvisionedThroughputExceededException"} 10
    # TYPE kingest_dlq_records_total counter
    kingest_dlq_records_total{source="web_logs",reason="invalid_input"} 1
    # TYPE kingest_producer_shard_records_total counter
    kingest_producer_shard_records_total{stream="orders",shard="shardId-000000000000"} 600
    kingest_producer_shard_records_total{stream="orders",shard="shardId-000000000001"} 340
    # TYPE kingest_source_delivery_latency_seconds histogram
    kingest_source_delivery_latency_seconds_bucket{source="web_logs",le="0.01"} 0
    kingest_source_delivery_latency_seconds_bucket{source="web_logs",le="0.1"} 900
    kingest_source_delivery_latency_seconds_bucket{source="web_logs",le="1.0"} 900
    kingest_source_delivery_latency_seconds_bucket{source="web_logs",le="+Inf"} 900
    kingest_source_delivery_latency_seconds_sum{source="web_logs"} 45
    kingest_source_delivery_latency_seconds_count{source="web_logs"} 900
    # TYPE kingest_producer_user_records_per_kinesis_record histogram
    kingest_producer_user_records_per_kinesis_record_bucket{stream="orders",le="+Inf"} 10
    kingest_producer_user_records_per_kinesis_record_sum{stream="orders"} 940
    kingest_producer_user_records_per_kinesis_record_count{stream="orders"} 10
"""  # noqa: E501

AFTER = """
    # TYPE kingest_source_received_records_total counter
    kingest_source_received_records_total{source="web_logs"} 1600
    kingest_source_received_records_total{source="mqtt"} 40
    # TYPE kingest_producer_accepted_records_total counter
    kingest_producer_accepted_records_total{source="web_logs"} 1500
    kingest_producer_accepted_records_total{source="mqtt"} 40
    # TYPE kingest_producer_retried_records_total counter
    kingest_producer_retried_records_total{source="web_logs",error_code="ProvisionedThroughputExceededException"} 14
    kingest_producer_retried_records_total{source="web_logs",error_code="InternalFailure"} 2
    kingest_producer_retried_records_total{source="mqtt",error_code="InternalFailure"} 1
    # TYPE kingest_producer_throttled_records_total counter
    kingest_producer_throttled_records_total{source="web_logs"} 14
    # TYPE kingest_dlq_records_total counter
    kingest_dlq_records_total{source="web_logs",reason="invalid_input"} 3
    kingest_dlq_records_total{source="web_logs",reason="record_too_large"} 1
    # TYPE kingest_source_invalid_records_total counter
    kingest_source_invalid_records_total{source="web_logs",reason="unparsable"} 3
    # TYPE kingest_producer_buffered_records gauge
    kingest_producer_buffered_records 100
    # TYPE kingest_producer_buffered_bytes gauge
    kingest_producer_buffered_bytes 3565158
    # TYPE kingest_producer_buffer_fill_ratio gauge
    kingest_producer_buffer_fill_ratio 0.125
    # TYPE kingest_producer_shard_records_total counter
    kingest_producer_shard_records_total{stream="orders",shard="shardId-000000000000"} 1050
    kingest_producer_shard_records_total{stream="orders",shard="shardId-000000000001"} 490
    # TYPE kingest_source_delivery_latency_seconds histogram
    kingest_source_delivery_latency_seconds_bucket{source="web_logs",le="0.01"} 0
    kingest_source_delivery_latency_seconds_bucket{source="web_logs",le="0.1"} 900
    kingest_source_delivery_latency_seconds_bucket{source="web_logs",le="1.0"} 1500
    kingest_source_delivery_latency_seconds_bucket{source="web_logs",le="+Inf"} 1500
    kingest_source_delivery_latency_seconds_sum{source="web_logs"} 345
    kingest_source_delivery_latency_seconds_count{source="web_logs"} 1500
    # TYPE kingest_producer_user_records_per_kinesis_record histogram
    kingest_producer_user_records_per_kinesis_record_bucket{stream="orders",le="+Inf"} 20
    kingest_producer_user_records_per_kinesis_record_sum{stream="orders"} 1540
    kingest_producer_user_records_per_kinesis_record_count{stream="orders"} 20
    # TYPE kingest_agent_uptime_seconds gauge
    kingest_agent_uptime_seconds 3725
    # TYPE some_other_family counter
    some_other_family{source="ghost"} 5
"""  # noqa: E501


def two_scrapes() -> View:
    return build_view("http://agent:9108/metrics", scrape_of(AFTER, 102), scrape_of(BEFORE, 100))


def test_rates_are_over_the_time_between_scrapes() -> None:
    view = two_scrapes()
    assert view.interval_s == 2
    web_row = next(row for row in view.sources if row.name == "web_logs")
    assert web_row.received == Count(1600, 300)
    assert web_row.accepted == Count(1500, 300)
    assert (web_row.retried, web_row.throttled, web_row.dlq, web_row.invalid) == (16, 14, 4, 3)
    mqtt = next(row for row in view.sources if row.name == "mqtt")
    assert mqtt.received == Count(40, 0)
    # Families present, nothing for this source: zero, not unknown.
    assert (mqtt.retried, mqtt.throttled, mqtt.dlq, mqtt.invalid) == (1, 0, 0, 0)
    assert view.total is not None
    assert view.total.received == Count(1640, 300)
    assert view.total.retried == 17
    assert [row.name for row in view.sources] == ["mqtt", "web_logs"]  # no "ghost"


def test_breakdowns_sum_over_sources_largest_first() -> None:
    view = two_scrapes()
    assert view.retries_by_code == (
        ("ProvisionedThroughputExceededException", Count(14, 2)),
        ("InternalFailure", Count(3, 1.5)),
    )
    assert view.dlq_by_reason == (
        ("invalid_input", Count(3, 1)),
        ("record_too_large", Count(1, 0.5)),
    )


def test_latency_quantiles_are_over_the_interval_when_it_saw_deliveries() -> None:
    view = two_scrapes()
    web = next(row for row in view.sources if row.name == "web_logs")
    # The 600 deliveries since the last scrape all took 0.1..1 s; before them, 900 under 0.1 s.
    assert web.p50_s == pytest.approx(0.55)
    assert web.p99_s == pytest.approx(0.1 + 0.9 * 0.99)
    # With no deliveries in between, all of them count.
    still = build_view("x", scrape_of(AFTER, 104), scrape_of(AFTER, 103))
    web = next(row for row in still.sources if row.name == "web_logs")
    assert web.p50_s == pytest.approx(0.01 + 0.09 * 750 / 900)


def test_first_scrape_has_totals_and_no_rates() -> None:
    view = build_view("x", scrape_of(AFTER, 100))
    web = next(row for row in view.sources if row.name == "web_logs")
    assert web.received == Count(1600, None)
    assert view.interval_s is None
    assert view.shards is not None
    assert [round(row.share or 0, 3) for row in view.shards] == [0.682, 0.318]


def test_a_restarted_agent_counts_from_zero() -> None:
    restarted = AFTER.replace('{source="web_logs"} 1600', '{source="web_logs"} 50')
    view = build_view("x", scrape_of(restarted, 110), scrape_of(AFTER, 100))
    web = next(row for row in view.sources if row.name == "web_logs")
    assert web.received == Count(50, 5)


def test_buffer_aggregation_uptime_and_shards() -> None:
    view = two_scrapes()
    assert (view.buffered_records, view.buffered_bytes, view.buffer_fill_ratio) == (
        100,
        3565158,
        0.125,
    )
    assert view.uptime_s == 3725
    # 600 user records in 10 Kinesis records since the last scrape.
    assert view.records_per_kinesis_record == 60
    assert view.shards is not None
    assert [(row.shard, row.rate) for row in view.shards] == [
        ("shardId-000000000000", 225),
        ("shardId-000000000001", 75),
    ]
    assert [row.share for row in view.shards] == [0.75, 0.25]


def test_only_the_ten_hottest_shards_are_listed() -> None:
    lines = ["# TYPE kingest_producer_shard_records_total counter"]
    lines += [
        f'kingest_producer_shard_records_total{{stream="s",shard="shard-{i:02d}"}} {i * 10}'
        for i in range(24)
    ]
    view = build_view("x", scrape_of("\n".join(lines), 1))
    assert view.shard_count == 24
    assert view.shards is not None
    assert [row.shard for row in view.shards] == [f"shard-{i:02d}" for i in range(23, 13, -1)]


def test_missing_families_are_unknown_not_zero() -> None:
    view = build_view("x", scrape_of(BEFORE, 1))
    web = next(row for row in view.sources if row.name == "web_logs")
    assert web.throttled is None and web.invalid is None
    assert view.buffered_records is None and view.uptime_s is None
    empty = build_view("x", Scrape.of([], 1, WALL))
    assert empty.sources == ()
    assert empty.shards is None and empty.retries_by_code is None
    frame = render(empty)
    assert "(no sources yet)" in frame
    assert row_cells(frame, "TOTAL")[1:] == ["-"] * 10


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.5, 0.1 + 0.1 * (72160 - 33444) / (100392 - 33444)), (0.1, 0.05 * 14432 / 24054)],
)
def test_quantiles_interpolate_like_prometheus(q: float, expected: float) -> None:
    buckets = {0.05: 24054, 0.1: 33444, 0.2: 100392, 0.5: 129389, 1: 133988, math.inf: 144320}
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


def test_quantile_edge_cases() -> None:
    buckets = {0.1: 1.0, 1.0: 2.0, math.inf: 10.0}
    assert histogram_quantile(0.99, buckets) == 1.0  # in +Inf: the highest finite bound
    assert histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None  # no observations
    assert histogram_quantile(0.5, {0.1: 5.0, 1.0: 5.0}) is None  # no +Inf bucket
    assert histogram_quantile(0.5, {math.inf: 5.0}) is None  # one bucket
    assert histogram_quantile(0.5, {-1.0: 4.0, math.inf: 5.0}) == -1.0
    # Counts that fall from one bucket to the next are forced monotonic.
    assert histogram_quantile(0.5, {0.1: 6.0, 1.0: 5.0, math.inf: 6.0}) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        histogram_quantile(1.5, buckets)


@given(
    st.lists(st.floats(min_value=0, max_value=200), min_size=1, max_size=200),
    st.floats(min_value=0, max_value=1),
)
def test_quantiles_stay_within_the_observed_buckets(values: list[float], q: float) -> None:
    histogram = Histogram()
    for value in values:
        histogram.observe(value)
    snapshot = histogram.snapshot()
    cumulative, running = {}, 0
    for bound, count in zip(snapshot.bounds, snapshot.counts, strict=True):
        running += count
        cumulative[bound] = float(running)
    cumulative[math.inf] = float(snapshot.count)
    estimate = histogram_quantile(q, cumulative)
    assert estimate is not None
    assert 0 <= estimate <= snapshot.bounds[-1]


# --- The frame ----------------------------------------------------------------------------


def test_a_rendered_frame_shows_the_numbers() -> None:
    frame = render(two_scrapes(), width=120)
    text = "\n".join(frame)
    assert frame[0].startswith("kingest top  http://agent:9108/metrics  up 1h02m  ")
    assert "rates over 2.0s" in frame[0]
    header = row_cells(frame, "SOURCE")
    assert header == [
        "SOURCE", "RECV/S", "RECV", "ACC/S", "ACC", "RETRY", "THROTL", "DLQ", "INVAL", "P50", "P99",
    ]  # fmt: skip
    assert row_cells(frame, "web_logs") == [
        "web_logs", "300", "1600", "300", "1500", "16", "14", "4", "3", "550ms", "991ms",
    ]  # fmt: skip
    assert row_cells(frame, "mqtt")[1:5] == ["0", "40", "0", "40"]
    assert row_cells(frame, "TOTAL")[1:9] == ["300", "1640", "300", "1540", "17", "14", "4", "3"]
    assert "BUFFER       100 records   3.4MiB   12.5% full" in text
    assert "AGGREGATION  60.0 user records per Kinesis record" in text
    assert row_cells(frame, "ProvisionedThroughputExceededException")[1:] == ["14", "2"]
    assert row_cells(frame, "record_too_large")[1:] == ["1", "0.5"]
    assert "SHARD HEAT (2 of 2 shards)" in text
    hot = next(line for line in frame if line.startswith("shardId-000000000000"))
    assert "█" * 20 in hot and hot.endswith("225/s  75.0%  orders")
    cool = next(line for line in frame if line.startswith("shardId-000000000001"))
    assert "█" * 6 + "▋" in cool and "25.0%" in cool
    assert "\x1b" not in text
    assert "ghost" not in text and "some_other_family" not in text


def test_frames_fit_their_terminal_and_color_only_when_asked() -> None:
    view = two_scrapes()
    frame = render(view, width=40, height=6)
    assert len(frame) == 6 and all(len(line) <= 40 for line in frame)
    colored = render(view, color=True)
    assert colored[0].startswith("\x1b[7m") and colored[0].endswith("\x1b[0m")
    assert [line for line in render(view, unicode=False) if "█" in line] == []


def test_an_unreachable_endpoint_is_shown_in_the_frame() -> None:
    def refuse(url: str, timeout_s: float) -> list[MetricFamily]:
        raise ScrapeError(f"cannot reach {url}: Connection refused")

    view = Monitor("http://127.0.0.1:1/metrics", fetcher=refuse).refresh()
    assert view.error == "cannot reach http://127.0.0.1:1/metrics: Connection refused"
    frame = render(view)
    assert frame[2] == view.error


def test_the_monitor_rates_against_the_last_good_scrape() -> None:
    pages = [BEFORE, None, AFTER]

    def serve(url: str, timeout_s: float) -> list[MetricFamily]:
        page = pages.pop(0)
        if page is None:
            raise ScrapeError("cannot reach it: timed out")
        return parse(textwrap.dedent(page))

    monitor = Monitor("x", fetcher=serve)
    assert monitor.refresh().interval_s is None
    assert monitor.refresh().error is not None
    view = monitor.refresh()
    assert view.interval_s is not None and view.total is not None
    received = view.total.received
    assert received is not None and received.total == 1640
    assert received.rate == pytest.approx(600 / view.interval_s)


def test_once_prints_one_plain_frame() -> None:
    pages = [BEFORE, AFTER]
    monitor = Monitor("x", fetcher=lambda url, timeout: parse(textwrap.dedent(pages.pop(0))))
    out = io.StringIO()
    assert once(monitor, 0.001, out) == 0
    frame = out.getvalue().splitlines()
    assert row_cells(frame, "web_logs")[2] == "1600"
    assert "\x1b" not in out.getvalue() and "█" not in out.getvalue()  # StringIO: no encoding


def test_once_fails_with_one_line_when_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(url: str, timeout_s: float) -> list[MetricFamily]:
        raise ScrapeError(f"cannot reach {url}: Connection refused")

    out = io.StringIO()
    assert once(Monitor("http://h:1/metrics", fetcher=refuse), 0.001, out) == 1
    assert out.getvalue() == ""
    assert capsys.readouterr().err == (
        "kingest top: error: cannot reach http://h:1/metrics: Connection refused\n"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        (math.nan, "-"),
        (0, "0"),
        (7, "7"),
        (0.25, "0.25"),
        (12.34, "12.3"),
        (999, "999"),
        (999.96, "1.0k"),
        (1234, "1.2k"),
        (12_345, "12.3k"),
        (123_456, "123k"),
        (3_400_000, "3.4M"),
        (2.5e12, "2.5T"),
        (-1500, "-1.5k"),
    ],
)
def test_human_numbers(value: float | None, text: str) -> None:
    assert human(value) == text


@pytest.mark.parametrize(
    "arguments",
    [["--interval", "0"], ["--interval", "soon"], ["--metrics-address", "no-port"]],
)
def test_bad_arguments_are_usage_errors(arguments: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser(only="top").parse_args(["top", *arguments])
    assert exited.value.code == 2


def test_arguments_and_their_defaults() -> None:
    args = build_parser(only="top").parse_args(["top"])
    assert (args.url, args.interval, args.once, args.color) == (
        "http://127.0.0.1:9108/metrics",
        1.0,
        False,
        True,
    )
    args = build_parser(only="top").parse_args(
        ["top", "--metrics-address", "10.0.0.5:9200", "--interval", "2.5", "--once", "--no-color"]
    )
    assert (args.url, args.interval, args.once, args.color) == (
        "http://10.0.0.5:9200/metrics",
        2.5,
        True,
        False,
    )


def test_backpressure_and_change_capture_lag_are_shown_when_present() -> None:
    before = """
        # TYPE kingest_producer_blocked_seconds_total counter
        kingest_producer_blocked_seconds_total{source="web_logs"} 2
        kingest_producer_blocked_seconds_total{source="mqtt"} 0
        # TYPE kingest_source_lag_seconds gauge
        kingest_source_lag_seconds{source="orders_db"} 0.25
    """
    after = before.replace('"web_logs"} 2', '"web_logs"} 4.5')
    view = build_view("x", scrape_of(after, 110), scrape_of(before, 100))
    assert view.blocked is not None
    assert dict((name, count.rate) for name, count in view.blocked) == {
        "web_logs": 0.25,
        "mqtt": 0,
    }
    assert view.lag_s == (("orders_db", 0.25),)
    frame = render(view)
    blocked = next(line for line in frame if line.startswith("BLOCKED"))
    # A source that never waited is left out.
    assert "web_logs 25.0%" in blocked and "mqtt" not in blocked
    assert any(line.startswith("LAG") and "orders_db 250ms" in line for line in frame)
    quiet = render(build_view("x", scrape_of(AFTER, 110), scrape_of(BEFORE, 100)))
    assert not any(line.startswith(("BLOCKED", "LAG", "SPOOL")) for line in quiet)


def test_a_spool_backlog_is_shown() -> None:
    text = """
        # TYPE kingest_source_spooled_events gauge
        kingest_source_spooled_events{source="app_events"} 1200
        # TYPE kingest_source_spool_bytes gauge
        kingest_source_spool_bytes{source="app_events"} 3145728
    """
    frame = render(build_view("x", scrape_of(text, 1)))
    spool = next(line for line in frame if line.startswith("SPOOL"))
    assert "app_events 1200 events 3.0MiB" in spool


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (0, "0"), (1234, "1234"), (999_999, "999999"), (1_000_000, "1.0M"), (2.5, "2.5")],
)
def test_totals_are_exact_while_they_fit(value: float | None, text: str) -> None:
    assert exact_count(value) == text
