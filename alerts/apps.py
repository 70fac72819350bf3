from __future__ import annotations

from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"
    label = "alerts"
    verbose_name = "Alerts"

    def ready(self) -> None:
        # Code below the alerts app raises alerts through the core's door (governance/alerting.py).
        from alerts import services
        from governance import alerting

        alerting.set_raiser(services.alert_raise)
        alerting.audit_chain_checked.connect(_audit_chain_checked,
                                             dispatch_uid="alerts.audit_chain_checked")


def _audit_chain_checked(sender: object, *, tenant: object, report: object, **_: object) -> None:
    from alerts.services import alerts_audit_chain_checked

    alerts_audit_chain_checked(tenant=tenant, report=report)
