"""Resilience config (route `retry:`, upstream `limits`, `retry_budget`,
`circuit_breaker`, `outlier_detection`) checked where it is written: every
mistake is reported by `parse_config(text, "gw.yaml")` with file:line and the
key path, including the rules the core builders (core/retry.py, breaker.py,
outlier.py, resources.py) enforce, so that no accepted config fails later when
the runtime is built (a traceback from `meshgate validate` or at start).

Each snippet marks the line(s) the problem may point at with ``#<``.
"""

from __future__ import annotations

import random
from pathlib import Path
from textwrap import dedent, indent

import pytest

from meshgate.cli import main as cli_main
from meshgate.config.loader import ConfigError, parse_config
from meshgate.pipeline.runtime import build_runtime
from tests.config.located import problems_of

HEAD = dedent(
    """\
    upstreams:
      - name: a
        instances: [{host: 127.0.0.1, port: 9001}]
    """
)


def doc(text: str) -> str:
    """HEAD, then ``text`` as given (upstream settings are indented under upstream `a`)."""
    return HEAD + text


def marked_lines(text: str) -> list[int]:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith("#<")]
    assert lines, "mark the line(s) with #<"
    return lines


def retry(body: str) -> str:
    """A route whose `retry:` mapping is ``body`` (the `retry:` line is line 7)."""
    return "routes:\n  - path: /x\n    upstream: a\n    retry:  #<\n" + indent(
        dedent(body), "      "
    )


def upstream(body: str) -> str:
    """Settings added to upstream `a` (its `- name: a` line is line 2)."""
    return indent(dedent(body), "    ")


