"""The reference gateway as its own process, for end-to-end tests.

``start_gateway(control_plane, tmp_path, **options)`` runs ``python -m gateway run`` in front of
the demo's real stdio MCP server (demo/hr_server.py) for the demo tenant seeded by
``seed_demo`` (tenant ``acme``, server ``acme-hr``, the gateway token seed_demo wrote to
``VAR_DIR/demo-gateway-token``), with one static agent identity, ``AGENT_TOKEN`` → the demo's
``hr-assistant``. The handle knows the agent URL, the log, and how to stop the process.

``StubServer`` is a small local HTTP server answering from a script and recording every request:
it stands in for the control plane in gateway-only tests, for answers the control plane never
gives (or before it is there to give them).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession

from gateway.client import BUNDLE_FILE, JWKS_FILE
from gateway.verify import verify_bundle
from tests.e2e_support import free_port
from tests.mcp_support import as_agent

REPO = Path(__file__).resolve().parent.parent
AGENT_TOKEN = "demo-agent-token-0123456789"  # noqa: S105 - a static demo identity
AGENT_PRINCIPAL = {"issuer": "https://idp.acme.example", "subject": "hr-assistant"}
HR_SERVER = REPO / "demo" / "hr_server.py"


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    state_dir: Path
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def output(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:]

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
        """Poll ``predicate`` until it is truthy (its value is returned) or fail the test."""
        from django.db.utils import OperationalError

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except OperationalError as exc:
                # SQLite's shared in-memory test database locks a table while the live server
                # writes it (a gateway's status report): look again (PostgreSQL never does this).
                if "locked" not in str(exc):
                    raise
                value = None
            if value:
                return value
            if self.process.poll() is not None:
                pytest.fail(f"the gateway exited ({self.process.returncode}) while waiting "
                            f"for {what}:\n{self.output()}")
            time.sleep(0.2)
        pytest.fail(f"gave up waiting for {what}; gateway log:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_gateway(control_plane: str, tmp_path: Path, *, token_file: Path,
                  extra: list[str] | None = None, state_dir: Path | None = None,
                  port: int | None = None, name: str = "gateway", server_name: str = "acme-hr",
                  upstream: str | None = None,
                  upstream_cmd: list[str] | None = None) -> GatewayProcess:
    """Start ``python -m gateway run`` against ``control_plane`` (see the module docstring) and
    return once it listens. ``upstream``: a streamable-HTTP upstream instead of the demo's
    stdio server; ``upstream_cmd``: another stdio server's command. A free port can be taken by
    another process before the gateway binds it: then it is started again on another port
    (unless ``port`` was asked for)."""
    identities = tmp_path / "identities.json"
    identities.write_text(json.dumps({AGENT_TOKEN: AGENT_PRINCIPAL}))
    state_dir = state_dir or tmp_path / f"{name}-state"
    log = tmp_path / f"{name}.log"
    target = ["--upstream", upstream] if upstream else [
        "--upstream-cmd", shlex.join(upstream_cmd or [sys.executable, str(HR_SERVER)])]
    for _ in range(1 if port else 3):
        listen = port or free_port()
        argv = [sys.executable, "-m", "gateway", "run", "--control-plane", control_plane,
                "--tenant", "acme", "--token-file", str(token_file),
                "--server-name", server_name, *target, "--identities", str(identities),
                "--listen", f"127.0.0.1:{listen}", "--state-dir", str(state_dir),
                "--long-poll", "5", *(extra or [])]
        with log.open("ab") as out:
            process = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        gateway = GatewayProcess(process=process, port=listen, log=log, state_dir=state_dir,
                                 argv=argv)
        if _listens(gateway):
            return gateway
    pytest.fail(f"the gateway did not start:\n{gateway.output()}")


def _listens(gateway: GatewayProcess, timeout: float = 30.0) -> bool:
    """Until it answers HTTP (401 without a credential): True; False if it exited."""
    import httpx2

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            return False
        try:
            if httpx2.get(gateway.url, timeout=2).status_code == 401:
                return True
        except httpx2.HTTPError:
            pass
        time.sleep(0.1)
    gateway.stop()
    return False


def wait_listening(gateway: GatewayProcess, timeout: float = 30.0) -> None:
    """Until the gateway answers HTTP (401 without a credential)."""
    import httpx2

    def answers() -> bool:
        try:
            return httpx2.get(gateway.url, timeout=2).status_code == 401
        except httpx2.HTTPError:
            return False

    gateway.wait_for(answers, "the gateway to listen", timeout)


def gateway_bundle(gw: GatewayProcess) -> Any:
    """The bundle the gateway process holds (its state dir), verified again, or None."""
    directory = gw.state_dir / "bundle"
    try:
        tarball = (directory / BUNDLE_FILE).read_bytes()
        jwks = json.loads((directory / JWKS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return verify_bundle(tarball, jwks=jwks, tenant="acme")


def await_bundle(gw: GatewayProcess, tenant: Any,
                  holds: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """Until the gateway runs a bundle whose data.json satisfies ``holds``, that bundle is the
    tenant's current one, and the gateway has reported it to the control plane (the fleet's
    ``Gateway.active_revision``). Returns the data."""

    from bundles.models import Gateway, PublishState

    def ready() -> dict[str, Any] | None:
        bundle = gateway_bundle(gw)
        if bundle is None or not holds(bundle.data):
            return None
        state = PublishState.objects.select_related("current").get(tenant=tenant)
        reported = Gateway.objects.get(name="demo-gateway").active_revision
        if state.current.revision_number == bundle.revision_number == reported:
            return dict(bundle.data)
        return None

    return gw.wait_for(ready, what, timeout=60)


def grant_of(data: dict[str, Any], agent: str, scope: str) -> dict[str, Any] | None:
    return next((g for g in data["grants"] if (g["agent"], g["scope"]) == (agent, scope)), None)


def agent_view(gw: GatewayProcess) -> tuple[list[str], Any, Any]:
    """(tools listed, lookup_employee result, adjust_salary result) for the demo agent."""

    async def work(session: ClientSession):
        listed = sorted(t.name for t in (await session.list_tools()).tools)
        lookup = await session.call_tool("lookup_employee", {"employee_id": "E100"})
        adjust = await session.call_tool("adjust_salary", {
            "employee_id": "E100", "delta_usd": 1000, "reason": "raise"})
        return listed, lookup, adjust

    return as_agent(gw.url, AGENT_TOKEN, work)


class StubServer:
    """A local HTTP server answering from a script: {(method, path): [responses]} where each
    response is (status, headers, body); the last one repeats. Records every request."""

    def __init__(self, script: dict[tuple[str, str], list[tuple[int, dict, bytes]]]):
        self.script = script
        self.requests: list[tuple[str, str, dict, bytes]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stub.requests.append((self.command, self.path, dict(self.headers), body))
                answers = stub.script.get((self.command, self.path)) or [(404, {}, b"{}")]
                status, headers, content = answers.pop(0) if len(answers) > 1 else answers[0]
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
