"""``python -m gateway``: the reference gateway's command line.

``python -m gateway run`` starts the MCP proxy in front of one upstream MCP server, enforcing
the tenant's signed bundle pulled from a Tollgate control plane::

    python -m gateway run --control-plane https://tollgate.example.com --tenant acme \\
        --token-file /etc/tollgate/gateway-token --server-name acme-hr \\
        --upstream-cmd "python demo/hr_server.py" --identities identities.json \\
        --listen 127.0.0.1:8100

or with every option in a TOML file (the same names, dashes or underscores)::

    python -m gateway run --config gateway.toml

Agents connect with MCP streamable HTTP to ``http://<listen>/mcp`` and
``Authorization: Bearer <credential>``; the credential is a static token of the
``--identities`` JSON file (``{"<token>": {"issuer": "…", "subject": "…"}}``, for demos), an
OAuth access token of ``--oauth-issuer`` for ``--resource-uri`` (MCP authorization: the gateway
serves RFC 9728 metadata and points 401s at it; ``gateway/oauth.py``), or a JWT of
``--jwt-issuer`` checked against ``--jwt-jwks-url``.

A call the bundle escalates is held while a human decides, at most ``--max-hold`` seconds
(then the agent gets a pending result to retry; ``gateway/escalations.py``).

The upstream's tools are reported to the control plane as ``--server-name``'s (the control
plane never runs the upstream itself): when the upstream starts, when it says its tools
changed, every ``--discovery-interval`` seconds (default 300, 0: not periodically) and when
the control plane asks (``gateway/discovery.py``).

``python -m gateway verify …`` is the reference bundle verifier (``gateway/verify.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import signal
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.decision import Decision

logger = logging.getLogger("gateway")


@dataclass
class Settings:
    """Everything ``run`` needs, from flags or a TOML file."""

    control_plane: str
    tenant: str
    token: str
    server_name: str
    upstream_url: str | None = None
    upstream_cmd: list[str] | None = None
    listen_host: str = "127.0.0.1"
    listen_port: int = 8100
    state_dir: Path = Path("var/gateway")
    identities: dict[str, tuple[str, str]] = field(default_factory=dict)
    jwt_issuer: str | None = None
    jwt_jwks_url: str | None = None
    jwt_audience: str | None = None
    oauth_issuer: str | None = None
    resource_uri: str | None = None
    oauth_jwks_url: str | None = None
    oauth_scopes: list[str] = field(default_factory=list)
    oauth_groups_claim: str = "groups"
    oauth_algorithms: list[str] | None = None
    oauth_leeway: float = 30.0
    jwks_refetch_interval: float = 30.0
    redis_url: str | None = None
    long_poll_seconds: int = 60
    max_hold_seconds: float = 60.0
    discovery_interval: float = 300.0
    log_level: str = "INFO"
    labels: dict[str, str] = field(default_factory=dict)


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway",
                                     description="Tollgate's reference MCP gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="enforce a tenant's bundle in front of an MCP server")
    run.add_argument("--config", type=Path, help="a TOML file with the options below")
    run.add_argument("--control-plane", help="the control plane's base URL")
    run.add_argument("--tenant", help="the tenant's slug (the bundle to pull)")
    run.add_argument("--token-file", type=Path, help="file holding the gateway token")
    run.add_argument("--server-name", help="the upstream server's name in the bundle")
    run.add_argument("--upstream", help="the upstream's streamable HTTP URL")
    run.add_argument("--upstream-cmd", help="the upstream's stdio command line")
    run.add_argument("--listen", help="host:port to serve agents on (default 127.0.0.1:8100)")
    run.add_argument("--state-dir", type=Path,
                     help="where the last good bundle and the decision-log queue are kept")
    run.add_argument("--identities", type=Path,
                     help='JSON {"<token>": {"issuer": …, "subject": …}} of static agents')
    run.add_argument("--jwt-issuer", help="accept agent JWTs of this issuer…")
    run.add_argument("--jwt-jwks-url", help="…signed with a key of this JWKS")
    run.add_argument("--jwt-audience", help="…for this audience (optional)")
    run.add_argument("--oauth-issuer",
                     help="MCP authorization: accept OAuth access tokens (JWT) of this "
                          "authorization server (its issuer identifier)…")
    run.add_argument("--resource-uri",
                     help="…minted for this resource URI, the gateway's MCP endpoint as "
                          "agents reach it (e.g. https://gw.example/mcp): the tokens' audience "
                          "and the protected-resource metadata's resource")
    run.add_argument("--oauth-jwks-url",
                     help="the issuer's JWKS (default: jwks_uri of its metadata)")
    run.add_argument("--oauth-scopes",
                     help="space-separated scopes a token must carry (advertised as "
                          "scopes_supported; default none)")
    run.add_argument("--oauth-groups-claim",
                     help="the claim listing the person's groups (default groups)")
    run.add_argument("--oauth-algorithms",
                     help="comma-separated signature algorithms accepted (default RS*, PS*, "
                          "ES*, EdDSA; never none or HS*)")
    run.add_argument("--oauth-leeway", type=float,
                     help="seconds of clock skew allowed on exp/nbf/iat (default 30)")
    run.add_argument("--jwks-refetch-interval", type=float,
                     help="minimum seconds between JWKS fetches for unknown key ids "
                          "(default 30)")
    run.add_argument("--redis-url", help="share rate counters with other replicas")
    run.add_argument("--long-poll", type=int, help="seconds per bundle long poll (default 60)")
    run.add_argument("--max-hold", type=float,
                     help="seconds a call needing approval is held before the agent gets a "
                          "pending result to retry (default 60)")
    run.add_argument("--discovery-interval", type=float,
                     help="seconds between reports of the upstream's tools to the control "
                          "plane (default 300; 0: only on start, on change and when asked)")
    run.add_argument("--log-level", type=str.upper, help="DEBUG, INFO (default), WARNING or "
                     "ERROR: the gateway's own lines and its HTTP server's")
    return parser


def _merged(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.config is not None:
        try:
            raw = tomllib.loads(args.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--config {args.config}: {exc}") from None
        values.update({key.replace("-", "_"): value for key, value in raw.items()})
    for key, value in vars(args).items():
        if key not in ("config", "command") and value is not None:
            values[key] = value
    return values


def settings_from(args: argparse.Namespace) -> Settings:
    """Validate the options; every error names the option."""
    values = _merged(args)
    for name in ("control_plane", "tenant", "server_name"):
        if not values.get(name):
            raise ConfigError(f"--{name.replace('_', '-')} is required.")
    token = values.get("token")
    if not token:
        if not values.get("token_file"):
            raise ConfigError("--token-file is required (the gateway token, shown once).")
        try:
            token = Path(values["token_file"]).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file: {exc}") from None
    upstream_url, upstream_cmd = values.get("upstream"), values.get("upstream_cmd")
    if bool(upstream_url) == bool(upstream_cmd):
        raise ConfigError("Give exactly one of --upstream (URL) and --upstream-cmd (command).")
    if isinstance(upstream_cmd, str):
        upstream_cmd = shlex.split(upstream_cmd)
    host, _, port = str(values.get("listen") or "127.0.0.1:8100").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("--listen: use host:port, e.g. 127.0.0.1:8100.")
    identities = _identities(values.get("identities"))
    if not identities and not values.get("jwt_issuer") and not values.get("oauth_issuer"):
        raise ConfigError("Say how agents are identified: --identities, --jwt-issuer and/or "
                          "--oauth-issuer.")
    oauth = _oauth(values)
    if values.get("jwt_issuer") and not values.get("jwt_jwks_url"):
        raise ConfigError("--jwt-jwks-url is required with --jwt-issuer.")
    return Settings(
        control_plane=str(values["control_plane"]), tenant=str(values["tenant"]), token=token,
        server_name=str(values["server_name"]), upstream_url=upstream_url,
        upstream_cmd=upstream_cmd, listen_host=host, listen_port=int(port),
        state_dir=Path(values.get("state_dir") or "var/gateway"), identities=identities,
        jwt_issuer=values.get("jwt_issuer"), jwt_jwks_url=values.get("jwt_jwks_url"),
        jwt_audience=values.get("jwt_audience"), redis_url=values.get("redis_url"),
        long_poll_seconds=int(values.get("long_poll") or 60),
        max_hold_seconds=_max_hold(values.get("max_hold")),
        discovery_interval=_discovery_interval(values.get("discovery_interval")),
        log_level=_log_level(values.get("log_level")),
        labels={str(k): str(v) for k, v in (values.get("labels") or {}).items()},
        **oauth,
    )


def _oauth(values: Mapping[str, Any]) -> dict[str, Any]:
    """The MCP authorization options (``gateway/oauth.py``), checked."""
    from gateway.oauth import ALLOWED_ALGORITHMS, check_resource_uri

    issuer, resource = values.get("oauth_issuer"), values.get("resource_uri")
    if not issuer:
        if resource:
            raise ConfigError("--resource-uri is used with --oauth-issuer.")
        return {}
    if not str(issuer).startswith(("https://", "http://")):
        raise ConfigError("--oauth-issuer: the authorization server's issuer URL.")
    if not resource:
        raise ConfigError("--resource-uri is required with --oauth-issuer (the gateway's MCP "
                          "endpoint as agents reach it, e.g. https://gw.example/mcp).")
    try:
        check_resource_uri(str(resource))
    except ValueError as exc:
        raise ConfigError(f"--resource-uri: {exc}.") from None
    algorithms = values.get("oauth_algorithms")
    if isinstance(algorithms, str):
        algorithms = [a.strip() for a in algorithms.split(",") if a.strip()]
    if algorithms is not None and (not algorithms or set(algorithms) - ALLOWED_ALGORITHMS):
        raise ConfigError(f"--oauth-algorithms: among {', '.join(sorted(ALLOWED_ALGORITHMS))} "
                          f"(none and HS* are never accepted).")
    scopes = values.get("oauth_scopes") or []
    if isinstance(scopes, str):
        scopes = scopes.split()
    result: dict[str, Any] = {
        "oauth_issuer": str(issuer), "resource_uri": str(resource),
        "oauth_jwks_url": values.get("oauth_jwks_url"), "oauth_scopes": list(scopes),
        "oauth_groups_claim": str(values.get("oauth_groups_claim") or "groups"),
        "oauth_algorithms": algorithms,
    }
    for name, low, high, default in (("oauth_leeway", 0, 300, 30.0),
                                     ("jwks_refetch_interval", 1, 3600, 30.0)):
        raw = values.get(name)
        try:
            number = default if raw is None else float(raw)
        except (TypeError, ValueError):
            number = -1.0
        if not low <= number <= high:
            raise ConfigError(f"--{name.replace('_', '-')}: between {low} and {high} seconds.")
        result[name] = number
    return result


def _max_hold(value: Any) -> float:
    if value is None:
        return 60.0
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError("--max-hold: a number of seconds.") from None
    if not 0 <= seconds <= 3600:
        raise ConfigError("--max-hold: between 0 and 3600 seconds.")
    return seconds


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(value: Any) -> str:
    level = str(value or "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"--log-level: one of {', '.join(LOG_LEVELS)} (got {value!r}).")
    return level


def _discovery_interval(value: Any) -> float:
    if value is None:
        return 300.0
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError("--discovery-interval: a number of seconds (0: off).") from None
    if seconds != 0 and not 10 <= seconds <= 86400:
        raise ConfigError("--discovery-interval: 0 (off) or between 10 and 86400 seconds.")
    return seconds


def _identities(source: Any) -> dict[str, tuple[str, str]]:
    if not source:
        return {}
    if isinstance(source, Mapping):
        raw = source
    else:
        try:
            raw = json.loads(Path(source).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--identities {source}: {exc}") from None
    identities = {}
    for token, who in raw.items() if isinstance(raw, Mapping) else ():
        if not isinstance(who, Mapping) or not who.get("issuer") or not who.get("subject"):
            raise ConfigError("--identities: each token maps to {\"issuer\", \"subject\"}.")
        identities[str(token)] = (str(who["issuer"]), str(who["subject"]))
    if not identities:
        raise ConfigError('--identities: expected {"<token>": {"issuer": …, "subject": …}}.')
    return identities


def decision_sink(uploader: Any, tenant: str, labels: Mapping[str, str]):
    """The proxy's decision fields → an OPA decision-log event in the upload queue."""
    from gateway.logs import decision_event

    def sink(fields: Mapping[str, Any]) -> None:
        decision = Decision(fields["outcome"], fields["reason"], fields.get("grant"),
                            fields.get("agent"), fields.get("on_behalf_of"))
        uploader.log(decision_event(
            decision=decision, agent=fields.get("agent"), principal=fields.get("principal"),
            server=fields["server"], tool=fields["tool"],
            arguments_sha256=fields["arguments_sha256"],
            bundle_revision=fields.get("bundle_revision"), tenant=tenant,
            call_id=fields.get("call_id"), escalation_id=fields.get("escalation_id"),
            labels=labels, target=fields.get("target")))

    return sink


