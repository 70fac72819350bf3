"""Delegation (issue 22): an agent principal may be an OAuth client id; a grant may require the
person the agent acts for to be in an IdP group."""

from django.db import migrations, models

from governance.tenancy.db import EnforceSameTenant, SuspendSameTenant


class Migration(migrations.Migration):

    dependencies = [
        ('registry', '0005_tool_review_findings'),
        ('tenancy', '0005_invitation'),
        ('approvals', '0002_escalations_alternates'),
    ]

    operations = [
        # SQLite rebuilds agentprincipal and grant (governance/tenancy/db.py): suspend the
        # triggers that mention grant, re-install them and both tables' own afterwards.
        SuspendSameTenant("approvals.accessrequest", "grant", "grant"),
        SuspendSameTenant("approvals.escalation", "grant", "grant"),
        migrations.AddField(
            model_name='agentprincipal',
            name='kind',
            field=models.CharField(choices=[('subject', 'Token subject (sub)'), ('client', 'OAuth client id (azp / client_id)')], default='subject', max_length=10),
        ),
        migrations.AddField(
            model_name='grant',
            name='on_behalf_of_group',
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.AddConstraint(
            model_name='agentprincipal',
            constraint=models.CheckConstraint(condition=models.Q(('kind__in', ['subject', 'client'])), name='principal_kind_valid'),
        ),
        EnforceSameTenant("agentprincipal", "agent", "agent", sqlite_only=True),
        EnforceSameTenant("grant", "agent", "agent", sqlite_only=True),
        EnforceSameTenant("grant", "scope", "toolscope", sqlite_only=True),
        EnforceSameTenant("approvals.accessrequest", "grant", "grant", sqlite_only=True),
        EnforceSameTenant("approvals.escalation", "grant", "grant", sqlite_only=True),
    ]
