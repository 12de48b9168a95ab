"""`tracing:` config: defaults, and every mistake reported with file:line and key path."""

from __future__ import annotations

from textwrap import dedent

import pytest

from meshgate.admin.api import REDACTED, redact_config
from meshgate.config.loader import parse_config
from meshgate.config.tracing import TracingConfig
from tests.config.located import problems_of


def test_defaults() -> None:
    config, _ = parse_config("routes: []\n", "gw.yaml")
    t = config.tracing
    assert t == TracingConfig()
    assert not t.enabled
    assert t.endpoint == "http://127.0.0.1:4318/v1/traces"
    assert (t.service_name, t.sample_rate, t.headers) == ("meshgate", 0.01, {})
    assert (t.export_timeout_s, t.schedule_delay_s) == (10.0, 5.0)
    assert (t.max_queue_size, t.max_export_batch_size) == (2048, 512)


def test_full_section() -> None:
    text = dedent(
        """\
        tracing:
          enabled: true
          endpoint: https://otel.example.com:4318/v1/traces
          service_name: edge
          sample_rate: 0.25
          headers: {X-Api-Key: abc 123}
          export_timeout_s: 2.5
          max_queue_size: 100
          max_export_batch_size: 100
          schedule_delay_s: 0.2
        """
    )
    t = parse_config(text, "gw.yaml")[0].tracing
    assert t.enabled and t.service_name == "edge" and t.sample_rate == 0.25
    assert t.headers == {"x-api-key": "abc 123"}  # names lower-cased
    assert (t.max_queue_size, t.max_export_batch_size) == (100, 100)


@pytest.mark.parametrize(
    ("body", "line", "key", "message"),
    [
        ("enabled: maybe", 2, "tracing.enabled", "valid boolean"),
        ("endpoint: localhost:4318", 2, "tracing.endpoint", "not an http:// or https:// URL"),
        ("endpoint: ftp://x/v1/traces", 2, "tracing.endpoint", "not an http:// or https://"),
        ("endpoint: 'http:///v1/traces'", 2, "tracing.endpoint", "with a host"),
        ("endpoint: http://h:99999/v1", 2, "tracing.endpoint", "invalid URL"),
        ("service_name: ''", 2, "tracing.service_name", "at least 1 character"),
        ("sample_rate: 1.5", 2, "tracing.sample_rate", "less than or equal to 1"),
        ("sample_rate: -0.1", 2, "tracing.sample_rate", "greater than or equal to 0"),
        ("sample_rate: .nan", 2, "tracing.sample_rate", "finite number"),
        ("headers: {'bad name': x}", 2, "tracing.headers", "not a valid header name"),
        ('headers: {x-key: "a\\r\\nb"}', 2, "tracing.headers", "no line breaks"),
        ("headers: {x-key: ''}", 2, "tracing.headers", "non-empty"),
        ("headers: {X-Key: a, x-key: b}", 2, "tracing.headers", "given twice"),
        ("headers: [a]", 2, "tracing.headers", "valid dictionary"),
        ("export_timeout_s: 0", 2, "tracing.export_timeout_s", "greater than 0"),
        ("schedule_delay_s: -1", 2, "tracing.schedule_delay_s", "greater than 0"),
        ("max_queue_size: 0", 2, "tracing.max_queue_size", "greater than or equal to 1"),
        ("max_queue_size: '10'", 2, "tracing.max_queue_size", "valid integer"),
        (
            "max_queue_size: 10\n  max_export_batch_size: 11",
            3,
            "tracing.max_export_batch_size",
            "11 is larger than max_queue_size (10)",
        ),
        ("exporter: otlp", 2, "tracing.exporter", "unknown key"),
    ],
)
def test_bad_values_are_located(body: str, line: int, key: str, message: str) -> None:
    text = "tracing:\n  " + body + "\n"
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"gw.yaml:{line}: {key}: "), problems
    assert message in problems[0], problems


def test_section_must_be_a_mapping() -> None:
    assert problems_of("routes: []\ntracing: yes\n") == [
        "gw.yaml:2: tracing: Input should be a valid dictionary or instance of TracingConfig"
    ]


def test_export_headers_are_redacted_by_the_admin_api() -> None:
    text = "tracing:\n  enabled: true\n  headers: {authorization: Bearer s3cret}\n"
    config, _ = parse_config(text, "gw.yaml")
    shown = redact_config(config)["tracing"]
    assert shown["headers"] == {"authorization": REDACTED}
    assert shown["endpoint"] == "http://127.0.0.1:4318/v1/traces"
