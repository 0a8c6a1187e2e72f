"""The agent's pure parts: ack tracking, config validation with lines, partition key fallback."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kingest.agent.config import load_config, parse_config
from kingest.errors import ConfigError
from kingest.keys import KeyTemplate, key_with_fallback
from kingest.producer.outcomes import DeliveryMark
from kingest.record import PENDING, RecordFuture
from kingest.schemas.validate import load_registry, validator_for
from kingest.sources.base import AckTracker


def future(done: bool) -> RecordFuture:
    f = RecordFuture()
    if done:
        f._result = object()
    return f


def finish(f: RecordFuture) -> None:
    f._result = object()
    assert f._result is not PENDING


def test_a_position_waits_for_every_earlier_record_of_its_lane() -> None:
    acks = AckTracker()
    first, second, third = future(False), future(True), future(True)
    acks.add("a", 10, first)
    acks.add("a", 20, second)
    acks.add("b", 5, third)
    assert acks.collect() == {"b": 5}
    acks.committed({"b": 5})
    assert acks.collect() == {}
    finish(first)
    assert acks.collect() == {"a": 20}
    acks.committed({"a": 20})
    assert acks.collect() == {}
    assert acks.pending() == 0


def test_an_uncommitted_position_is_offered_again_until_marked() -> None:
    acks = AckTracker()
    acks.add("a", 1, future(True))
    assert acks.collect() == {"a": 1}
    # The commit failed: nothing is marked, so the same position comes back.
    assert acks.collect() == {"a": 1}
    acks.add("a", 2, None)
    assert acks.collect() == {"a": 2}
    acks.committed({"a": 2})
    assert acks.collect() == {}


def test_positions_follow_emission_order_not_their_value() -> None:
    # A truncated file starts again at offset 0: the later, smaller offset is the one to keep.
    acks = AckTracker()
    acks.add("f", 900, future(True))
    acks.add("f", 40, future(True))
    assert acks.collect() == {"f": 40}


CONFIG = """\
stream: events
producer:
  linger_ms: 50
sources:
  - type: file
    name: web
    paths: ["/var/log/*.log"]
    format: combined
    from: beginning
"""


def test_config_parses_with_defaults() -> None:
    config = parse_config(CONFIG)
    assert config.producer.linger_ms == 50
    (source,) = config.sources
    assert source.start == "beginning"
    assert config.stream_of(source) == "events"
    assert config.checkpoint_path == "kingest-checkpoints.db"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            CONFIG.replace("  linger_ms: 50", "  linger_ms: -1"),
            "kingest.yaml:3: producer.linger_ms",
        ),
        (
            CONFIG.replace("format: combined", "format: combined\n    colour: red"),
            "kingest.yaml:9: sources.0.colour: Extra inputs are not permitted",
        ),
        (CONFIG.replace("from: beginning", "from: middle"), "kingest.yaml:9: sources.0.from"),
        (CONFIG.replace('    paths: ["/var/log/*.log"]\n', ""), "kingest.yaml:5: sources.0.paths"),
        (CONFIG.replace("stream: events\n", ""), "no stream"),
        ("sources: [", "not valid YAML"),
        ("- 1\n- 2\n", "must be a mapping"),
    ],
)
def test_config_errors_name_the_key_and_the_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "kingest.yaml")
    assert expected in str(raised.value)


def test_config_rejects_two_sources_with_one_name() -> None:
    text = CONFIG + '  - type: file\n    name: web\n    paths: ["/x"]\n    format: json\n'
    with pytest.raises(ConfigError, match="'web' is used twice"):
        parse_config(text)


def test_partition_key_falls_back_to_the_next_template() -> None:
    templates = [KeyTemplate(None, "{session_id}"), KeyTemplate(None, "{ip_address}")]
    assert key_with_fallback(templates, {"session_id": "s1", "ip_address": "::1"}) == "s1"
    assert key_with_fallback(templates, {"session_id": None, "ip_address": "::1"}) == "::1"
    with pytest.raises(KeyError):
        key_with_fallback(templates, {"path": "/"})


def test_partition_key_templates_combine_fields() -> None:
    template = KeyTemplate(None, "{vhost}:{request.id}")
    assert template.key({"vhost": "a", "request": {"id": 7}}) == "a:7"
    assert KeyTemplate(None, "constant").key({}) == "constant"
    assert KeyTemplate("user.id", None).key({"user": {"id": "u1"}}) == "u1"


def test_every_example_config_loads() -> None:
    examples = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
    assert examples
    for example in examples:
        config = load_config(example)
        # The schemas they name exist (the agent checks them at start).
        registry = load_registry(config.schema_paths)
        for source in config.sources:
            if source.record_schema is not None:
                validator_for(registry, source.record_schema, source.name)


def test_a_delivery_mark_waits_for_every_generation_up_to_its_own() -> None:
    undone: Counter[int] = Counter({0: 2, 1: 1, 2: 5})
    mark = DeliveryMark(undone, 1)
    assert not mark.done()
    undone[0] -= 2
    assert not mark.done()
    undone[1] -= 1
    assert mark.done(), "records of later generations do not hold it back"
    undone[0] += 1  # cannot happen to a closed generation, but a done mark stays done
    assert mark.done()


def test_the_http_spool_directory_goes_with_spooled_acknowledgement() -> None:
    from pydantic import ValidationError

    from kingest.sources.http.source import HttpSourceConfig

    good = HttpSourceConfig.model_validate({"type": "http", "ack": "spooled", "spool_dir": "sp"})
    assert good.spool_dir == "sp"
    for fields in ({"ack": "spooled"}, {"ack": "buffered", "spool_dir": "sp"}):
        with pytest.raises(ValidationError, match="spool_dir goes with ack: spooled"):
            HttpSourceConfig.model_validate({"type": "http", **fields})
