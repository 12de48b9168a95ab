"""``meshgate control-plane -c cp.yaml`` and ``meshgate ctl ...`` (operators)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from meshgate.cli import report_config_error
from meshgate.config.loader import ConfigError
from meshgate.control.kinds import KINDS

log = logging.getLogger("meshgate.control")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def duration_s(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``24h``, ``7d`` as seconds (argparse type)."""
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (90s, 10m, 24h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


# -- meshgate control-plane ---------------------------------------------------------------
def cmd_control_plane(args: argparse.Namespace) -> int:
    from meshgate.control.ca import CAError
    from meshgate.control.config import load_control_config
    from meshgate.control.server import ControlPlaneServer
    from meshgate.control.store import StoreUnavailable

    try:
        config = load_control_config(args.config)
    except ConfigError as exc:
        return report_config_error(exc)

    async def run() -> int:
        server = ControlPlaneServer(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await server.start()
        except (CAError, StoreUnavailable) as exc:
            log.error("control plane cannot start: %s", exc)
            await server.close()
            return 1
        except OSError as exc:
            log.error(
                "control plane cannot listen on %s:%d: %s",
                config.listen.host,
                config.listen.port,
                exc.strerror or exc,
            )
            await server.close()
            return 1
        await stop.wait()
        log.info("stopping")
        await server.close()
        return 0

    return asyncio.run(run())


# -- meshgate ctl ---------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> Any:
    from meshgate.control.client import ControlPlaneClient

    bundle_path = args.ca_bundle or os.environ.get("MESHGATE_CP_BUNDLE")
    if not bundle_path:
        raise SystemExit("ctl: --ca-bundle (or $MESHGATE_CP_BUNDLE) is required: the trust "
                         "bundle the control plane writes to its bundle_file")  # fmt: skip
    try:
        bundle = Path(bundle_path).read_text(encoding="ascii")
    except OSError as exc:
        raise SystemExit(
            f"ctl: cannot read the trust bundle {bundle_path}: {exc.strerror}"
        ) from None
    token = os.environ.get("MESHGATE_ADMIN_TOKEN")
    if args.admin_token_file:
        try:
            token = Path(args.admin_token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SystemExit(f"ctl: cannot read {args.admin_token_file}: {exc.strerror}") from None
    return ControlPlaneClient(args.server, bundle, admin_token=token)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _ctl(args: argparse.Namespace) -> int:
    from meshgate.control.client import ControlPlaneError

    if args.ctl == "cert":
        return _cert_show(args.file)
    client = _client(args)
    try:
        return await _ctl_call(client, args)
    except ControlPlaneError as exc:
        print(f"ctl: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()


async def _ctl_call(client: Any, args: argparse.Namespace) -> int:
    cmd = args.ctl
    if cmd == "token" and args.token_cmd == "create":
        data = await client.request(
            "POST",
            "/v1/tokens",
            {"service": args.service, "namespace": args.namespace, "ttl_s": args.ttl},
        )
        print(data["token"])
        print(
            f"token {data['id']} for {data['namespace']}/{data['service']}, "
            f"expires {_when(data['expires_at'])} (shown once; stored hashed)",
            file=sys.stderr,
        )
    elif cmd == "token" and args.token_cmd == "list":
        for t in (await client.request("GET", "/v1/tokens"))["tokens"]:
            state = "expired" if t["expired"] else "valid"
            print(f"{t['id']}  {t['namespace']}/{t['service']}  {_when(t['expires_at'])}  {state}")
    elif cmd == "token" and args.token_cmd == "delete":
        await client.request("DELETE", f"/v1/tokens/{args.id}")
        print(f"token {args.id} deleted")
    elif cmd == "services":
        for s in (await client.request("GET", "/v1/services"))["services"]:
            print(f"{s['namespace']}/{s['service']}  {s['instances']} instance(s)")
    elif cmd == "instances":
        params = {"service": args.service} if args.service else None
        for i in (await client.request("GET", "/v1/instances", params=params))["instances"]:
            meta = ",".join(f"{k}={v}" for k, v in sorted(i["metadata"].items()))
            print(
                f"{i['namespace']}/{i['service']}  {i['id']}  {i['address']}:{i['port']}  "
                f"weight={i['weight']}  {meta}".rstrip()
            )
    elif cmd == "policies":
        params = {"kind": args.kind} if args.kind else None
        for p in (await client.request("GET", "/v1/policies", params=params))["policies"]:
            print(f"{p['key']}  rev {p['revision']}  {json.dumps(p['policy'])}")
    elif cmd == "policy" and args.policy_cmd == "apply":
        try:
            from meshgate.control.policy import read_policy_file

            policies = read_policy_file(args.file)
        except ConfigError as exc:
            return report_config_error(exc)
        for kind, fields in policies:
            data = await client.request("PUT", f"/v1/policies/{kind}", fields)
            print(f"{data['key']}  revision {data['revision']}")
    elif cmd == "policy" and args.policy_cmd == "delete":
        await client.request("DELETE", f"/v1/policies/{args.kind}/{args.name}")
        print(f"policies/{args.kind}/{args.name} deleted")
    elif cmd == "ca":
        if args.ca_cmd == "rotate":
            try:
                body = _rotation_body(args)
            except ValueError as exc:
                print(f"ctl: {exc}", file=sys.stderr)
                return 2
            info = await client.request("POST", "/v1/ca/rotate", body)
        else:
            info = await client.request("GET", "/v1/ca")
        print(f"trust domain {info['trust_domain']}, workload certificates "
              f"{info['workload_ttl_s']:g} s")  # fmt: skip
        for s in info["signers"]:
            role = "issuing" if s["issuing"] else f"trusted until {_when(s['retire_at'])}"
            print(f"{s['subject']}  expires {_when(s['not_after'])}  {role}")
    elif cmd == "bundle":
        sys.stdout.write("".join((await client.request("GET", "/v1/bundle"))["roots"]))
    return 0


def _rotation_body(args: argparse.Namespace) -> dict[str, Any]:
    """``ca rotate``'s request: the overlap and, with --cert/--key, the new CA."""
    body: dict[str, Any] = {} if args.overlap is None else {"overlap_s": args.overlap}
    if (args.cert is None) != (args.key is None):
        raise ValueError("give both --cert and --key, or neither")
    for field, path in (("cert_pem", args.cert), ("key_pem", args.key), ("chain_pem", args.chain)):
        if path is not None:
            try:
                body[field] = Path(path).read_text(encoding="ascii")
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return body


def _cert_show(path: str) -> int:
    """SPIFFE ID and expiry of a certificate file (first certificate of a chain)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificates(Path(path).read_bytes())[0]
    except (OSError, ValueError, IndexError) as exc:
        print(f"ctl: {path}: not a PEM certificate ({exc})", file=sys.stderr)
        return 1
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    print(f"subject     {cert.subject.rfc4514_string()}")
    print(f"spiffe id   {uris[0] if uris else '-'}")
    print(f"not before  {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}")
    print(f"not after   {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    hours = left.total_seconds() / 3600
    print(f"expires in  {hours:.1f} h" if hours > 0 else "EXPIRED")
    return 0 if hours > 0 else 2


def cmd_ctl(args: argparse.Namespace) -> int:
    return asyncio.run(_ctl(args))


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("control-plane", help="run the mesh control plane")
    p.add_argument("-c", "--config", required=True, help="cp.yaml")
    p.set_defaults(func=cmd_control_plane)

    ctl = sub.add_parser("ctl", help="operate the control plane (tokens, registry, CA)")
    ctl.add_argument(
        "--server",
        default=os.environ.get("MESHGATE_CP_URL", "https://127.0.0.1:15012"),
        help="control plane URL (default $MESHGATE_CP_URL or https://127.0.0.1:15012)",
    )
    ctl.add_argument("--ca-bundle", help="trust bundle PEM (default $MESHGATE_CP_BUNDLE)")
    ctl.add_argument(
        "--admin-token-file", help="file holding the admin token (default $MESHGATE_ADMIN_TOKEN)"
    )
    ctl.set_defaults(func=cmd_ctl)
    cs = ctl.add_subparsers(dest="ctl", required=True)

    t = cs.add_parser("token", help="join tokens")
    ts = t.add_subparsers(dest="token_cmd", required=True)
    tc = ts.add_parser("create", help="a join token for one service (printed once)")
    tc.add_argument("--service", required=True)
    tc.add_argument("--namespace", default="default")
    tc.add_argument("--ttl", type=duration_s, default=3600.0, help="lifetime (default 1h)")
    ts.add_parser("list", help="tokens (ids, scope, expiry; never the secrets)")
    td = ts.add_parser("delete", help="revoke a token by id")
    td.add_argument("id")

    cs.add_parser("services", help="registered services")
    i = cs.add_parser("instances", help="registered instances")
    i.add_argument("--service")
    p = cs.add_parser("policies", help="stored policies")
    p.add_argument("--kind", choices=KINDS)
    pol = cs.add_parser("policy", help="change policies")
    ps = pol.add_subparsers(dest="policy_cmd", required=True)
    pa = ps.add_parser("apply", help="store the policies of a YAML file")
    pa.add_argument("-f", "--file", required=True)
    pd = ps.add_parser("delete", help="delete one policy")
    pd.add_argument("kind", choices=KINDS)
    pd.add_argument("name")

    ca = cs.add_parser("ca", help="the mesh CA")
    cas = ca.add_subparsers(dest="ca_cmd", required=True)
    cas.add_parser("show", help="signers and their expiry")
    cr = cas.add_parser("rotate", help="new root; old roots stay trusted for the overlap")
    cr.add_argument("--overlap", type=duration_s, help="default: ca.rotation_overlap_s")
    cr.add_argument("--cert", help="issue with this CA certificate (default: a new root)")
    cr.add_argument("--key", help="its private key (PEM, unencrypted)")
    cr.add_argument("--chain", help="intermediate: the certificates above it, root last")
    cs.add_parser("bundle", help="print the trust bundle (PEM)")
    cert = cs.add_parser("cert", help="certificate files")
    certs = cert.add_subparsers(dest="cert_cmd", required=True)
    show = certs.add_parser("show", help="SPIFFE ID and expiry of a certificate file")
    show.add_argument("file")