ERRORS = [
    # --- retry_on and status codes ------------------------------------------
    pytest.param(
        retry("retry_on: [5xx, bogus]  #<\n"),
        "routes[0].retry.retry_on",
        "unknown retry_on 'bogus'",
        id="unknown-retry-on",
    ),
    pytest.param(
        retry("retry_on: 5xx  #<\n"),
        "routes[0].retry.retry_on",
        "Input should be a valid list",
        id="retry-on-not-a-list",
    ),
    pytest.param(
        retry("retry_on: [retriable-status-codes]\nretriable_status_codes: [503, 600]  #<\n"),
        "routes[0].retry",
        "600 is not an HTTP status code",
        id="status-code-above-599",
    ),
    pytest.param(
        retry("retry_on: [retriable-status-codes]\nretriable_status_codes: [42]  #<\n"),
        "routes[0].retry",
        "",
        id="status-code-below-100",
    ),
    pytest.param(
        retry("retry_on: [retriable-status-codes]\nretriable_status_codes: [200]  #<\n"),
        "routes[0].retry",
        "retriable_status_codes must be in 400..599, got 200",
        id="status-code-not-an-error",
    ),
    pytest.param(
        retry("retriable_status_codes: [503]  #<\n"),
        "routes[0].retry",
        "retriable_status_codes are set but retry_on lacks 'retriable-status-codes'",
        id="codes-without-condition",
    ),
    pytest.param(
        retry("retry_on: [gateway-error, retriable-status-codes]  #<\n"),
        "routes[0].retry",
        "retry_on has 'retriable-status-codes' but retriable_status_codes is empty",
        id="condition-without-codes",
    ),
    # --- retry numbers --------------------------------------------------------
    pytest.param(
        retry("max_retries: -1  #<\n"),
        "routes[0].retry.max_retries",
        "Input should be greater than or equal to 0",
        id="negative-max-retries",
    ),
    pytest.param(
        retry("max_retries: 11  #<\n"),
        "routes[0].retry.max_retries",
        "Input should be less than or equal to 10",
        id="too-many-retries",
    ),
    pytest.param(
        retry("per_try_timeout_s: 0  #<\n"),
        "routes[0].retry.per_try_timeout_s",
        "Input should be greater than 0",
        id="zero-per-try-timeout",
    ),
    pytest.param(
        retry("per_try_timeout_s: -2  #<\n"),
        "routes[0].retry.per_try_timeout_s",
        "Input should be greater than 0",
        id="negative-per-try-timeout",
    ),
    pytest.param(
        retry("backoff_base_s: -0.1  #<\n"),
        "routes[0].retry.backoff_base_s",
        "Input should be greater than 0",
        id="negative-backoff",
    ),
    pytest.param(
        retry("backoff_base_s: 1\nbackoff_max_s: 0.5  #<\n"),
        "routes[0].retry",
        "backoff_max_s must be >= backoff_base_s",
        id="backoff-max-below-base",
    ),
    pytest.param(
        retry("backoff_max_s: .inf  #<\n"),
        "routes[0].retry",
        "finite",
        id="infinite-backoff",
    ),
    pytest.param(
        retry("retry_after_max_s: -1  #<\n"),
        "routes[0].retry.retry_after_max_s",
        "Input should be greater than or equal to 0",
        id="negative-retry-after-cap",
    ),
    pytest.param(
        retry("retry_after_max_s: .inf  #<\n"),
        "routes[0].retry",
        "finite",
        id="infinite-retry-after-cap",
    ),
    pytest.param(
        retry("max_body_bytes: -1  #<\n"),
        "routes[0].retry.max_body_bytes",
        "Input should be greater than or equal to 0",
        id="negative-body-cap",
    ),
    pytest.param(
        retry("max_retry: 2  #<\n"),
        "routes[0].retry.max_retry",
        "unknown key",
        id="misspelt-retry-key",
    ),
    # --- retry budget ----------------------------------------------------------
    pytest.param(
        upstream("retry_budget: {model: token_bucket}  #<\n"),
        "upstreams[0].retry_budget.model",
        "Input should be 'concurrent' or 'windowed'",
        id="unknown-budget-model",
    ),
    pytest.param(
        upstream("retry_budget: {budget_percent: 150}  #<\n"),
        "upstreams[0].retry_budget.budget_percent",
        "Input should be less than or equal to 100",
        id="budget-above-100",
    ),
    pytest.param(
        upstream("retry_budget: {budget_percent: -5}  #<\n"),
        "upstreams[0].retry_budget.budget_percent",
        "Input should be greater than or equal to 0",
        id="negative-budget",
    ),
    pytest.param(
        upstream("retry_budget: {min_retry_concurrency: -1}  #<\n"),
        "upstreams[0].retry_budget.min_retry_concurrency",
        "Input should be greater than or equal to 0",
        id="negative-min-retry-concurrency",
    ),
    pytest.param(
        upstream("retry_budget: {model: windowed, ttl_s: 0}  #<\n"),
        "upstreams[0].retry_budget.ttl_s",
        "Input should be greater than 0",
        id="zero-budget-window",
    ),
    pytest.param(
        upstream("retry_budget: {model: windowed, ttl_s: .inf}  #<\n"),
        "upstreams[0].retry_budget",
        "finite",
        id="infinite-budget-window",
    ),
    pytest.param(
        upstream("retry_budget: {model: windowed, min_per_s: .inf}  #<\n"),
        "upstreams[0].retry_budget",
        "finite",
        id="infinite-budget-min-per-s",
    ),
    # --- circuit breaker ---------------------------------------------------------
    pytest.param(
        upstream("circuit_breaker: {failure_threshold: 0}  #<\n"),
        "upstreams[0].circuit_breaker.failure_threshold",
        "Input should be greater than or equal to 1",
        id="zero-failure-threshold",
    ),
    pytest.param(
        upstream("circuit_breaker: {reset_timeout_s: -1}  #<\n"),
        "upstreams[0].circuit_breaker.reset_timeout_s",
        "Input should be greater than 0",
        id="negative-reset-timeout",
    ),
    pytest.param(
        upstream("circuit_breaker: {failure_rate_percent: 120}  #<\n"),
        "upstreams[0].circuit_breaker.failure_rate_percent",
        "Input should be less than or equal to 100",
        id="failure-rate-above-100",
    ),
    pytest.param(
        upstream("circuit_breaker: {half_open_max_probes: 0}  #<\n"),
        "upstreams[0].circuit_breaker.half_open_max_probes",
        "Input should be greater than or equal to 1",
        id="zero-probes",
    ),
    pytest.param(
        upstream("circuit_breaker: {min_requests: 0}  #<\n"),
        "upstreams[0].circuit_breaker.min_requests",
        "Input should be greater than or equal to 1",
        id="zero-min-requests",
    ),
    pytest.param(
        upstream("circuit_breaker: {failure_treshold: 3}  #<\n"),
        "upstreams[0].circuit_breaker.failure_treshold",
        "unknown key",
        id="misspelt-breaker-key",
    ),
    pytest.param(
        upstream("circuit_breaker: {reset_timeout_s: .inf}  #<\n"),
        "upstreams[0].circuit_breaker",
        "finite",
        id="infinite-reset-timeout",
    ),
    pytest.param(
        upstream("circuit_breaker: {window_s: .inf}  #<\n"),
        "upstreams[0].circuit_breaker",
        "finite",
        id="infinite-breaker-window",
    ),
    # --- outlier detection -------------------------------------------------------
    pytest.param(
        upstream("outlier_detection: {consecutive_5xx: 0}  #<\n"),
        "upstreams[0].outlier_detection.consecutive_5xx",
        "Input should be greater than or equal to 1",
        id="zero-consecutive-5xx",
    ),
    pytest.param(
        upstream("outlier_detection: {base_ejection_s: -1}  #<\n"),
        "upstreams[0].outlier_detection.base_ejection_s",
        "Input should be greater than 0",
        id="negative-ejection",
    ),
    pytest.param(
        upstream("outlier_detection: {max_ejection_percent: -5}  #<\n"),
        "upstreams[0].outlier_detection.max_ejection_percent",
        "Input should be greater than or equal to 0",
        id="negative-ejection-percent",
    ),
    pytest.param(
        upstream("outlier_detection: {base_ejection_s: .inf}  #<\n"),
        "upstreams[0].outlier_detection",
        "finite",
        id="infinite-ejection",
    ),
    # --- concurrency thresholds --------------------------------------------------
    pytest.param(
        upstream("limits: {max_requests: 0}  #<\n"),
        "upstreams[0].limits.max_requests",
        "Input should be greater than or equal to 1",
        id="zero-max-requests",
    ),
    pytest.param(
        upstream("limits: {max_connections: -1}  #<\n"),
        "upstreams[0].limits.max_connections",
        "Input should be greater than or equal to 1",
        id="negative-max-connections",
    ),
    pytest.param(
        upstream("limits: {max_retries: -1}  #<\n"),
        "upstreams[0].limits.max_retries",
        "Input should be greater than or equal to 0",
        id="negative-max-retries-in-flight",
    ),
    pytest.param(
        upstream("limits: {max_request: 3}  #<\n"),
        "upstreams[0].limits.max_request",
        "unknown key",
        id="misspelt-limits-key",
    ),
]


