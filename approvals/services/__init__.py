"""Every write of the approvals app: keyword-only, atomic, audited in the same transaction.

One module per entity; the product imports from them, and this package re-exports their public
services for the tests and scripts that call ``approvals.services.<name>``:

* ``policies`` — approval policies (save, delete);
* ``decisions`` — the rules shared by access requests and escalations (deciding, deadlines,
  reminders, notifications);
* ``requests`` — access requests (create, decide, cancel);
* ``escalations`` — runtime escalations from gateways (create, decide, refresh, receipt,
  consume);
* ``break_glass`` — break-glass self-grants and the expiry of time-bound grants;
* ``approvers`` — the approve object permission on scopes and servers.

Reads (which policy applies, who is eligible, the inbox) are in ``approvals.selectors``.
"""

from approvals.services.approvers import approver_permission_grant, approver_permission_revoke
from approvals.services.break_glass import break_glass_grant, grants_expire_due
from approvals.services.decisions import Outcome, deadlines_due, reminders_due
from approvals.services.escalations import (
    Refused,
    escalation_consume,
    escalation_create,
    escalation_decide,
    escalation_receipt,
    escalation_refresh,
)
from approvals.services.policies import approval_policy_delete, approval_policy_save
from approvals.services.requests import (
    access_request_cancel,
    access_request_create,
    access_request_decide,
)

__all__ = [
    "Outcome",
    "Refused",
    "access_request_cancel",
    "access_request_create",
    "access_request_decide",
    "approval_policy_delete",
    "approval_policy_save",
    "approver_permission_grant",
    "approver_permission_revoke",
    "break_glass_grant",
    "deadlines_due",
    "escalation_consume",
    "escalation_create",
    "escalation_decide",
    "escalation_receipt",
    "escalation_refresh",
    "grants_expire_due",
    "reminders_due",
]
