from __future__ import annotations

from django.apps import AppConfig


class TenancyConfig(AppConfig):
    name = "governance.tenancy"
    label = "tenancy"
    verbose_name = "Tenancy and identity"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_logged_out

        from governance.tenancy import user_sessions
        from governance.tenancy.api import schema  # noqa: F401 - registers the OpenAPI scheme

        # The session registry (governance.tenancy.user_sessions) follows every sign-in/out.
        user_logged_in.connect(user_sessions.on_user_logged_in,
                               dispatch_uid="tollgate-session-registry-in")
        user_logged_out.connect(user_sessions.on_user_logged_out,
                                dispatch_uid="tollgate-session-registry-out")