@pytest.mark.parametrize(("snippet", "key", "message"), ERRORS)
def test_error_with_file_line_and_key(snippet: str, key: str, message: str) -> None:
    text = doc(snippet)
    lines = marked_lines(text)
    try:
        found = problems_of(text)
    except pytest.fail.Exception:
        build_error = _build_error(text)
        pytest.fail(
            f"accepted by parse_config; the runtime build then raises {build_error}"
            if build_error
            else "accepted by parse_config (and by the runtime build)"
        )
    assert len(found) == 1, found
    located = [f"gw.yaml:{line}: {key}" for line in lines]
    assert any(found[0].startswith(prefix) for prefix in located), (found[0], located)
    assert message in found[0].split(": ", 2)[2], (found[0], message)


def _build_error(text: str) -> str | None:
    """What building the runtime of an accepted config raises (None: nothing)."""
    import asyncio

    config, located = parse_config(text, "gw.yaml")

    async def build() -> None:
        build_runtime(config, located, rng=random.Random(1)).close()

    try:
        asyncio.run(build())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# A config parse_config accepts must also build: each of these is either refused
# with a located error or runs.
ACCEPTED_OR_LOCATED = [
    pytest.param(
        upstream("outlier_detection: {base_ejection_s: 600}  #<\n"),
        "upstreams[0].outlier_detection",
        id="ejection-longer-than-the-implicit-300s-cap",
    ),
    pytest.param(
        upstream("outlier_detection: {base_ejection_s: 300}  #<\n"),
        "upstreams[0].outlier_detection",
        id="ejection-at-the-implicit-cap",
    ),
    pytest.param(
        retry("per_try_timeout_s: .inf  #<\n"),
        "routes[0].retry",
        id="infinite-per-try-timeout",
    ),
    pytest.param(
        "routes:\n  - path: /x\n    upstream: a\n    timeout_s: 1\n"
        "    retry: {per_try_timeout_s: 5}  #<\n",
        "routes[0].retry",
        id="per-try-timeout-above-route-timeout",
    ),
    pytest.param(
        upstream("limits: {max_retries: 0}  #<\n"),
        "upstreams[0].limits",
        id="no-retries-in-flight",
    ),
    pytest.param(
        upstream("retry_budget: {budget_percent: 0, min_retry_concurrency: 0}  #<\n"),
        "upstreams[0].retry_budget",
        id="zero-budget",
    ),
]


