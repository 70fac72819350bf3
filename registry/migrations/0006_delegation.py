"""Delegation (issue 22): an agent principal may be an OAuth client id; a grant may require the
person the agent acts for to be in an IdP group."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('registry', '0005_tool_review_findings'),
        ('tenancy', '0005_invitation'),
    ]

    operations = [
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
    ]
