"""Delegation (issue 22): an escalation names the person the agent acts for."""

from django.db import migrations, models

from governance.tenancy.db import EnforceSameTenant, SuspendSameTenant


class Migration(migrations.Migration):

    dependencies = [
        ('approvals', '0002_escalations_alternates'),
    ]

    operations = [
        # SQLite rebuilds the escalation table (governance/tenancy/db.py): suspend the trigger
        # that mentions it, re-install it and the table's own afterwards.
        SuspendSameTenant("approvaldecision", "escalation", "escalation"),
        migrations.AddField(
            model_name='escalation',
            name='on_behalf_of',
            field=models.CharField(blank=True, max_length=500),
        ),
        migrations.AddField(
            model_name='escalation',
            name='on_behalf_of_groups',
            field=models.JSONField(blank=True, default=list),
        ),
        EnforceSameTenant("escalation", "gateway", "bundles.gateway", sqlite_only=True),
        EnforceSameTenant("escalation", "agent", "registry.agent", sqlite_only=True),
        EnforceSameTenant("escalation", "grant", "registry.grant", sqlite_only=True),
        EnforceSameTenant("escalation", "scope", "registry.toolscope", sqlite_only=True),
        EnforceSameTenant("approvaldecision", "escalation", "escalation", sqlite_only=True),
    ]