def build(settings: Settings) -> tuple[Any, Any, Any, Any]:
    """(ASGI app, bundle client, decision-log uploader, discovery reporter), wired together."""
    from gateway.client import BundleClient
    from gateway.counters import MemoryCounters, RedisCounters
    from gateway.discovery import DiscoveryReporter
    from gateway.escalations import Escalations
    from gateway.identity import FirstOf, JwtIdentities, StaticIdentities
    from gateway.logs import DecisionLogUploader
    from gateway.proxy import build_app

    uploader = DecisionLogUploader(settings.control_plane, settings.token,
                                   settings.state_dir / "decision-logs")
    client = BundleClient(settings.control_plane, settings.tenant, settings.token,
                          settings.state_dir / "bundle",
                          long_poll_seconds=settings.long_poll_seconds,
                          labels=settings.labels, decision_logs=uploader,
                          status_listener=lambda headers: reporter.status_answer(headers))
    client.load()  # the last good bundle, re-verified, so a restart enforces at once
    # Static tokens first (a dictionary look-up), then OAuth access tokens, then bare JWTs.
    sources: list[Any] = []
    if settings.identities:
        sources.append(StaticIdentities(settings.identities))
    if settings.oauth_issuer:
        sources.append(_oauth_identities(settings))
    if settings.jwt_issuer:
        sources.append(JwtIdentities(issuer=settings.jwt_issuer, jwks_url=settings.jwt_jwks_url,
                                     audience=settings.jwt_audience))
    identities = sources[0] if len(sources) == 1 else FirstOf(*sources)
    counters = RedisCounters(settings.redis_url) if settings.redis_url else MemoryCounters()
    escalations = Escalations(settings.control_plane, settings.token, settings.tenant,
                              keys=client.keys, max_hold=settings.max_hold_seconds,
                              state_file=settings.state_dir / "escalations.json")
    app = build_app(bundle_source=client.current, server_name=settings.server_name,
                    upstream_url=settings.upstream_url, upstream_cmd=settings.upstream_cmd,
                    identities=identities, counters=counters, host=settings.listen_host,
                    decision_sink=decision_sink(uploader, settings.tenant, settings.labels),
                    escalations=escalations)
    upstream = app.proxy.upstream
    reporter = DiscoveryReporter(settings.control_plane, settings.token, settings.server_name,
                                 upstream, interval=settings.discovery_interval)
    reporter.attach(upstream)
    if settings.oauth_issuer:
        from gateway.oauth import ProtectedResource

        app = ProtectedResource(app, resource=str(settings.resource_uri),
                                authorization_servers=[settings.oauth_issuer],
                                scopes=settings.oauth_scopes,
                                resource_name=f"Tollgate gateway for {settings.server_name}")
    return app, client, uploader, reporter


