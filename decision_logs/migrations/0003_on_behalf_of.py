"""Delegation (issue 22): a decision names the person the agent acted for."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('decisions', '0002_replay_run'),
    ]

    operations = [
        migrations.AddField(
            model_name='decisionlog',
            name='on_behalf_of',
            field=models.CharField(blank=True, max_length=500),
        ),
        migrations.AddField(
            model_name='decisionlog',
            name='on_behalf_of_groups',
            field=models.JSONField(blank=True, default=list),
        ),
    ]
