"""Access requests and their decisions (approvals/services/): the separation-of-duties rules
hold in the service layer, whatever calls it."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone
from guardian.shortcuts import assign_perm

from approvals import selectors, services
from approvals.models import AccessRequest, ApprovalDecision
from governance.audit.models import AuditEvent
from governance.tenancy.models import ExternalIdentity, Membership
from governance.tenancy.roles import Role
from notifications import services as notifications
from notifications.models import Delivery
from registry.models import Grant
from tests.bundle_support import SYSTEM, payroll_world
from tests.factories import MembershipFactory, UserFactory


@pytest.fixture
def world(tenant_a, dave):
    """The approvals world without the rest of the cast: dave is the tenant's only member until
    a test adds the approvers it needs (who may approve, and who is notified, depends on them)."""
    return payroll_world(tenant_a, owner=dave)


def _request(tenant, world, requester, **kwargs):
    terms = {"duration_minutes": 60, "justification": "month-end payroll run"} | kwargs
    return services.access_request_create(tenant=tenant, actor=SYSTEM, requester=requester,
                                          agent=world["bot"], scope=world["scope"], **terms)


def _decide(tenant, request, approver, outcome="approve", **kwargs):
    return services.access_request_decide(tenant=tenant, actor=SYSTEM, request=request,
                                          approver=approver, outcome=outcome, **kwargs)


def test_an_owner_requests_and_an_approver_grants_for_the_duration(tenant_a, world, dave, bob):
    request = _request(tenant_a, world, dave, ticket="CHG-42")
    assert request.status == "pending" and request.stages == selectors.BUILT_IN_STAGES
    assert request.deadline > timezone.now() + timedelta(hours=23)
    before = timezone.now()
    outcome = _decide(tenant_a, request, bob)
    request.refresh_from_db()
    assert request.status == "approved" and "granted to bot" in outcome.message
    grant = request.grant
    assert grant.status == Grant.Status.ACTIVE and grant.access_request == request
    # The clock starts at approval.
    assert before + timedelta(minutes=60) <= grant.expires_at <= timezone.now() + timedelta(
        minutes=60)
    actions = list(AuditEvent.objects.filter(tenant=tenant_a, object_type=
                                             "approvals.accessrequest").order_by("seq")
                   .values_list("action", flat=True))
    assert actions == ["access_request.created", "access_request.approved",
                       "access_request.granted"]


def test_who_may_request(tenant_a, world, dave, bob, victor, alice):
    with pytest.raises(ValidationError, match="owner or an admin"):
        _request(tenant_a, world, victor)
    with pytest.raises(ValidationError, match="owner or an admin"):
        _request(tenant_a, world, bob)
    with pytest.raises(ValidationError, match="Say why"):
        _request(tenant_a, world, dave, justification="  ")
    with pytest.raises(ValidationError, match="Between 1 minute"):
        _request(tenant_a, world, dave, duration_minutes=0)
    _request(tenant_a, world, alice)
    with pytest.raises(ValidationError, match="already pending"):
        _request(tenant_a, world, dave)


def test_requester_and_owner_never_approve(tenant_a, world, dave, alice):
    own = _request(tenant_a, world, alice)
    with pytest.raises(ValidationError, match="You requested this access"):
        _decide(tenant_a, own, alice)
    services.access_request_cancel(tenant=tenant_a, actor=SYSTEM, request=own, by=alice)
    # dave owns the agent; even promoted to approver he cannot approve for it.
    Membership.objects.filter(user=dave).update(role=Role.APPROVER)
    by_admin = _request(tenant_a, world, alice)
    with pytest.raises(ValidationError, match="You own this agent"):
        _decide(tenant_a, by_admin, dave)


def test_eligibility_is_checked_when_deciding(tenant_a, world, dave, bob, victor):
    request = _request(tenant_a, world, dave)
    with pytest.raises(ValidationError, match="not an eligible approver"):
        _decide(tenant_a, request, victor)
    Membership.objects.filter(user=bob).update(role=Role.VIEWER)  # removed as approver
    with pytest.raises(ValidationError, match="not an eligible approver"):
        _decide(tenant_a, request, bob)
    assert AccessRequest.objects.get(pk=request.pk).status == "pending"


def test_two_of_three_in_ordered_stages_each_counting_once(tenant_a, world, dave, bob, alice):
    carol, erin = UserFactory(username="carol"), UserFactory(username="erin")
    for user in (carol, erin):
        MembershipFactory(tenant=tenant_a, user=user, role=Role.APPROVER)
    ExternalIdentity.objects.create(user=alice, issuer="https://idp", subject="alice",
                                    last_groups=["security-leads"])
    services.approval_policy_save(
        tenant=tenant_a, actor=SYSTEM, scope=world["scope"], decision_hours=4,
        stages=[{"approvals_required": 2, "roles": ["approver"]},
                {"approvals_required": 1, "idp_group": "security-leads"}])
    request = _request(tenant_a, world, dave)
    assert [s["approvals_required"] for s in request.stages] == [2, 1]
    assert _decide(tenant_a, request, bob).message.startswith("Approved: 1 of 2")
    assert not _decide(tenant_a, request, bob).changed  # counts once
    with pytest.raises(ValidationError, match="not an eligible approver for stage 1"):
        _decide(tenant_a, request, alice)  # stage 2's approver cannot skip ahead
    assert "stage 2 decides next" in _decide(tenant_a, request, carol).message
    with pytest.raises(ValidationError, match="not an eligible approver for stage 2"):
        _decide(tenant_a, request, erin)
    assert _decide(tenant_a, request, alice).request.status == "approved"


TWO_STAGES = [{"approvals_required": 1, "roles": ["approver"]},
              {"approvals_required": 1, "roles": ["admin", "approver"]}]
COUNTED_ONCE = ("You already decided stage 1 of this request: one approver counts once, so "
                "someone else must decide stage 2.")


def test_one_approver_never_passes_two_stages_alone(tenant_a, world, dave, bob, alice):
    services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, scope=world["scope"],
                                  stages=TWO_STAGES)
    notifications.channel_create(tenant=tenant_a, actor=SYSTEM, name="approvers",
                                 kind="email", to_recipients=True,
                                 events=["approval.requested", "approval.reminder"])
    request = _request(tenant_a, world, dave)
    assert "stage 2 decides next" in _decide(tenant_a, request, bob).message
    # Stage 1 was announced to bob; stage 2 to alice only.
    assert [d.payload["recipients"] for d in Delivery.objects.filter(
        event="approval.requested").order_by("pk")] == [["bob@example.com"],
                                                        ["alice@example.com"]]
    with pytest.raises(ValidationError) as refused:
        _decide(tenant_a, request, bob)
    assert refused.value.messages == [COUNTED_ONCE]
    request.refresh_from_db()
    assert (request.status, request.current_stage, request.grant) == ("pending", 1, None)
    assert ApprovalDecision.objects.filter(request=request).count() == 1
    assert AuditEvent.objects.filter(action="access_request.approved").count() == 1
    # Nor is it offered to him: not in his inbox, not in the reminder.
    assert selectors.inbox_requests(tenant_a, bob) == []
    assert [r.pk for r in selectors.inbox_requests(tenant_a, alice)] == [request.pk]
    near = request.deadline - timedelta(seconds=60)
    assert services.reminders_due(now=near) == 1
    reminder = Delivery.objects.get(event="approval.reminder")
    assert reminder.payload["recipients"] == ["alice@example.com"]
    assert _decide(tenant_a, request, alice).request.status == "approved"


def test_who_decided_a_stage_is_no_alternate_for_a_later_one(tenant_a, world, dave, bob,
                                                            alice):
    services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, scope=world["scope"],
                                  stages=TWO_STAGES[:1] + [{"roles": ["admin"]}],
                                  alternate_roles=["approver"])
    request = _request(tenant_a, world, dave)
    _decide(tenant_a, request, bob)
    first_deadline = request.deadline
    services.deadlines_due(now=first_deadline)
    request.refresh_from_db()
    assert request.on_alternates and request.status == "pending"
    with pytest.raises(ValidationError) as refused:
        _decide(tenant_a, request, bob, now=first_deadline)
    assert refused.value.messages == [
        "You already decided stage 1 of this request: one approver counts once, so someone "
        "else must decide the alternates."]
    assert AccessRequest.objects.get(pk=request.pk).status == "pending"


def test_a_policy_needing_more_people_than_there_are_is_refused(tenant_a, world, bob, alice):
    # bob is the only approver: two approver stages would need him twice.
    with pytest.raises(ValidationError) as refused:
        services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, scope=world["scope"],
                                      stages=[{"roles": ["approver"]}, {"roles": ["approver"]}])
    assert refused.value.message_dict == {"stages": [
        "The stages need 2 approvals from 2 different people (one approver counts once across "
        "the stages) but today's eligible members cannot fill them: no request could ever "
        "pass."]}
    # [approver] then [admin, approver] is passable: bob, then alice.
    services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, scope=world["scope"],
                                  stages=TWO_STAGES)


def test_deny_needs_a_reason_and_ends_the_request(tenant_a, world, dave, bob):
    request = _request(tenant_a, world, dave)
    with pytest.raises(ValidationError, match="Say why"):
        _decide(tenant_a, request, bob, "deny")
    outcome = _decide(tenant_a, request, bob, "deny", reason="no change ticket")
    assert outcome.request.status == "denied" and outcome.request.deny_reason
    late = _decide(tenant_a, request, bob, "approve")
    assert not late.changed and late.message == "Nothing to do: this request is already denied."
    assert not Grant.objects.filter(access_request__isnull=False).exists()


def test_the_deadline_wins_over_a_late_decision(tenant_a, world, dave, bob):
    request = _request(tenant_a, world, dave)
    outcome = _decide(tenant_a, request, bob, now=request.deadline)
    assert outcome.request.status == "expired" and "expired at its deadline" in outcome.message
    assert not ApprovalDecision.objects.exists()


def test_undecided_requests_expire_by_the_system_actor(tenant_a, world, dave):
    request = _request(tenant_a, world, dave)
    assert services.deadlines_due(now=request.deadline - timedelta(seconds=1)) == 0
    assert services.deadlines_due(now=request.deadline) == 1
    request.refresh_from_db()
    assert request.status == "expired"
    event = AuditEvent.objects.get(action="access_request.expired")
    assert event.actor_type == "system"


def test_a_policy_nobody_could_pass_is_refused(tenant_a, world, bob):
    with pytest.raises(ValidationError, match="only 1 member"):
        services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, risk_level="high",
                                      stages=[{"approvals_required": 2, "roles": ["approver"]}])
    with pytest.raises(ValidationError, match="only 0 member"):
        services.approval_policy_save(tenant=tenant_a, actor=SYSTEM,
                                      stages=[{"idp_group": "nobody-has-this"}])


def test_the_most_specific_policy_applies(tenant_a, world, bob, alice):
    services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, decision_hours=48,
                                  stages=[{"roles": ["admin"]}])
    assert selectors.policy_for(tenant_a, world["scope"]) == (
        [{"approvals_required": 1, "roles": ["admin"], "idp_group": "",
          "object_permission": False}], 48)
    services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, risk_level=world[
        "scope"].risk_level, decision_hours=12, stages=[{"roles": ["approver"]}])
    assert selectors.policy_for(tenant_a, world["scope"])[1] == 12
    services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, scope=world["scope"],
                                  decision_hours=2, stages=[{"roles": ["approver", "admin"]}])
    assert selectors.policy_for(tenant_a, world["scope"])[1] == 2


@pytest.mark.django_db(transaction=True)
def test_twenty_approvers_at_once_reach_one_outcome_and_one_grant(postgres_only, tenant_a):
    owner = UserFactory(username="owner")
    MembershipFactory(tenant=tenant_a, user=owner, role=Role.DEVELOPER)
    world = payroll_world(tenant_a, owner=owner)
    assign_perm("registry.manage_agent", owner, world["bot"])
    approvers = []
    for i in range(20):
        user = UserFactory(username=f"approver{i}")
        MembershipFactory(tenant=tenant_a, user=user, role=Role.APPROVER)
        approvers.append(user)
    request = _request(tenant_a, world, owner)
    results, errors = [], []
    barrier = threading.Barrier(20)

    def decide(user):
        try:
            barrier.wait(timeout=30)
            results.append(_decide(tenant_a, request, user))
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=decide, args=(u,)) for u in approvers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(1 for r in results if r.changed) == 1
    assert ApprovalDecision.objects.count() == 1
    assert Grant.objects.filter(access_request=request).count() == 1
    assert AccessRequest.objects.get(pk=request.pk).status == "approved"


def test_the_beat_task_expires_due_requests(tenant_a, world, dave):
    from approvals.tasks import expire_requests

    request = _request(tenant_a, world, dave)
    AccessRequest.objects.filter(pk=request.pk).update(deadline=timezone.now())
    assert expire_requests() == {"deadlines": 1, "reminders": 0, "grants_expired": 0}
