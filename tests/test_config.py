"""Typed config: defaults, TOML/YAML files, CLI overrides, and clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from audioclust.models.config import ConfigError, build_config


@dataclass(frozen=True)
class Inner:
    rate: float = 0.1
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_defaults():
    assert build_config(Outer) == Outer()


def test_toml_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[job]\nname = "file"\nsizes = [3, 4]\n[job.inner]\nrate = 1\nmode = "b"\n')
    cfg = build_config(Outer, f, {"name": "cli", "limit": None, "inner": {"rate": 0.5}}, "job")
    assert cfg == Outer(name="cli", sizes=(3, 4), limit=None, inner=Inner(rate=0.5, mode="b"))
    assert isinstance(cfg.inner.rate, float)


def test_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("limit: 7\ninner:\n  mode: b\n")
    assert build_config(Outer, f) == Outer(limit=7, inner=Inner(mode="b"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("nme = 'typo'\n", r"unknown key\(s\) \['nme'\]"),
        ("limit = 'many'\n", "Outer.limit"),
        ("[inner]\nmode = 'c'\n", "Outer.inner.mode"),
        ("sizes = [1, 'two']\n", r"Outer.sizes\[1\]"),
        ("name = \n", "invalid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        build_config(Outer, f)


def test_unreadable_and_unknown_suffix(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        build_config(Outer, tmp_path / "absent.toml")
    f = tmp_path / "c.ini"
    f.write_text("x")
    with pytest.raises(ConfigError, match=r"\.toml, \.yaml or \.yml"):
        build_config(Outer, f)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("limit = true\n", "Outer.limit"),  # a bool is not an int, though Python says so
        ("[inner]\nrate = nan\n", "Outer.inner.rate: .*finite"),
        ("[inner]\nrate = inf\n", "Outer.inner.rate: .*finite"),
        ("[inner]\nrate = -inf\n", "Outer.inner.rate: .*finite"),
        ("sizes = [1, true]\n", r"Outer.sizes\[1\]"),
    ],
)
def test_values_python_would_take_are_refused(tmp_path, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        build_config(Outer, f)


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_a_binary_config_file_is_named_in_the_error(tmp_path, suffix):
    f = tmp_path / f"settings{suffix}"
    f.write_bytes(b"\xff\xfe\x00\x01\x89PNG\r\n")
    with pytest.raises(ConfigError) as info:
        build_config(Outer, f)
    assert str(f) in str(info.value) and "\n" not in str(info.value)


# --- the service's settings -----------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from audioclust.stream.config import StreamConfig, load_stream_config  # noqa: E402


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("max_batch = true\n", "max_batch"),
        ("silence_dbfs = nan\n", "silence_dbfs"),
        ("max_wait = inf\n", "max_wait"),
        ("max_batch = 1e11\n", "max_batch"),
        ("max_batch = 100000000000\nmax_queue = 100000000000\n", "max_batch"),
        ("state_interval = 1e300\n", "state_interval"),
        ("stall_seconds = 0\n", "stall_seconds"),
        ("threads = -1\n", "threads"),
        ("metrics_port = 70000\n", "metrics_port"),
        ("[file]\nchunk_seconds = 1e308\n", "chunk_seconds"),
        ("[assign]\nmax_prior_ratio = nan\n", "max_prior_ratio"),
        ("[assign]\nmin_confidence = 2\n", "min_confidence"),
        ("[openset]\nmax_clusters = 1e9\n", "max_clusters"),
    ],
)
def test_stream_settings_out_of_range_are_refused(tmp_path, text, match):
    f = tmp_path / "s.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_stream_config(f)
    assert "\n" not in str(info.value)


_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
            | st.text(max_size=10))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
_sections = ("assign", "openset", "file", "mic", "kafka")
_keys = st.sampled_from(sorted(set(StreamConfig.__dataclass_fields__) | {"nonsense"}))


def _section_keys(name: str) -> st.SearchStrategy[str]:
    import dataclasses
    import typing

    tp = typing.get_type_hints(StreamConfig)[name]
    fields = [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else \
        ["bootstrap", "max_poll_records", "max_in_flight", "client", "security_protocol"]
    return st.sampled_from([*fields, "typo"])


_section_values = st.one_of(*[
    st.tuples(st.just(s), st.dictionaries(_section_keys(s), _values, max_size=4))
    for s in _sections])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(top=st.dictionaries(_keys, _values, max_size=5),
       sections=st.lists(_section_values, max_size=3))
def test_any_settings_give_a_config_or_one_line(tmp_path, top, sections):
    """No settings file makes the service fail with anything but one line naming the key."""
    import yaml

    data = {**top, **dict(sections)}
    f = tmp_path / "any.yaml"
    f.write_text(yaml.safe_dump(data))
    try:
        cfg = load_stream_config(f)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(cfg, StreamConfig)  # (the [kafka] table too, by load_stream_config)


@pytest.mark.parametrize("suffix,opener,closer", [(".toml", "a = ", ""), (".yaml", "a: ", "")])
@pytest.mark.parametrize("depth", [2_000])
def test_a_deeply_nested_config_is_one_line(tmp_path, suffix, opener, closer, depth):
    """The parsers recurse per level: a file nested deeper than Python's stack raised
    RecursionError with a traceback."""
    f = tmp_path / f"deep{suffix}"
    f.write_text(opener + "[" * depth + "]" * depth + closer + "\n")
    with pytest.raises(ConfigError) as info:
        load_stream_config(f)
    assert str(f) in str(info.value) and "\n" not in str(info.value)


def test_a_yaml_alias_bomb_is_one_short_line(tmp_path):
    """YAML aliases share one object, so n levels of ten are 10**n strings to print (nine
    levels took 18 GB): the error must show the value cut short, not walk all of it."""
    import tracemalloc

    levels = ["&l0 [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 6)]
    f = tmp_path / "bomb.yaml"
    f.write_text(f"sink: [{', '.join(levels)}]\n")  # 10**6 strings in the last, 8 MB as text
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as info:
            load_stream_config(f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "StreamConfig.sink" in message and len(message) < 300
    assert peak < 2_000_000, f"{peak / 1e6:.0f} MB to say the value is not a string"
@pytest.mark.parametrize(
    ("kafka", "match"),
    [
        # what kafka-python refuses when it builds its clients (KafkaConfigurationError),
        # which the Kafka source met only at connect, retried as "cannot reach the broker"
        ("heartbeat_interval_ms = 10000", "heartbeat_interval_ms"),
        ("session_timeout_ms = 2000", "heartbeat_interval_ms"),
        ("request_timeout_ms = 50", "request_timeout_ms"),
        ("fetch_max_wait_ms = 40000", "fetch_max_wait_ms"),
        ("connections_max_idle_ms = 1000", "connections_max_idle_ms"),
        ("request_timeout_ms = 200000", "delivery_timeout_ms"),
        ("linger_ms = 100000", "delivery_timeout_ms"),
        # a setting of ours under client went to kafka-python past its range check
        ("client = {max_poll_records = 100000000}", "kafka.client.max_poll_records"),
        ("client = {session_timeout_ms = 1000}", "kafka.client.session_timeout_ms"),
        # and addresses its parser cannot read
        ('bootstrap = "a:b:c"', "kafka.bootstrap"),
        ('bootstrap = "h:99999"', "kafka.bootstrap"),
        ('bootstrap = "h:1,,g:2"', "kafka.bootstrap"),
        ('bootstrap = "[::1"', "kafka.bootstrap"),
        ('bootstrap = ":9092"', "kafka.bootstrap"),
    ],
)
def test_kafka_settings_its_clients_would_refuse_are_found_at_start(tmp_path, kafka, match):
    f = tmp_path / "s.toml"
    f.write_text(f"[kafka]\n{kafka}\n")
    with pytest.raises(ConfigError, match=match) as info:
        load_stream_config(f)  # whatever the source: nothing has connected yet
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bootstrap", ["localhost", "h1:9092,h2:9093", "[::1]:9092", "::1",
                                       "SASL_SSL://broker.example:9094", " h:1 , g:2 "])
def test_kafka_addresses_its_parser_reads_are_taken(tmp_path, bootstrap):
    f = tmp_path / "s.toml"
    f.write_text(f'[kafka]\nbootstrap = "{bootstrap}"\nrequest_timeout_ms = 40000\n')
    assert load_stream_config(f).kafka.bootstrap == bootstrap


def test_kafka_options_on_the_command_line_are_not_masked_by_unset_flags():
    """``--kafka-option bootstrap=...`` was dropped: the unset --bootstrap flag (None)
    replaced it, so the service went to localhost:9092."""
    from audioclust.stream.cli import _parser, _settings

    args = _parser().parse_args(["--source", "kafka", "--kafka-option", "bootstrap=b:1",
                                 "--kafka-option", "topic=t", "--kafka-option", "group=g"])
    cfg = _settings(args)
    assert (cfg.kafka.bootstrap, cfg.kafka.topic, cfg.kafka.group) == ("b:1", "t", "g")
    # the flags still win over the options and the file
    args = _parser().parse_args(["--source", "kafka", "--kafka-option", "bootstrap=b:1",
                                 "--bootstrap", "c:2"])
    assert _settings(args).kafka.bootstrap == "c:2"


def test_settings_kafka_python_refuses_are_not_retried_as_a_broker_out_of_reach():
    """A KafkaConfigurationError at connect was retried for startup_timeout_s and then
    reported as 'cannot reach the broker'."""
    from kafka_broker import free_port

    from audioclust.stream.kafka.config import KafkaConfig
    from audioclust.stream.kafka.source import KafkaSource
    from audioclust.stream.sources import SourceError

    cfg = KafkaConfig(bootstrap=f"127.0.0.1:{free_port()}", startup_timeout_s=3.0,
                      client={"api_version": [2, 8]})  # kafka-python wants a tuple
    with pytest.raises(SourceError) as info:
        KafkaSource(cfg, 16000).open(None)
    assert "api_version" in str(info.value) and "cannot reach" not in str(info.value)
