"""The audit chain: append-only, hash-chained per tenant, tamper-evident, fork-free."""

from __future__ import annotations

import io
import threading

import pytest
from django.core.management import call_command
from django.db import connection, connections, transaction

from governance.audit.models import GENESIS_HASH, AuditChain, AuditEvent
from governance.audit.services import Actor, audit_record, audit_verify, compute_hash
from governance.tenancy import services
from governance.tenancy.roles import Role
from tests.factories import GroupMappingFactory, TenantFactory


def _record(tenant, n: int, action: str = "test.event") -> list[AuditEvent]:
    events = []
    for i in range(n):
        with transaction.atomic():
            events.append(audit_record(tenant=tenant, actor=Actor.system("t"), action=action,
                                       object_type="test", object_id=str(i), after={"i": i}))
    return events


def _verify(tenant=None) -> tuple[int, str]:
    out = io.StringIO()
    args = ["--tenant", tenant.slug] if tenant else []
    try:
        call_command("verify_audit", *args, stdout=out)
    except SystemExit as exc:
        return int(exc.code), out.getvalue()
    return 0, out.getvalue()


def _sql(statement: str, params: list) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


@pytest.fixture
def chain(tenant_a):
    _record(tenant_a, 5)
    return AuditChain.objects.get(tenant=tenant_a)


def test_events_link_to_their_predecessor(tenant_a):
    first, second = _record(tenant_a, 2)
    created = AuditEvent.objects.get(tenant=tenant_a, action="tenant.created")
    assert created.seq == 1 and created.prev_hash == GENESIS_HASH
    assert first.prev_hash == created.hash
    assert second.prev_hash == first.hash
    assert second.hash == compute_hash(first.hash, second, f"tenant:{tenant_a.pk}")


def test_each_tenant_has_its_own_chain(tenant_a, tenant_b):
    _record(tenant_a, 3)
    _record(tenant_b, 1)
    assert AuditChain.objects.get(tenant=tenant_a).last_seq == 4
    assert AuditChain.objects.get(tenant=tenant_b).last_seq == 2


def test_a_clean_chain_verifies_ok(chain, tenant_a):
    code, out = _verify(tenant_a)
    assert code == 0
    assert out.strip() == "tenant alpha: OK (6 events)"


def test_it_names_an_edited_event(chain, tenant_a):
    victim = AuditEvent.objects.get(chain=chain, seq=3)
    _sql("UPDATE audit_auditevent SET after = %s WHERE id = %s", ['{"i": 99}', victim.pk])
    code, out = _verify(tenant_a)
    assert code == 1
    assert f"BROKEN at event #3 (id {victim.pk})" in out
    assert "the row was edited" in out


def test_it_names_an_edited_actor_or_time(chain, tenant_a):
    victim = AuditEvent.objects.get(chain=chain, seq=2)
    _sql("UPDATE audit_auditevent SET actor_label = 'someone else' WHERE id = %s", [victim.pk])
    code, out = _verify(tenant_a)
    assert code == 1 and f"event #2 (id {victim.pk})" in out


def test_it_notices_a_recomputed_hash(chain, tenant_a):
    # An attacker who edits a row and recomputes its own hash still breaks the next link.
    victim = AuditEvent.objects.get(chain=chain, seq=3)
    victim.action = "forged"
    new_hash = compute_hash(victim.prev_hash, victim, chain.key)
    _sql("UPDATE audit_auditevent SET action = 'forged', hash = %s WHERE id = %s",
         [new_hash, victim.pk])
    code, out = _verify(tenant_a)
    nxt = AuditEvent.objects.get(chain=chain, seq=4)
    assert code == 1
    assert f"event #4 (id {nxt.pk})" in out and "previous-hash link" in out


def test_it_names_a_deleted_event(chain, tenant_a):
    victim = AuditEvent.objects.get(chain=chain, seq=4)
    _sql("DELETE FROM audit_auditevent WHERE id = %s", [victim.pk])
    code, out = _verify(tenant_a)
    nxt = AuditEvent.objects.get(chain=chain, seq=5)
    assert code == 1
    assert f"BROKEN at event #5 (id {nxt.pk}): event #4 is missing (deleted)" in out