def _oauth_identities(settings: Settings) -> Any:
    """OAuth access tokens of ``--oauth-issuer`` for ``--resource-uri`` (gateway/oauth.py)."""
    from gateway.jwks import JwksCache
    from gateway.oauth import DEFAULT_ALGORITHMS, OAuthIdentities

    return OAuthIdentities(
        issuer=str(settings.oauth_issuer), resource=str(settings.resource_uri),
        jwks=JwksCache(issuer=str(settings.oauth_issuer), jwks_url=settings.oauth_jwks_url,
                       min_refetch=settings.jwks_refetch_interval),
        algorithms=settings.oauth_algorithms or DEFAULT_ALGORITHMS,
        leeway_seconds=settings.oauth_leeway, groups_claim=settings.oauth_groups_claim,
        required_scopes=settings.oauth_scopes)


async def serve(settings: Settings) -> None:
    import uvicorn

    app, client, uploader, reporter = build(settings)
    stop = asyncio.Event()
    server = uvicorn.Server(uvicorn.Config(app, host=settings.listen_host,
                                           port=settings.listen_port,
                                           log_level=settings.log_level.lower(),
                                           lifespan="on"))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: (stop.set(), setattr(server, "should_exit", True)))
    print(f"Tollgate gateway: agents connect to http://{settings.listen_host}:"
          f"{settings.listen_port}/mcp (tenant {settings.tenant}, server "
          f"{settings.server_name})", flush=True)
    background = [asyncio.create_task(client.run(stop)), asyncio.create_task(uploader.run(stop)),
                  asyncio.create_task(reporter.run(stop))]
    try:
        await server.serve()
    finally:
        stop.set()
        await asyncio.gather(*background, return_exceptions=True)
        await client.aclose()
        await uploader.aclose()
        escalations = getattr(getattr(app, "proxy", None), "escalations", None)
        if escalations is not None:
            await escalations.aclose()


def configure_logging(settings: Settings) -> None:
    """One line per record on stderr at ``--log-level`` (the HTTP server's follow it: serve)."""
    logging.basicConfig(level=settings.log_level, force=True,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["verify"]:
        from gateway.verify import main as verify_main

        return verify_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
