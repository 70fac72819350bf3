"""Tollgate settings: every value from the environment.

Nothing set → the embedded default (SQLite, Celery on kombu's filesystem transport, database
cache). DATABASE_URL / REDIS_URL switch to PostgreSQL and Redis. A malformed value stops start-up
with a message naming the variable. This module names every variable; the strict readers (and
the checks of lists, networks and keys) are in governance.config, the Celery beat schedule in
governance.settings_beat.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from governance.config import (
    database_config,
    env_absolute_paths,
    env_allowed_hosts,
    env_bool,
    env_fernet_keys,
    env_int,
    env_list,
    env_networks,
    env_public_url,
    env_required_url,
    env_script_name,
    env_secret_key,
    env_str,
    env_url,
)
from governance.process import hide_environment
from governance.settings_beat import beat_schedule

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("TOLLGATE_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)

# Demo only: DEBUG=true is what `make run` sets; never used with DEBUG off, where a short,
# low-entropy or django-insecure- key stops start-up (governance.config.env_secret_key).
SECRET_KEY = env_secret_key(
    "SECRET_KEY", debug=DEBUG,
    demo_key="django-insecure-tollgate-demo-key-do-not-use-in-production")  # noqa: S106

# Empty with DEBUG off stops start-up (every request would be a 400).
ALLOWED_HOSTS = env_allowed_hosts("ALLOWED_HOSTS", ["127.0.0.1", "localhost"], debug=DEBUG)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Public URL of this control plane (used as the `iss` of signed artefacts and in e-mails); a
# loopback host (the default included) stops start-up with DEBUG off.
TOLLGATE_BASE_URL = env_public_url("TOLLGATE_BASE_URL", default="http://127.0.0.1:8000",
                                   debug=DEBUG)
# The path prefix Tollgate is served under behind a reverse proxy (``/tg``; "" at the root): from
# FORCE_SCRIPT_NAME, else the path of TOLLGATE_BASE_URL. Every URL it writes carries it (reverse,
# {% url %}, STATIC_URL, the login redirects, cookie paths); governance.asgi answers only under it.
SCRIPT_NAME = env_script_name("FORCE_SCRIPT_NAME", base_url=TOLLGATE_BASE_URL,
                              base_name="TOLLGATE_BASE_URL")
FORCE_SCRIPT_NAME = SCRIPT_NAME or None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our own static files (no CDN)
    "guardian",
    "axes",
    "django_htmx",
    "mozilla_django_oidc",
    "governance.tenancy",
    "governance.audit",
    "bundles",
    "registry",
    "approvals",
    "notifications",
    "decision_logs",
    "exports",
    "scim",
    "alerts",
    "evidence",
    "observability",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "governance.tenancy.middleware.RequestContextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # A due OIDC session is re-checked with the IdP (governance/tenancy/revalidation.py).
    "governance.tenancy.revalidation.SessionRevalidationMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # A view that failed because the database is unreachable answers 503 + Retry-After.
    "governance.outage.DatabaseUnavailableMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "governance.tenancy.middleware.ContentSecurityPolicyMiddleware",
    # Last, as django-axes asks: it turns lockouts into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# /api/v1/gateway/ (machines) runs through this chain instead (see governance/asgi.py): async-
# native middleware only, so gateway polls never wait for a thread.
GATEWAY_MIDDLEWARE = [
    "governance.tenancy.middleware.RequestContextMiddleware",
    "bundles.middleware.GatewayTransportSecurityMiddleware",
]

ROOT_URLCONF = "governance.urls"
WSGI_APPLICATION = "governance.wsgi.application"
ASGI_APPLICATION = "governance.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "governance.tenancy.context_processors.tenancy",
            ],
        },
    }
]

# --- Database -----------------------------------------------------------------------------
DATABASES = {"default": database_config("DATABASE_URL", str(VAR_DIR / "tollgate.sqlite3"))}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    VAR_DIR.mkdir(parents=True, exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache, Celery broker, pub/sub -----------------------------------------------------
REDIS_URL = env_url("REDIS_URL", schemes=("redis", "rediss", "unix"))
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "tollgate",
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "tollgate_cache",
        }
    }

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL or "filesystem://"
if not REDIS_URL:
    _queue_dir = VAR_DIR / "celery" / "queue"
    _queue_dir.mkdir(parents=True, exist_ok=True)
    (VAR_DIR / "celery" / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(VAR_DIR / "celery" / "processed"),
        "store_processed": False,
        # kombu's default is ./control: exchange files in whatever directory a process started.
        "control_folder": str(VAR_DIR / "celery" / "control"),
    }
else:
    # A task whose worker died (killed, machine lost) is not acknowledged (acks late): Redis
    # hands it to another worker after this many seconds. Longer than any task's countdown.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=5),
        # Look for such tasks every unacked_restore_interval (10 s), not every 10th look.
        "unacked_restore_throttle": 1,
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 300, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = max(5, CELERY_TASK_TIME_LIMIT - 30)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
# Workers log through Django's LOGGING (JSON lines with request ids), not Celery's own setup.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = beat_schedule(
    audit_verify=timedelta(minutes=env_int("AUDIT_VERIFY_MINUTES", 60, minimum=1)))

# --- Registry: tool sync ----------------------------------------------------------------------
# One deadline for talking to a server (connect, initialize, every tools/list page).
REGISTRY_SYNC_TIMEOUT = env_int("REGISTRY_SYNC_TIMEOUT", 30, minimum=1)
# A server listing more tools than this is refused as a whole (nothing is recorded).
REGISTRY_MAX_TOOLS = env_int("REGISTRY_MAX_TOOLS", 5000, minimum=1)
# The worker gives up on a run after these (the soft limit fails it cleanly; the hard one kills).
REGISTRY_SYNC_SOFT_TIME_LIMIT = REGISTRY_SYNC_TIMEOUT + 60
REGISTRY_SYNC_TIME_LIMIT = REGISTRY_SYNC_TIMEOUT + 90
# A run no worker picked up within this many seconds is failed with "not started".
REGISTRY_SYNC_QUEUE_EXPIRY = env_int("REGISTRY_SYNC_QUEUE_EXPIRY", 900, minimum=60)
# A sync that asks a server's gateways to report (stdio servers) fails after this many seconds
# without a report.
REGISTRY_GATEWAY_REPORT_GRACE = env_int("REGISTRY_GATEWAY_REPORT_GRACE", 600, minimum=60)
# Operator allow-list (never tenant data): absolute paths of stdio server commands a worker may
# run to list their tools (registry/stdio_sandbox.py). Empty: stdio servers are discovered by
# their gateways only, and the control plane runs no command a tenant supplied.
STDIO_DISCOVERY_COMMANDS = env_absolute_paths("STDIO_DISCOVERY_COMMANDS")
if STDIO_DISCOVERY_COMMANDS:  # no same-uid child may read this process's environment
    hide_environment()

# --- Outbound connections (governance/outbound.py: the SSRF guard) ----------------------------
# MCP server, webhook, HEC and syslog targets that are (or resolve to) loopback, link-local,
# metadata, unspecified or multicast addresses are refused unless inside one of these CIDRs.
OUTBOUND_ALLOWED_NETWORKS = env_networks(
    "OUTBOUND_ALLOWED_NETWORKS", [],
    problem="is not a network (use CIDRs such as 127.0.0.0/8, comma-separated)")

# --- Bundles and gateways (DESIGN.md §5) ------------------------------------------------------
# Secrets at rest (governance/secrets.py): Fernet keys, comma-separated; the first encrypts, all
# decrypt, so the key can be rotated (`manage.py rotate_bundle_key --reencrypt`). They encrypt the
# private halves of the tenants' bundle signing keys, notification channel URLs and secrets, and
# exporter tokens. BUNDLE_KEY_ENCRYPTION_KEYS is the old name of the same setting, still accepted;
# both set to different values is a start-up error.
SECRET_ENCRYPTION_KEYS = env_fernet_keys(
    "SECRET_ENCRYPTION_KEYS", "BUNDLE_KEY_ENCRYPTION_KEYS", debug=DEBUG)
# A bundle expires this long after it is issued; it is re-issued after 40 % of that.
BUNDLE_TTL_SECONDS = env_int("BUNDLE_TTL_SECONDS", 24 * 3600, minimum=600)
# A burst of registry edits within this many milliseconds becomes one build (the first edit of a
# burst is built this long after it commits; edits made during a build schedule the next one).
BUNDLE_DEBOUNCE_MS = env_int("BUNDLE_DEBOUNCE_MS", 200, minimum=0)
# Longest `Prefer: wait=N` honoured (DESIGN.md caps it at 300).
BUNDLE_MAX_WAIT_SECONDS = min(300, env_int("BUNDLE_MAX_WAIT_SECONDS", 300, minimum=1))
# A rotated-in key is published (pending) this long before it signs: gateways refresh their
# JWKS within one maximum poll interval, so a shorter lead breaks DESIGN §5's guarantee that no
# gateway meets a bundle signed by a key it has not fetched yet.
BUNDLE_KEY_PUBLISH_LEAD_SECONDS = env_int(
    "BUNDLE_KEY_PUBLISH_LEAD_SECONDS", 2 * BUNDLE_MAX_WAIT_SECONDS, minimum=0
)
if BUNDLE_KEY_PUBLISH_LEAD_SECONDS < BUNDLE_MAX_WAIT_SECONDS:
    raise ImproperlyConfigured(
        f"BUNDLE_KEY_PUBLISH_LEAD_SECONDS: must be at least BUNDLE_MAX_WAIT_SECONDS "
        f"({BUNDLE_MAX_WAIT_SECONDS}), got {BUNDLE_KEY_PUBLISH_LEAD_SECONDS}: a rotated-in key "
        "must be published at least one maximum poll interval before it signs, or gateways "
        "refuse the bundles it signs until they fetch it"
    )
# Where each web process keeps its local copy of current bundles.
BUNDLE_LOCAL_DIR = Path(env_str("BUNDLE_LOCAL_DIR", str(VAR_DIR / "bundles")))
# Set to an internal nginx location (e.g. /_bundles/) to let the proxy send bundle bodies from
# BUNDLE_LOCAL_DIR via X-Accel-Redirect after the app has authenticated the gateway.
BUNDLE_ACCEL_REDIRECT = env_str("BUNDLE_ACCEL_REDIRECT")
# Requests per minute one gateway may make to the gateway API (429 beyond).
GATEWAY_RATE_LIMIT_PER_MINUTE = env_int("GATEWAY_RATE_LIMIT_PER_MINUTE", 600, minimum=1)
# Unknown bearer tokens (admin API and gateway API) one client address may present per minute
# before it gets 429 (governance/tenancy/token_guard.py).
TOKEN_FAILURE_LIMIT_PER_MINUTE = env_int("TOKEN_FAILURE_LIMIT_PER_MINUTE", 20, minimum=1)
# A gateway not heard from for this long is shown as stale on the fleet page.
GATEWAY_STALE_SECONDS = env_int("GATEWAY_STALE_SECONDS", 600, minimum=30)
# Largest request body the gateway API accepts (status reports; 413 beyond).
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)

# --- Approvals and escalations (DESIGN.md §5, §6) --------------------------------------------
# Escalations one agent may create per minute; beyond, 429 and one alert per minute (a flood is
# refused, not queued).
ESCALATION_RATE_LIMIT_PER_MINUTE = env_int("ESCALATION_RATE_LIMIT_PER_MINUTE", 10, minimum=1)
# Lifetime of the signed receipt an approved escalation answers with (minted on each read).
ESCALATION_RECEIPT_SECONDS = env_int("ESCALATION_RECEIPT_SECONDS", 120, minimum=10)
# Longest an admin's break-glass self-grant may last.
BREAK_GLASS_MAX_MINUTES = env_int("BREAK_GLASS_MAX_MINUTES", 60, minimum=1)

# --- Notifications (notifications) ------------------------------------------------
# E-mail channels send through Django's e-mail backend (SMTP unless EMAIL_BACKEND says otherwise).
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Tollgate <tollgate@localhost>")
# One HTTP attempt of a Slack or webhook delivery gives up after this many seconds.
NOTIFICATION_HTTP_TIMEOUT = env_int("NOTIFICATION_HTTP_TIMEOUT", 5, minimum=1)
# A delivery is tried this often (backoff 30 s, 1, 2, 4, 8 min …) before it is marked failed.
NOTIFICATION_MAX_ATTEMPTS = env_int("NOTIFICATION_MAX_ATTEMPTS", 6, minimum=1)

# --- Decision logs (decision_logs; DESIGN.md §5 POST logs) ---------------------------
# Largest request body POST /api/v1/gateway/logs accepts, as sent (gzip or not; 413 beyond).
DECISION_LOG_MAX_BODY_BYTES = env_int("DECISION_LOG_MAX_BODY_BYTES", 8 * 1024 * 1024,
                                      minimum=1024)
# Largest body once decompressed: inflating stops here (413), so a gzip bomb costs nothing.
DECISION_LOG_MAX_DECOMPRESSED_BYTES = env_int("DECISION_LOG_MAX_DECOMPRESSED_BYTES",
                                              64 * 1024 * 1024, minimum=1024)
# Most events one upload may carry (413 beyond).
DECISION_LOG_MAX_EVENTS = env_int("DECISION_LOG_MAX_EVENTS", 10_000, minimum=1)
# Rows per INSERT statement (PostgreSQL; SQLite is held to its bound-parameter limit).
DECISION_LOG_INSERT_ROWS = env_int("DECISION_LOG_INSERT_ROWS", 5000, minimum=1)
# Rows the hourly retention purge deletes per statement (short locks, bounded WAL per step).
DECISION_LOG_PURGE_CHUNK = env_int("DECISION_LOG_PURGE_CHUNK", 10_000, minimum=1)

# --- SIEM export -----------------------------------------------------------------------------
# Exporters (exports). JSON lines exporters write only to a file name inside
# EXPORT_FILE_DIR/<tenant slug>/.
EXPORT_FILE_DIR = Path(env_str("EXPORT_FILE_DIR", str(VAR_DIR / "exports")))
# Rows per batch (one file append, one TCP connection, one HEC request); one run sends at most
# EXPORT_MAX_BATCHES_PER_RUN batches, then queues the next run.
EXPORT_BATCH_SIZE = env_int("EXPORT_BATCH_SIZE", 500, minimum=1)
EXPORT_MAX_BATCHES_PER_RUN = env_int("EXPORT_MAX_BATCHES_PER_RUN", 20, minimum=1)
# Decision logs are exported only once received this long ago: concurrent uploads can commit
# ids out of order, and the cursor must never pass a row that has yet to appear below it.
EXPORT_SETTLE_SECONDS = env_int("EXPORT_SETTLE_SECONDS", 5, minimum=0)
# One send (and "Test connection") gives up after this many seconds.
EXPORT_TIMEOUT_SECONDS = env_int("EXPORT_TIMEOUT_SECONDS", 10, minimum=1)
EXPORT_TEST_TIMEOUT_SECONDS = env_int("EXPORT_TEST_TIMEOUT_SECONDS", 5, minimum=1)
# After a failure the next run waits BASE, 2×BASE, 4×BASE … seconds, at most MAX.
EXPORT_RETRY_BASE_SECONDS = env_int("EXPORT_RETRY_BASE_SECONDS", 30, minimum=1)
EXPORT_RETRY_MAX_SECONDS = env_int("EXPORT_RETRY_MAX_SECONDS", 900, minimum=1)
# Largest syslog datagram (RFC 5426: receivers should take 2048 bytes); longer ones are cut.
EXPORT_SYSLOG_UDP_MAX_BYTES = min(65507, env_int("EXPORT_SYSLOG_UDP_MAX_BYTES", 2048,
                                                 minimum=480))

# --- Alerts (alerts) --------------------------------------------------------------
# Decision logs reach Tollgate minutes late (OPA uploads them in batches): the burst-of-denials
# rule also looks at denials stamped this much before its window, so a late batch still counts.
ALERTS_DECISION_LOG_DELAY_MINUTES = env_int("ALERTS_DECISION_LOG_DELAY_MINUTES", 15, minimum=0)

# --- Evidence packs (evidence) ----------------------------------------------------
# Longest period one pack covers, in days (both ends included).
EVIDENCE_MAX_PERIOD_DAYS = env_int("EVIDENCE_MAX_PERIOD_DAYS", 366, minimum=1)
# Attempts of one build (each starts from nothing) before the pack is marked failed.
EVIDENCE_BUILD_ATTEMPTS = env_int("EVIDENCE_BUILD_ATTEMPTS", 3, minimum=1)
# Seconds a build may take on the worker (soft limit 30 s earlier: recorded as failed).
EVIDENCE_TIME_LIMIT = env_int("EVIDENCE_TIME_LIMIT", 1800, minimum=60)
# Packs one tenant may have queued or running at the same time.
EVIDENCE_MAX_OPEN_PER_TENANT = env_int("EVIDENCE_MAX_OPEN_PER_TENANT", 3, minimum=1)
# Rows of each table shown in report.html (the CSV and JSON files always hold every row).
EVIDENCE_REPORT_MAX_ROWS = env_int("EVIDENCE_REPORT_MAX_ROWS", 500, minimum=10)

# --- Shadow replay (decision_logs/replay.py) ---------------------------------------------
# Longest window one replay covers, in days; replays queued or running per tenant; changed
# (and not replayable) decisions kept per run (the counts always cover all); seconds one run
# may take on the worker.
REPLAY_MAX_DAYS = env_int("REPLAY_MAX_DAYS", 90, minimum=1)
REPLAY_MAX_OPEN_PER_TENANT = env_int("REPLAY_MAX_OPEN_PER_TENANT", 3, minimum=1)
REPLAY_MAX_CHANGES = env_int("REPLAY_MAX_CHANGES", 500, minimum=10)
REPLAY_TIME_LIMIT = env_int("REPLAY_TIME_LIMIT", 1800, minimum=60)

# --- Authentication -------------------------------------------------------------------------
OIDC_RP_CLIENT_ID = env_str("OIDC_RP_CLIENT_ID")
OIDC_ENABLED = bool(OIDC_RP_CLIENT_ID)
_OIDC_SCHEMES = ("https", "http")
if OIDC_ENABLED:
    OIDC_RP_CLIENT_SECRET = env_str("OIDC_RP_CLIENT_SECRET")
    if not OIDC_RP_CLIENT_SECRET:
        raise ImproperlyConfigured("OIDC_RP_CLIENT_SECRET: required when OIDC_RP_CLIENT_ID is set")
    OIDC_OP_ISSUER = env_required_url(
        "OIDC_OP_ISSUER", schemes=_OIDC_SCHEMES, required_by="OIDC_RP_CLIENT_ID")
    OIDC_OP_AUTHORIZATION_ENDPOINT = env_required_url(
        "OIDC_OP_AUTHORIZATION_ENDPOINT", schemes=_OIDC_SCHEMES, required_by="OIDC_RP_CLIENT_ID")
    OIDC_OP_TOKEN_ENDPOINT = env_required_url(
        "OIDC_OP_TOKEN_ENDPOINT", schemes=_OIDC_SCHEMES, required_by="OIDC_RP_CLIENT_ID")
    OIDC_OP_USER_ENDPOINT = env_required_url(
        "OIDC_OP_USER_ENDPOINT", schemes=_OIDC_SCHEMES, required_by="OIDC_RP_CLIENT_ID")
    OIDC_OP_JWKS_ENDPOINT = env_required_url(
        "OIDC_OP_JWKS_ENDPOINT", schemes=_OIDC_SCHEMES, required_by="OIDC_RP_CLIENT_ID")
    OIDC_OP_LOGOUT_ENDPOINT = env_url("OIDC_OP_LOGOUT_ENDPOINT", schemes=_OIDC_SCHEMES)
OIDC_RP_SIGN_ALGO = "RS256"
OIDC_USE_PKCE = True
OIDC_USE_NONCE = True
OIDC_RP_SCOPES = env_str("OIDC_RP_SCOPES", "openid email profile groups")
OIDC_GROUPS_CLAIM = env_str("OIDC_GROUPS_CLAIM", "groups")
OIDC_STORE_ID_TOKEN = True
OIDC_TIMEOUT = env_int("OIDC_TIMEOUT", 10, minimum=1)
OIDC_PROVIDER_NAME = env_str("OIDC_PROVIDER_NAME", "your identity provider")
# Session re-validation (governance.tenancy.revalidation): an OIDC session is re-checked with the
# IdP (refresh-token grant, then userinfo) at its first request after this many seconds; 0 turns
# it off. When the IdP cannot be reached the session is kept, for at most
# OIDC_RECHECK_GRACE_SECONDS after the IdP last vouched for it (then it ends: fail closed).
OIDC_RECHECK_SECONDS = env_int("OIDC_RECHECK_SECONDS", 300, minimum=0)
OIDC_RECHECK_GRACE_SECONDS = env_int("OIDC_RECHECK_GRACE_SECONDS", 3600, minimum=0)
# Back-channel logout: a logout token's iat may be at most this many seconds old (a minute
# ahead for clock skew); its jti is remembered longer than that, so a replay is refused.
OIDC_LOGOUT_TOKEN_MAX_AGE = env_int("OIDC_LOGOUT_TOKEN_MAX_AGE", 300, minimum=30)
LOGIN_REDIRECT_URL_FAILURE = f"{SCRIPT_NAME}/login/?error=sso"
# SCIM provisioning (scim/): a SCIM User's externalId is the IdP subject, matched with this
# issuer to the same (issuer, subject) identity an OIDC login finds. Without OIDC, a fixed URN.
SCIM_IDENTITY_ISSUER = env_str(
    "SCIM_IDENTITY_ISSUER", OIDC_OP_ISSUER if OIDC_ENABLED else "urn:tollgate:scim")
# The most resources one SCIM list or search answers (ServiceProviderConfig filter.maxResults).
SCIM_MAX_RESULTS = env_int("SCIM_MAX_RESULTS", 200, minimum=1)

AUTHENTICATION_BACKENDS = (
    ["governance.tenancy.oidc.TollgateOIDCBackend"]
    if OIDC_ENABLED
    else [
        # Local passwords exist only without OIDC (the demo); axes throttles them.
        "axes.backends.AxesStandaloneBackend",
        "django.contrib.auth.backends.ModelBackend",
    ]
) + ["guardian.backends.ObjectPermissionBackend"]

LOGIN_URL = f"{SCRIPT_NAME}/login/"
LOGIN_REDIRECT_URL = f"{SCRIPT_NAME}/"
LOGOUT_REDIRECT_URL = f"{SCRIPT_NAME}/login/"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
# The one trusted-proxy setting (DESIGN.md §3): how many reverse proxies, each appending to
# X-Forwarded-For, stand between clients and the web process. Every use of a client address
# (sign-in lockouts, token brute-force limits, audit IPs, /metrics networks, logs) goes through
# governance.tenancy.middleware.client_ip, which believes exactly that many hops; the ASGI server
# never rewrites the address itself (scripts/uvicorn-flags: --no-proxy-headers).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0)
AXES_CLIENT_IP_CALLABLE = "governance.tenancy.middleware.client_ip"

ANONYMOUS_USER_NAME = None  # django-guardian: no anonymous user object
GUARDIAN_RAISE_403 = False

# --- Security -------------------------------------------------------------------------------
SECURE_COOKIES = env_bool("SECURE_COOKIES", not DEBUG)
SESSION_COOKIE_SECURE = SECURE_COOKIES
CSRF_COOKIE_SECURE = SECURE_COOKIES
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
# Lax, not Strict: the IdP's redirect back to the OIDC callback is a cross-site navigation.
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env_int("SESSION_HOURS", 8, minimum=1) * 3600
# Under a path prefix the cookies are scoped to it; __Host- needs Path=/, so there they are
# __Secure- (still Secure-only and host-only: no Domain attribute is ever set).
SESSION_COOKIE_PATH = CSRF_COOKIE_PATH = SCRIPT_NAME or "/"
_COOKIE_PREFIX = "" if not SECURE_COOKIES else "__Secure-" if SCRIPT_NAME else "__Host-"
SESSION_COOKIE_NAME = f"{_COOKIE_PREFIX}tollgate_session"
CSRF_COOKIE_NAME = f"{_COOKIE_PREFIX}tollgate_csrf"
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# Matched against the path without its leading slash, prefix included (SecurityMiddleware).
_UNPREFIXED = re.escape(SCRIPT_NAME.lstrip("/") + "/") if SCRIPT_NAME else ""
SECURE_REDIRECT_EXEMPT = [rf"^{_UNPREFIXED}healthz$", rf"^{_UNPREFIXED}readyz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
if env_bool("BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Where login/logout may send the browser (the IdP), added to CSP form-action by the middleware.
CSP_FORM_ACTION_EXTRA = [
    origin
    for origin in (
        env_str("OIDC_OP_AUTHORIZATION_ENDPOINT"),
        env_str("OIDC_OP_LOGOUT_ENDPOINT"),
    )
    if origin
]

# --- Metrics and dashboard (observability) -----------------------------------------
# /metrics answers a request bearing `Authorization: Bearer <METRICS_TOKEN>` from anywhere, and a
# request without Authorization from these networks (CIDR list; empty: token only). A request
# forwarded by a proxy (X-Forwarded-For) gets network access only with TRUSTED_PROXY_COUNT set.
METRICS_TOKEN = env_str("METRICS_TOKEN")


METRICS_ALLOWED_NETWORKS = [
    ipaddress.ip_network(item, strict=False)
    for item in env_networks("METRICS_ALLOWED_NETWORKS", ["127.0.0.1/32", "::1/128"],
                             problem="is not an IP network (e.g. 10.0.0.0/8 or ::1/128)")
]
# A local scraper speaks plain HTTP, like the liveness probe: no redirect to HTTPS.
SECURE_REDIRECT_EXEMPT = [*SECURE_REDIRECT_EXEMPT, rf"^{_UNPREFIXED}metrics$"]

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "governance.tenancy.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["governance.tenancy.api.errors.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "governance.tenancy.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "governance.tenancy.api.schema.TenantAutoSchema",
    "EXCEPTION_HANDLER": "governance.tenancy.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tollgate API",
    "DESCRIPTION": "Admin REST API (/api/v1/t/<tenant>/). The gateway API (/api/v1/gateway/) "
                   "is described in bundles/gateway_openapi.yaml and "
                   "docs/gateway-contract.md.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and the docs are for signed-in people and token holders only (anonymous → 401).
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # No internet and a strict CSP: Swagger UI and Redoc come from drf-spectacular-sidecar.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several models have a ``status`` (and two a risk): one named enum per choice set.
    "ENUM_NAME_OVERRIDES": {
        "ServerStatusEnum": "registry.models.McpServer.Status",
        "SyncStatusEnum": "registry.models.ServerSync.Status",
        "ToolStatusEnum": "registry.models.Tool.Status",
        "AgentStatusEnum": "registry.models.Agent.Status",
        "GrantStatusEnum": "registry.models.Grant.Status",
        "RiskEnum": "registry.models.Risk",
        "GatewayStatusEnum": "bundles.models.Gateway.Status",
        "SigningKeyStateEnum": "bundles.models.SigningKey.State",
        "GatewayTokenStateEnum": "bundles.api.serializers.TOKEN_STATES",
        # The API token kinds keep their name now that channels have kinds too.
        "KindEnum": "governance.tenancy.models.ApiToken.Kind",
        "ChannelKindEnum": "notifications.models.Channel.Kind",
        "ExporterKindEnum": "exports.models.Exporter.Kind",
        "PrincipalKindEnum": "registry.models.AgentPrincipal.Kind",
        "DeliveryStatusEnum": "notifications.models.Delivery.Status",
        # A member's role and an approval stage's roles are the same choice set.
        "RoleEnum": "governance.tenancy.roles.Role",
        # Access requests and escalations share their states.
        "ApprovalStatusEnum": "approvals.models.Decidable.Status",
        # Alerts: the rule kinds, severities and alert states (alerts).
        "AlertKindEnum": "alerts.models.Kind",
        "AlertSeverityEnum": "alerts.models.Severity",
        "AlertStatusEnum": "alerts.models.Alert.Status",
        # A gateway's decision (allow / deny / escalate), not an approver's.
        "DecisionOutcomeEnum": "decision_logs.models.Outcome",
        "ApprovalOutcomeEnum": "approvals.models.ApprovalDecision.Outcome",
        # Worker jobs (evidence packs, shadow replays) share their states.
        "JobStatusEnum": "decision_logs.models.ReplayRun.Status",
    },
}
API_TOKEN_MAX_DAYS = env_int("API_TOKEN_MAX_DAYS", 365, minimum=1)
# An invitation into a tenant is good for this many days (then it expires, unused).
INVITATION_EXPIRY_DAYS = env_int("INVITATION_EXPIRY_DAYS", 14, minimum=1)

# --- Static files, i18n ---------------------------------------------------------------------
STATIC_URL = f"{SCRIPT_NAME}/static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
WHITENOISE_USE_FINDERS = DEBUG
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- Logging --------------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL: unknown level {LOG_LEVEL!r}")
# One format: every line a process writes is JSON (uvicorn's own through scripts/uvicorn-flags'
# --log-config scripts/uvicorn-logging.json, Python warnings through LOGGING_CONFIG).
LOGGING_CONFIG = "governance.logging.configure"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request": {"()": "governance.logging.RequestContextFilter"}},
    "formatters": {"json": {"()": "governance.logging.JsonFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request"]}
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "axes": {"level": "WARNING"},
                "httpx2": {"level": "WARNING"},
                # Django's default sends warnings to its plain-text console handler (DEBUG only).
                "py.warnings": {"handlers": ["console"], "propagate": False}},
}