@pytest.mark.parametrize(("snippet", "key"), ACCEPTED_OR_LOCATED)
async def test_accepted_config_builds_or_is_refused_with_a_location(snippet: str, key: str) -> None:
    text = doc(snippet)
    try:
        config, located = parse_config(text, "gw.yaml")
    except ConfigError as exc:
        found = [str(p) for p in exc.problems]
        prefixes = [f"gw.yaml:{line}: {key}" for line in marked_lines(text)]
        assert any(p.startswith(tuple(prefixes)) for p in found), (found, prefixes)
        return
    build_runtime(config, located, rng=random.Random(1)).close()  # must not raise


def test_validate_cli_reports_instead_of_crashing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`meshgate validate` on a config the core breaker refuses: a located error, exit 1."""
    path = tmp_path / "gw.yaml"
    path.write_text(doc(upstream("circuit_breaker: {reset_timeout_s: .inf}\n")))
    code = cli_main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{path}:4: upstreams[0].circuit_breaker" in err, err


def test_every_problem_is_reported_at_once() -> None:
    text = doc(
        upstream(
            """\
            retry_budget: {model: nope}
            circuit_breaker: {failure_threshold: 0}
            limits: {max_requests: 0}
            """
        )
        + dedent(
            """\
            routes:
              - path: /x
                upstream: a
                retry:
                  retry_on: [bogus]
                  max_retries: -1
            """
        )
    )
    found = problems_of(text)
    lines = sorted(int(p.split(":")[1]) for p in found)
    assert lines == [4, 5, 6, 11, 12], found


def test_defaults_and_a_full_config_parse() -> None:
    text = doc(
        upstream(
            """\
            limits: {max_connections: 10, max_pending_requests: 5, max_requests: 20}
            retry_budget: {model: windowed, budget_percent: 10, min_per_s: 1, ttl_s: 5}
            circuit_breaker: {}
            outlier_detection: {}
            """
        )
        + dedent(
            """\
            routes:
              - path: /x
                upstream: a
                retry:
                  retry_on: [connect-failure, 5xx, retriable-status-codes, retriable-4xx]
                  retriable_status_codes: [429]
                  max_retries: 2
                  per_try_timeout_s: 0.5
                  retry_after_max_s: 0
            """
        )
    )
    config, _ = parse_config(text, "gw.yaml")
    route = config.routes[0]
    assert route.retry.max_retries == 2 and route.retry.retriable_status_codes == [429]
    up = config.upstreams[0]
    assert up.circuit_breaker is not None and up.circuit_breaker.failure_threshold == 5
    assert up.outlier_detection is not None and up.outlier_detection.consecutive_5xx == 5
    plain, _ = parse_config(doc("routes: [{path: /y, upstream: a}]\n"), "gw.yaml")
    r = plain.routes[0].retry
    assert (r.max_retries, r.retry_on) == (1, ["connect-failure", "reset", "gateway-error"])
    assert r.max_body_bytes == 65536 and r.retry_non_idempotent is False
    assert plain.upstreams[0].circuit_breaker is None
    assert plain.upstreams[0].outlier_detection is None