def test_it_notices_deleted_newest_events(chain, tenant_a):
    _sql("DELETE FROM audit_auditevent WHERE chain_id = %s AND seq >= 5", [chain.pk])
    code, out = _verify(tenant_a)
    assert code == 1
    assert "head says 6 events but 4 are present" in out


def test_it_notices_reordered_events(chain, tenant_a):
    a = AuditEvent.objects.get(chain=chain, seq=2)
    b = AuditEvent.objects.get(chain=chain, seq=3)
    with transaction.atomic():
        _sql("UPDATE audit_auditevent SET seq = -1 WHERE id = %s", [a.pk])
        _sql("UPDATE audit_auditevent SET seq = 2 WHERE id = %s", [b.pk])
        _sql("UPDATE audit_auditevent SET seq = 3 WHERE id = %s", [a.pk])
    code, out = _verify(tenant_a)
    assert code == 1
    assert f"BROKEN at event #2 (id {b.pk})" in out


def test_verify_without_tenant_checks_every_chain(chain, tenant_a, tenant_b):
    victim = AuditEvent.objects.get(chain=chain, seq=2)
    _sql("UPDATE audit_auditevent SET action = 'x' WHERE id = %s", [victim.pk])
    code, out = _verify()
    assert code == 1
    assert "tenant alpha: BROKEN at event #2" in out
    assert "tenant bravo: OK (1 events)" in out


def test_unknown_tenant_is_a_clear_error(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No tenant with slug 'nope'"):
        call_command("verify_audit", "--tenant", "nope")


def test_events_cannot_be_changed_through_the_orm(chain):
    event = AuditEvent.objects.filter(chain=chain).first()
    event.action = "changed"
    with pytest.raises(TypeError, match="append-only"):
        event.save()
    with pytest.raises(TypeError, match="append-only"):
        event.delete()
    with pytest.raises(TypeError, match="append-only"):
        AuditEvent.objects.filter(chain=chain).update(action="x")
    with pytest.raises(TypeError, match="append-only"):
        AuditEvent.objects.filter(chain=chain).delete()


@pytest.mark.django_db(transaction=True)
def test_recording_outside_a_transaction_is_refused(tenant_a):
    with pytest.raises(RuntimeError, match="inside the transaction"):
        audit_record(tenant=tenant_a, actor=Actor.system(), action="x")


def test_a_failed_change_leaves_no_audit_event(tenant_a, alice):
    before = AuditEvent.objects.filter(tenant=tenant_a).count()
    GroupMappingFactory(tenant=tenant_a, group="dupe")
    with pytest.raises(Exception):  # noqa: B017 - the duplicate is refused by the service
        services.group_mapping_create(tenant=tenant_a, actor=Actor.user(alice), group="dupe",
                                      role=Role.ADMIN)
    assert AuditEvent.objects.filter(tenant=tenant_a).count() == before + 1


def test_the_scheduled_task_reports_each_chain(chain, tenant_a):
    from governance.audit.tasks import verify_audit_chains

    lines = verify_audit_chains()
    assert "tenant alpha: OK (6 events)" in lines


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_do_not_fork_the_chain(postgres_only):
    """Eight threads, each with its own PostgreSQL connection, append to one tenant at once."""
    tenant = TenantFactory(slug="busy")
    threads, errors = [], []
    barrier = threading.Barrier(8)

    def writer(n: int) -> None:
        try:
            barrier.wait()
            for i in range(15):
                with transaction.atomic():
                    audit_record(tenant=tenant, actor=Actor.system(f"w{n}"), action="race",
                                 object_id=f"{n}-{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    for n in range(8):
        threads.append(threading.Thread(target=writer, args=(n,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    events = list(AuditEvent.objects.filter(tenant=tenant).order_by("seq"))
    assert [e.seq for e in events] == list(range(1, 8 * 15 + 2))
    assert len({e.prev_hash for e in events}) == len(events)  # no two events share a parent
    (report,) = audit_verify(tenant=tenant)
    assert report.ok, report.line()
