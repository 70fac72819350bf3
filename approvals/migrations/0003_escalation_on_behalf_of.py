"""Delegation (issue 22): an escalation names the person the agent acts for."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('approvals', '0002_escalations_alternates'),
    ]

    operations = [
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
    ]
