"""Put the sessions signed in before the session registry existed into it, so that offboarding
reaches them too (database session store only; a one-time scan of the live sessions)."""

from django.conf import settings
from django.db import migrations
from django.utils import timezone


def register(apps, schema_editor):
    if settings.SESSION_ENGINE not in ("django.contrib.sessions.backends.db",
                                       "django.contrib.sessions.backends.cached_db"):
        return
    from django.contrib.sessions.backends.db import SessionStore

    Session = apps.get_model("sessions", "Session")
    UserSession = apps.get_model("tenancy", "UserSession")
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    known = set(UserSession.objects.values_list("session_key", flat=True))
    store = SessionStore()
    rows = []
    for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator():
        if session.session_key in known:
            continue
        user_id = store.decode(session.session_data).get("_auth_user_id")
        if user_id is None:
            continue
        try:
            pk = User._meta.pk.to_python(user_id)
        except Exception:  # noqa: BLE001, S112 - a session of an unknown shape: not a sign-in
            continue
        if User.objects.filter(pk=pk).exists():
            rows.append(UserSession(user_id=pk, session_key=session.session_key))
    UserSession.objects.bulk_create(rows, batch_size=500, ignore_conflicts=True)


class Migration(migrations.Migration):

    dependencies = [
        ("tenancy", "0006_identity_lifecycle"),
        ("sessions", "0001_initial"),
    ]

    operations = [migrations.RunPython(register, migrations.RunPython.noop)]
