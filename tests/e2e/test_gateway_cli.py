"""``python -m gateway run`` end to end: the control plane (live server) with the demo tenant,
the reference gateway as its own process in front of the demo's real stdio MCP server, and an
agent using the official MCP SDK client. The gateway pulls and verifies the bundle, reports its
status, enforces the grant and uploads its decisions."""

from __future__ import annotations

import io
import json

import anyio
import pytest
from django.core.management import call_command

from bundles.models import Gateway
from decision_logs.models import DecisionLog
from gateway.__main__ import ConfigError, _parser, settings_from
from tests.gateway_support import agent_view, start_gateway


@pytest.mark.django_db(transaction=True)
def test_the_gateway_enforces_the_demo_tenant_bundle_on_real_mcp_traffic(
        live_server, settings, tmp_path):
    settings.DEBUG = True
    settings.VAR_DIR = tmp_path
    call_command("seed_demo", stdout=io.StringIO())
    seeded = DecisionLog.objects.count()
    gw = start_gateway(live_server.url, tmp_path, token_file=tmp_path / "demo-gateway-token")
    try:
        gateway = Gateway.objects.get(name="demo-gateway")
        # Pulled, verified, activated and reported: the fleet sees revision 1.
        gw.wait_for(lambda: Gateway.objects.get(pk=gateway.pk).active_revision == 1,
                    "the gateway's status report")

        listed, allowed, refused = agent_view(gw)
        assert listed == ["get_salary", "lookup_employee"]  # adjust_salary is not granted
        assert not allowed.is_error
        assert "Ada Lovelace" in json.dumps(allowed.model_dump(mode="json"))
        assert refused.is_error
        assert "not approved" in refused.content[0].text
        # Both decisions reach the control plane's decision log (uploaded by the gateway).
        gw.wait_for(lambda: DecisionLog.objects.count() >= seeded + 2,
                    "the decision-log upload")
        fresh = DecisionLog.objects.exclude(decision_id__startswith="demo-")
        assert sorted(fresh.values_list("tool", "outcome")) == [
            ("adjust_salary", "deny"), ("lookup_employee", "allow")]
        assert set(fresh.values_list("gateway_id", "bundle_revision")) == {(gateway.pk, 1)}
    finally:
        gw.stop()


def test_the_command_line_names_what_is_missing(tmp_path):
    def settings(*argv: str):
        return settings_from(_parser().parse_args(["run", *argv]))

    with pytest.raises(ConfigError, match="--control-plane is required"):
        settings()
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    base = ["--control-plane", "http://cp", "--tenant", "acme", "--server-name", "hr",
            "--token-file", str(token)]
    with pytest.raises(ConfigError, match="exactly one of --upstream"):
        settings(*base)
    with pytest.raises(ConfigError, match="how agents are identified"):
        settings(*base, "--upstream", "http://up/mcp")
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps({"t": {"issuer": "i", "subject": "s"}}))
    with pytest.raises(ConfigError, match="--listen"):
        settings(*base, "--upstream", "http://up/mcp", "--identities", str(ids),
                 "--listen", "nowhere")
    config = tmp_path / "gateway.toml"
    config.write_text('control-plane = "http://cp"\ntenant = "acme"\nserver-name = "hr"\n'
                      f'token-file = "{token}"\nupstream-cmd = "python server.py --x"\n'
                      f'identities = "{ids}"\nlisten = "127.0.0.1:9100"\n')
    got = settings_from(_parser().parse_args(["run", "--config", str(config)]))
    assert (got.token, got.upstream_cmd, got.listen_port, got.identities) == (
        "secret-token", ["python", "server.py", "--x"], 9100, {"t": ("i", "s")})


def test_static_tokens_and_jwts_can_be_accepted_together():
    from gateway.identity import FirstOf, StaticIdentities

    either = FirstOf(StaticIdentities({"a": ("https://one", "alpha")}),
                     StaticIdentities({"b": ("https://two", "beta")}))
    found = [anyio.run(either.identify, token) for token in ("a", "b", "c")]
    assert [(p.issuer, p.subject) if p else None for p in found] == [
        ("https://one", "alpha"), ("https://two", "beta"), None]
