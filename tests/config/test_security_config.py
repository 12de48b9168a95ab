"""Edge-security config checked where it is written: every mistake in auth (JWT
providers, API keys, route auth), cors and ip_rules is reported with file:line, the
key path and what is wrong (`parse_config(text, "gw.yaml")`).

Each snippet marks the line the problem must point at with a ``#<`` comment.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshgate.auth.apikeys import hash_key
from meshgate.config.loader import parse_config
from tests.config.located import doc, marked_line, problems_of

H1 = hash_key("key-one")
H2 = hash_key("key-two")
SECRET = "s" * 40


ERRORS = [
    # --- JWT providers -------------------------------------------------------------
    pytest.param(
        f"""\
        auth:
          jwt:
            - name: corp  #<
              algorithms: [HS256]
              secret: {SECRET}
              jwks_url: https://id.example.com/jwks
        """,
        "auth.jwt[0]",
        ["'corp'", "exactly one of", "secret", "jwks_url"],
        id="jwt-two-key-sources",
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - name: corp  #<
              issuer: https://id.example.com/
        """,
        "auth.jwt[0]",
        ["'corp'", "exactly one of", "jwks_url"],
        id="jwt-no-key-source",
    ),
    *(
        pytest.param(
            f"""\
            auth:
              jwt:
                - name: corp
                  jwks_url: https://id.example.com/jwks
                  algorithms: [RS256, {alg}]  #<
            """,
            "auth.jwt[0].algorithms",
            [f"'{alg}'", "RS256"],
            id=f"jwt-alg-{alg}",
        )
        for alg in ("none", "None", "NONE")
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - name: corp
              jwks_url: https://id.example.com/jwks
              algorithms: [RS257]  #<
        """,
        "auth.jwt[0].algorithms",
        ["'RS257'", "RS256", "ES256", "EdDSA"],
        id="jwt-unknown-alg",
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - name: corp  #<
              algorithms: [HS256]
              public_key_file: /etc/meshgate/idp.pem
        """,
        "auth.jwt[0]",
        ["'corp'", "HS256", "secret", "key-confusion"],
        id="jwt-hs256-with-public-key-file",
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - name: corp  #<
              algorithms: [RS256, HS256]
              jwks_url: https://id.example.com/jwks
        """,
        "auth.jwt[0]",
        ["'corp'", "HS256", "secret"],
        id="jwt-hs256-mixed-into-a-jwks-provider",
    ),
    pytest.param(
        f"""\
        auth:
          jwt:
            - name: corp  #<
              algorithms: [RS256]
              secret: {SECRET}
        """,
        "auth.jwt[0]",
        ["'corp'", "secret", "HS"],
        id="jwt-rs256-with-secret",
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - name: corp  #<
              jwks_url: ftp://id.example.com/jwks
        """,
        "auth.jwt[0]",
        ["jwks_url", "'ftp://id.example.com/jwks'", "http(s)"],
        id="jwks-url-not-http",
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - name: corp  #<
              jwks_url: id.example.com/jwks
        """,
        "auth.jwt[0]",
        ["jwks_url", "http(s)"],
        id="jwks-url-without-scheme",
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - name: corp
              jwks_url: https://id.example.com/jwks
              token_from:
                - {header: authorization, cookie: token}  #<
        """,
        "auth.jwt[0].token_from[0]",
        ["exactly one of header, cookie, query"],
        id="token-from-two-places",
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - name: corp
              jwks_url: https://id.example.com/jwks
              token_from:
                - {cookie: token, prefix: Bearer}  #<
        """,
        "auth.jwt[0].token_from[0]",
        ["prefix", "header"],
        id="token-from-prefix-without-header",
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - name: corp
              jwks_url: https://id.example.com/jwks
              forward_claims: {sub: "x user"}  #<
        """,
        "auth.jwt[0].forward_claims",
        ["'x user'", "header name"],
        id="forward-claims-bad-header-name",
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - name: corp  #<
              secret: short
              algorithms: [HS256]
        """,
        "auth.jwt[0]",
        ["'corp'", "HS256", "32"],
        id="jwt-hs256-secret-too-short",
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - {name: corp, jwks_url: "https://one.example.com/jwks"}
            - {name: corp, jwks_url: "https://two.example.com/jwks"}  #<
        """,
        "auth.jwt[1].name",
        ["duplicate", "'corp'"],
        id="duplicate-provider-names",
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - {name: api_key, jwks_url: "https://one.example.com/jwks"}  #<
        """,
        "auth.jwt[0].name",
        ["'api_key'", "reserved"],
        id="provider-named-api_key",
    ),
    # --- route auth ----------------------------------------------------------------
    pytest.param(
        """\
        auth:
          jwt:
            - {name: corp, jwks_url: "https://id.example.com/jwks"}
        routes:
          - path: /x
            upstream: a
            auth:
              providers: [corp, partner]  #<
        """,
        "routes[0].auth.providers[1]",
        ["unknown auth provider 'partner'", "corp"],
        id="route-auth-unknown-provider",
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - {name: corp, jwks_url: "https://id.example.com/jwks"}
        routes:
          - path: /x
            upstream: a
            auth:
              providers: [api_key]  #<
        """,
        "routes[0].auth.providers[0]",
        ["unknown auth provider 'api_key'"],
        id="route-auth-api_key-without-api_keys",
    ),
    pytest.param(
        """\
        routes:
          - path: /x
            upstream: a
            auth:  #<
              scopes: [orders:read]
        """,
        "routes[0].auth",
        ["no providers", "auth.jwt", "auth.api_keys"],
        id="route-auth-without-any-provider",
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - {name: corp, jwks_url: "https://id.example.com/jwks"}
        routes:
          - path: /x
            upstream: a
            auth:
              providers: []  #<
        """,
        "routes[0].auth.providers",
        ["provider"],
        id="route-auth-empty-provider-list",
    ),
    pytest.param(
        """\
        auth:
          jwt:
            - {name: corp, jwks_url: "https://id.example.com/jwks"}
        routes:
          - path: /x
            upstream: a
            auth:
              scopes_mode: some  #<
        """,
        "routes[0].auth.scopes_mode",
        ["'any' or 'all'"],
        id="route-auth-bad-scopes-mode",
    ),
    # --- API keys ------------------------------------------------------------------
    pytest.param(
        """\
        auth:
          api_keys:
            consumers:
              - name: acme  #<
                keys: [sha256:abc123]
        """,
        "auth.api_keys.consumers[0]",
        ["'acme'", "key 0", "sha256:", "64 hex", "hash-key"],
        id="api-key-hash-malformed",
    ),
    pytest.param(
        """\
        auth:
          api_keys:
            consumers:
              - name: acme  #<
                keys: [my-plain-secret-key]
        """,
        "auth.api_keys.consumers[0]",
        ["'acme'", "hash-key"],
        id="api-key-stored-in-clear",
    ),
    pytest.param(
        f"""\
        auth:
          api_keys:
            consumers:
              - name: acme
                keys: ["{H1}"]
              - name: globex
                keys: ["{H2}", "{H1}"]  #<
        """,
        "auth.api_keys.consumers[1].keys[1]",
        ["'acme'", "same key"],
        id="api-key-same-hash-for-two-consumers",
    ),
    pytest.param(
        f"""\
        auth:
          api_keys:
            consumers:
              - name: acme
                keys: ["{H1}"]
              - name: acme  #<
                keys: ["{H2}"]
        """,
        "auth.api_keys.consumers[1].name",
        ["duplicate", "'acme'"],
        id="api-key-duplicate-consumer-names",
    ),
    pytest.param(
        """\
        auth:
          api_keys:
            key_from:
              - {header: x-api-key, query: api_key}  #<
        """,
        "auth.api_keys.key_from[0]",
        ["exactly one of header, cookie, query"],
        id="api-key-from-two-places",
    ),
    # --- CORS ----------------------------------------------------------------------
    pytest.param(
        """\
        cors:  #<
          allow_origins: ['*']
          allow_credentials: true
        """,
        "cors",
        ["'*'", "allow_credentials"],
        id="cors-star-with-credentials",
    ),
    pytest.param(
        """\
        cors:  #<
          allow_origin_regex: 'https://(app|admin\\.example\\.com'
        """,
        "cors",
        ["allow_origin_regex", "invalid"],
        id="cors-bad-regex",
    ),
    pytest.param(
        """\
        cors:  #<
          allow_origins: [https://app.example.com, https://admin.example.com/]
        """,
        "cors",
        ["allow_origins 1", "'https://admin.example.com/'", "scheme://host[:port]"],
        id="cors-origin-with-slash",
    ),
    pytest.param(
        """\
        cors:  #<
          allow_origins: ['null']
        """,
        "cors",
        ["'null'"],
        id="cors-null-origin",
    ),
    pytest.param(
        """\
        routes:
          - path: /x
            upstream: a
            cors:  #<
              allow_origins: ['*']
              allow_credentials: true
        """,
        "routes[0].cors",
        ["'*'", "allow_credentials"],
        id="route-cors-star-with-credentials",
    ),
    pytest.param(
        """\
        routes:
          - path: /x
            upstream: a
            cors:  #<
              allow_origins: [app.example.com]
        """,
        "routes[0].cors",
        ["'app.example.com'", "scheme://host[:port]"],
        id="route-cors-bad-origin",
    ),
    pytest.param(
        """\
        routes:
          - path: /x
            upstream: a
            cors:  #<
              allow_origin_regex: '(('
        """,
        "routes[0].cors",
        ["allow_origin_regex", "invalid"],
        id="route-cors-bad-regex",
    ),
    # --- IP rules ------------------------------------------------------------------
    pytest.param(
        """\
        ip_rules:  #<
          allow: [10.0.0.0/8]
          deny: [10.0.0.0/33]
        """,
        "ip_rules",
        ["deny", "'10.0.0.0/33'", "CIDR"],
        id="ip-rules-bad-cidr",
    ),
    pytest.param(
        """\
        ip_rules:  #<
          allow: [10.0.0.1/8]
        """,
        "ip_rules",
        ["allow", "'10.0.0.1/8'", "10.0.0.0/8"],
        id="ip-rules-host-bits",
    ),
    pytest.param(
        """\
        routes:
          - path: /x
            upstream: a
            ip_rules: {allow: ['2001:db8::/32', 'office']}  #<
        """,
        "routes[0].ip_rules",
        ["allow", "'office'"],
        id="route-ip-rules-not-an-address",
    ),
    pytest.param(
        """\
        routes:
          - path: /x
            upstream: a
            ip_rules: {deny: ['2001:db8::/129']}  #<
        """,
        "routes[0].ip_rules",
        ["deny", "'2001:db8::/129'"],
        id="route-ip-rules-bad-ipv6",
    ),
]


@pytest.mark.parametrize(("snippet", "key", "words"), ERRORS)
def test_error_with_file_line_key_and_what(snippet: str, key: str, words: list[str]) -> None:
    text = doc(snippet)
    found = problems_of(text)
    assert len(found) == 1, found
    prefix = f"gw.yaml:{marked_line(text)}: {key}: "
    assert found[0].startswith(prefix), (found[0], prefix)
    message = found[0].removeprefix(prefix)
    for word in words:
        assert word in message, (word, found[0])
    # no pydantic internals in what a user reads
    for internal in ("function-after", "literal[", "Value error,", "model_"):
        assert internal not in found[0], found[0]


def test_every_security_problem_is_reported_at_once() -> None:
    text = doc(
        """\
        auth:
          jwt:
            - {name: corp, jwks_url: "ftp://x/jwks"}
          api_keys:
            consumers: [{name: acme, keys: [nope]}]
        cors: {allow_origins: ['*'], allow_credentials: true}
        ip_rules: {deny: [bogus]}
        routes:
          - path: /x
            upstream: a
            ip_rules: {allow: [10.0.0.0/40]}
            auth: {scopes: [read]}
          - path: /y
            upstream: a
            auth: {providers: [corp]}
            rate_limits: [{limit: 1, window_s: 1}]
        """
    )
    found = problems_of(text)
    keys = [p.split(": ")[1] for p in found]
    for expected in ("auth.jwt[0]", "auth.api_keys", "cors", "ip_rules", "routes[0].ip_rules"):
        assert any(k.startswith(expected) for k in keys), (expected, found)


def test_docs_example_is_valid(tmp_path: Path) -> None:
    """The config of docs/security.md (with a PEM-free JWKS URL) parses."""
    text = doc(
        """\
        trusted_proxies: [10.0.0.0/8]
        auth:
          jwt:
            - name: corp
              issuer: https://id.example.com/
              audiences: [orders-api]
              algorithms: [RS256, ES256]
              jwks_url: https://id.example.com/.well-known/jwks.json
              jwks_cache_s: 600
              jwks_refresh_min_s: 30
              jwks_timeout_s: 5
              clock_skew_s: 60
              token_from:
                - {header: authorization, prefix: Bearer}
                - {cookie: access_token}
              scope_claims: [scope, scp]
              forward_claims: {sub: x-user-id, email: x-user-email}
              forward_authorization: true
          api_keys:
            key_from: [{header: x-api-key}, {query: api_key}]
            forward_key: false
            consumers:
              - name: acme
                keys: ["sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"]
                scopes: [orders:read]
        cors:
          allow_origins: [https://app.example.com]
          allow_origin_regex: 'https://[a-z0-9-]+\\.preview\\.example\\.com'
          allow_methods: [GET, POST, PUT, DELETE]
          allow_headers: [authorization, content-type]
          expose_headers: [x-request-id]
          allow_credentials: true
          max_age_s: 600
        ip_rules: {deny: [203.0.113.0/24]}
        routes:
          - path: /orders/*
            upstream: a
            auth:
              required: true
              providers: [corp, api_key]
              scopes: [orders:read, orders:admin]
              scopes_mode: any
              claims: {tenant: [acme, globex]}
            ip_rules: {allow: [10.0.0.0/8, "2001:db8::/32"]}
            cors: false
        """
    )
    config, _ = parse_config(text, "gw.yaml")
    route = config.routes[0]
    assert route.cors is not None and not route.cors.enabled
    assert route.auth is not None and route.auth.providers == ["corp", "api_key"]
    assert config.auth.jwt[0].forward_claims == {"sub": "x-user-id", "email": "x-user-email"}


def test_validate_reports_unreadable_key_material_with_file_and_line(tmp_path: Path) -> None:
    """Key files are read when the runtime is built: `meshgate validate` must still
    answer with file:line problems (exit 1), not a traceback."""
    missing = tmp_path / "missing.pem"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        doc(
            f"""\
            auth:
              jwt:
                - name: corp
                  public_key_file: {missing}
            """
        )
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "meshgate", "validate", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"{cfg}:6: auth.jwt[0]" in proc.stderr, proc.stderr
    assert str(missing) in proc.stderr
