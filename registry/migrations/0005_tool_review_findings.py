"""Tool-poisoning review findings (issue 19 §3): stored with each definition; definitions
recorded before this migration are scanned here, with the tenant's registry as it stands."""

from django.db import migrations, models

FIELDS = ("name", "title", "description", "input_schema", "output_schema", "annotations")


def scan_existing(apps, schema_editor):
    from registry.review_findings import scan_definition

    Tool = apps.get_model("registry", "Tool")
    McpServer = apps.get_model("registry", "McpServer")
    for tenant_id in Tool.objects.values_list("tenant_id", flat=True).distinct():
        servers = dict(McpServer.objects.filter(tenant_id=tenant_id).values_list("pk", "name"))
        names = list(Tool.objects.filter(tenant_id=tenant_id).values_list("name", "server_id"))
        for tool in Tool.objects.filter(tenant_id=tenant_id):
            other_tools = {n: servers[s] for n, s in names if s != tool.server_id}
            for n, s in names:  # a name the tool's own server also has is not a mention of another
                if s == tool.server_id:
                    other_tools.pop(n, None)
            context = {"other_tools": other_tools,
                       "other_servers": {n for pk, n in servers.items() if pk != tool.server_id}}
            tool.findings = scan_definition({f: getattr(tool, f) for f in FIELDS}, **context)
            if tool.drifted_definition is not None:
                tool.drifted_findings = scan_definition(tool.drifted_definition, **context)
            tool.save(update_fields=["findings", "drifted_findings"])


class Migration(migrations.Migration):

    dependencies = [
        ('registry', '0004_gateway_discovery'),
    ]

    operations = [
        migrations.AddField(
            model_name='tool',
            name='drifted_findings',
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name='tool',
            name='findings',
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.RunPython(scan_existing, migrations.RunPython.noop),
    ]
