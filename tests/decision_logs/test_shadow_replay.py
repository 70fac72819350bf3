"""Shadow replay (issue 19 §5): decisions logged through the ingestion service, decided again
against the draft by a Celery task with progress; what would change, per agent and tool, and
which checks could not be replayed (hash-only arguments, gateway-only counters)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from decision_logs import replay as replay_service
from decision_logs.models import ReplayRun
from decision_logs.services import decisions_store, validate_events
from decision_logs.tasks import replay as replay_task
from gateway.receipts import arguments_sha256
from governance.audit.models import AuditEvent
from registry import services as registry
from tests.bundle_support import SYSTEM, make_gateway, small_registry
from tests.decision_support import event

WEB = "/t/alpha/decisions/replays/"
API = "/api/v1/t/alpha/decision-replays/"


def _at(delta: timedelta) -> str:
    return (datetime.now(UTC) - delta).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _full(n, arguments, **kw) -> dict:
    doc = event(n, **kw)
    doc["input"]["arguments"] = arguments
    doc["input"]["arguments_sha256"] = arguments_sha256(arguments)
    return doc


def _hash_only(n, **kw) -> dict:
    doc = event(n, **kw)
    del doc["input"]["arguments"]
    return doc


@pytest.fixture
def logged(tenant_a):
    """small_registry, four decisions logged yesterday and one three weeks ago; then the draft
    changes: ``read`` needs approval when amount ≥ 50, ``pay`` is blocked."""
    world = small_registry(tenant_a)
    gateway, _ = make_gateway(tenant_a)
    gid = world["grant"].pk
    day = _at(timedelta(days=1))
    events = [
        _full(1, {"amount": 100}, tool="read", timestamp=day, grant=str(gid)),
        _hash_only(2, tool="read", timestamp=day, grant=str(gid)),
        _full(3, {}, tool="pay", timestamp=day, grant=str(gid)),
        _full(4, {"amount": 1}, tool="read", timestamp=day, outcome="deny",
              reason=f"grant {gid}: rate limit 10/minute reached"),
        _full(5, {}, tool="pay", timestamp=_at(timedelta(days=21))),
    ]
    result = decisions_store(tenant_id=tenant_a.pk, gateway_id=gateway.pk,
                             events=validate_events(events))
    assert result.accepted == 5
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=world["grant"],
                          approval_mode="when",
                          approval_condition={"read": {"amount": {"minimum": 50}}})
    registry.tool_block(tenant=tenant_a, actor=SYSTEM, tool=world["tools"]["pay"])
    return world


def _check_result(run: ReplayRun, gid: int) -> None:
    assert run.status == "done", run.error
    assert run.progress == 100
    s = run.summary
    assert (s["total"], s["changed"], s["not_replayable"], s["unchanged"]) == (4, 2, 2, 0)
    assert s["transitions"] == {"allow→deny": 1, "allow→escalate": 1}
    assert s["per_agent_tool"] == [
        {"agent": "bot", "server": "payroll", "tool": "pay", "changed": 1,
         "transitions": {"allow→deny": 1}},
        {"agent": "bot", "server": "payroll", "tool": "read", "changed": 1,
         "transitions": {"allow→escalate": 1}},
    ]
    assert s["not_replayable_checks"] == {
        f"approval condition of grant {gid} (the log kept only the arguments' hash)": 1,
        "the rate limit (counted by the gateway)": 1,
    }
    changes = {c["decision_id"]: (c["logged"], c["replayed"], c["replayed_reason"])
               for c in run.changes}
    assert changes == {
        "d-1": ("allow", "escalate", f"grant {gid} requires approval (its condition matches)"),
        "d-3": ("allow", "deny", "tool payroll/pay is blocked"),
    }


@pytest.mark.django_db
def test_a_replay_lists_what_the_draft_would_change(logged, tenant_a, login, cast,
                                                    django_capture_on_commit_callbacks):
    client = login(cast["audrey"])
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(WEB, {"days": "7"})
    run = ReplayRun.objects.get(tenant=tenant_a)
    assert response.status_code == 302
    assert response["Location"] == f"{WEB}{run.pk}/"
    assert len(callbacks) == 1  # the task is sent once the request commits
    assert AuditEvent.objects.filter(tenant=tenant_a, action="decisions.replay_requested",
                                     object_id=str(run.pk)).count() == 1
    page = client.get(f"{WEB}{run.pk}/").content.decode()
    assert 'id="replay-progress"' in page and "hx-trigger" in page

    assert replay_task(run.pk) == "done"  # the task's body, in this process
    run.refresh_from_db()
    _check_result(run, logged["grant"].pk)
    assert AuditEvent.objects.filter(tenant=tenant_a, action="decisions.replay_done",
                                     object_id=str(run.pk)).count() == 1
    page = client.get(f"{WEB}{run.pk}/").content.decode()
    assert 'id="replay-changed">2<' in page
    assert "hx-trigger" not in page
    assert "tool payroll/pay is blocked" in page
    assert "approval condition of grant" in page
    # A second delivery of the same message finds the run finished and does nothing.
    assert replay_task(run.pk) == "done"


@pytest.mark.django_db
def test_the_api_starts_and_reads_a_replay(logged, tenant_a, as_user, cast):
    client = as_user(cast["alice"])
    response = client.post(API, {"days": 7}, format="json")
    assert response.status_code == 202, response.json()
    run_id = response.json()["id"]
    assert response["Location"] == f"{API}{run_id}/"
    assert response.json()["status"] == "queued"
    replay_service.replay_run_execute(run_id=run_id)
    detail = client.get(f"{API}{run_id}/").json()
    assert detail["status"] == "done"
    assert detail["summary"]["changed"] == 2
    assert {c["decision_id"] for c in detail["changes"]} == {"d-1", "d-3"}
    listed = client.get(API).json()
    assert [r["id"] for r in listed["results"]] == [run_id]
    assert "changes" not in listed["results"][0]


@pytest.mark.django_db
@pytest.mark.parametrize("days", [0, -1, 91, "x", True, None])
def test_bad_days_are_refused_and_nothing_is_stored(tenant_a, as_user, login, cast, days):
    response = as_user(cast["alice"]).post(API, {"days": days}, format="json")
    assert response.status_code == 400
    assert "days" in response.json()["errors"]
    web = login(cast["alice"]).post(WEB, {"days": "" if days is None else str(days)})
    assert web.status_code == 400
    assert not ReplayRun.objects.exists()
    assert not AuditEvent.objects.filter(action="decisions.replay_requested").exists()


@pytest.mark.django_db
def test_too_many_open_replays_are_refused(tenant_a, as_user, cast, settings):
    settings.REPLAY_MAX_OPEN_PER_TENANT = 1
    client = as_user(cast["alice"])
    assert client.post(API, {"days": 3}, format="json").status_code == 202
    second = client.post(API, {"days": 3}, format="json")
    assert second.status_code == 400
    assert "already running" in second.json()["message"]
    assert ReplayRun.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["bob", "dave", "victor"])
def test_members_without_view_audit_get_403(tenant_a, login, as_user, cast, name):
    run = ReplayRun.objects.create(tenant=tenant_a, days=3)
    assert login(cast[name]).get(WEB).status_code == 403
    assert login(cast[name]).post(WEB, {"days": "3"}).status_code == 403
    assert login(cast[name]).get(f"{WEB}{run.pk}/").status_code == 403
    assert as_user(cast[name]).post(API, {"days": 3}, format="json").status_code == 403
    assert as_user(cast[name]).get(f"{API}{run.pk}/").status_code == 403
    assert ReplayRun.objects.count() == 1


@pytest.mark.django_db
def test_another_tenant_gets_404(tenant_a, tenant_b, login, api, token_for, cast):
    run = ReplayRun.objects.create(tenant=tenant_a, days=3)
    oscar = login(cast["oscar"])
    assert oscar.get(f"{WEB}{run.pk}/").status_code == 404
    assert oscar.get(f"/t/bravo/decisions/replays/{run.pk}/").status_code == 404
    client = api(token_for(cast["oscar"], tenant_b))
    assert client.get(f"/api/v1/t/bravo/decision-replays/{run.pk}/").status_code == 404
    assert client.post(API, {"days": 3}, format="json").status_code == 404


@pytest.mark.django_db
def test_the_bundle_diff_page_links_to_the_replay(tenant_a, login, cast):
    from bundles.publish import bundle_publish

    small_registry(tenant_a)
    bundle_publish(tenant=tenant_a, trigger="test")
    page = login(cast["alice"]).get("/t/alpha/bundles/compare/").content.decode()
    assert f'id="shadow-replay" href="{WEB}"' in page
    assert 'id="shadow-replay"' not in login(cast["victor"]).get(
        "/t/alpha/bundles/compare/").content.decode()


@pytest.mark.django_db
def test_a_lost_run_is_failed_by_the_sweep(tenant_a, settings):
    run = ReplayRun.objects.create(tenant=tenant_a, days=3, status="running",
                                   started_at=timezone.now() - timedelta(hours=2))
    assert replay_service.replay_runs_fail_stale() == 1
    run.refresh_from_db()
    assert run.status == "failed"
    assert "lost" in run.error


def test_a_real_worker_runs_the_replay(logged, tenant_a, celery_worker_process):
    worker = celery_worker_process()
    run = replay_service.replay_request(tenant=tenant_a, actor=SYSTEM, days=7)
    worker.wait_until(lambda: ReplayRun.objects.get(pk=run.pk).status in ("done", "failed"),
                      timeout=120)
    run.refresh_from_db()
    _check_result(run, logged["grant"].pk)


def test_a_logged_resource_read_is_replayed_against_the_servers_registration(tenant_a):
    import json

    from bundles.packaging import bundle_json
    from registry.compiler import compile_data

    world = small_registry(tenant_a)
    row = {"outcome": "allow", "reason": "resources of server payroll forwarded (grant 1)",
           "agent": "bot", "principal": "", "server": "payroll", "tool": "resources/read",
           "arguments": None, "arguments_sha256": arguments_sha256({"uri": "note://a"}),
           "timestamp": datetime.now(UTC)}

    def replayed():
        data = json.loads(bundle_json(compile_data(tenant_a, at=datetime.now(UTC))))
        return replay_service.Replayer(data).replay(row)

    decision, checks = replayed()
    assert checks == [] and decision.outcome == "deny"
    assert decision.reason == ("resources of server payroll are not forwarded (its "
                               "registration does not enable them)")
    registry.server_update(tenant=tenant_a, actor=SYSTEM, server=world["server"],
                           forward=["resources"])
    decision, _ = replayed()
    assert decision.outcome == "allow"
    assert decision.reason == f"resources of server payroll forwarded (grant {world['grant'].pk})"
