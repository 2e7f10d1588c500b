"""Settings, read from the environment only (see README "Configuration")."""

import tomllib
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
# One version for the code, the OpenAPI document and the images: pyproject.toml's.
VERSION: str = tomllib.loads((BASE_DIR / "pyproject.toml").read_text())["project"]["version"]

env = environ.Env()

DEBUG = env.bool("DEBUG", default=False)


def _required(name: str, debug_default: str) -> str:
    """A setting a deployment must choose itself. Only DEBUG (a developer's machine) falls
    back to a default; `make run` and `make test` set their own (see devstack)."""
    value: str = env.str(name, default="")
    if value:
        return value
    if DEBUG:
        return debug_default
    raise ImproperlyConfigured(
        f"{name} is not set. Set it in the environment (docs/deploy.md lists every setting); "
        "DEBUG=true runs with development defaults instead."
    )


SECRET_KEY = _required("SECRET_KEY", "dev-only-insecure-secret-key-never-use-in-production")
ALLOWED_HOSTS = [host.strip() for host in _required("ALLOWED_HOSTS", "*").split(",")]
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
PORT = env.int("PORT", default=8000)

# --- Behind a TLS-terminating proxy (docs/deploy.md) ------------------------------------------
# "HTTP_X_FORWARDED_PROTO,https": trust the proxy's word that the client spoke https. Set it
# only behind a proxy that always sets (or strips) that header.
_PROXY_SSL_HEADER = env.list("SECURE_PROXY_SSL_HEADER", default=[])
SECURE_PROXY_SSL_HEADER = tuple(_PROXY_SSL_HEADER) if len(_PROXY_SSL_HEADER) == 2 else None
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
# A load balancer's health checks speak plain http inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Client addresses (login throttling, the operators' network) come from X-Forwarded-For only
# when the request arrives from one of these proxies (CIDRs).
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])
# /metrics and the details of /readyz are for operators: callers from these networks, or
# with `Authorization: Bearer <OPS_TOKEN>` when it is set.
OPS_NETWORKS = env.list(
    "OPS_NETWORKS",
    default=["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"],
)
OPS_TOKEN = env.str("OPS_TOKEN", default="")

INSTALLED_APPS = [
    "workspace.apps.FieldsyncAdminConfig",  # django.contrib.admin, as the dispatchers see it
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "common",
    "accounts",
    "workorders",
    "operations",
    "conflicts",
    "media",
    "workspace",
]

MIDDLEWARE = [
    # First, so every log line of the request (the body deadline's included) carries its id.
    "common.logging.RequestIdMiddleware",
    # Around all the rest: every body is read under a deadline, and a refused one is drained
    # (within a budget) before the answer goes out, whatever answered.
    "common.body.BodyDeadlineMiddleware",
    # Counts and times every answer, the 503s and static files below it included.
    "common.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Outside every view, so a database outage anywhere below answers 503, not 500.
    "common.middleware.DatabaseUnavailableMiddleware",
    # Serves the admin's static files from gunicorn, so `make run` needs no web server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "syncserver.urls"
WSGI_APPLICATION = "syncserver.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The project's own pages (the API docs); each app keeps its templates itself.
        "DIRS": [BASE_DIR / "syncserver" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db_url("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/fieldsync"),
}
DATABASES["default"]["ENGINE"] = "django.db.backends.postgresql"
# One connection pool per process (psycopg_pool, through Django): a process never holds more
# than DB_POOL_MAX_SIZE connections, however many threads it runs, so Postgres' connections
# are counted per process, not per thread: a gunicorn worker of 64 threads takes at most
# DB_POOL_MAX_SIZE. The pool opens a connection only for a thread that waits for one (and
# keeps DB_POOL_MIN_SIZE open when idle; with 1 or more it would open that many and one
# for the first waiter at once), so a Celery pool process or beat, one thread each, holds
# one. A request holds one from its first query to its end (CONN_MAX_AGE 0 hands it back
# then), never while it waits on a phone (media.services.locks). A request that finds every
# connection busy waits up to DB_POOL_TIMEOUT for one, then answers 503 service_unavailable
# with Retry-After (common.middleware): on 2 cores more connections only queue in Postgres
# (docs/deploy.md has the arithmetic for max_connections).
DB_POOL_MIN_SIZE = env.int("DB_POOL_MIN_SIZE", default=0)
DB_POOL_MAX_SIZE = env.int("DB_POOL_MAX_SIZE", default=8)
DB_POOL_TIMEOUT = env.float("DB_POOL_TIMEOUT", default=10.0)
DATABASES["default"]["CONN_MAX_AGE"] = 0
# Checked as the pool hands it out: a connection Postgres dropped (a restart) is replaced.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
    "min_size": DB_POOL_MIN_SIZE,
    "max_size": max(DB_POOL_MIN_SIZE, DB_POOL_MAX_SIZE, 1),
    "timeout": DB_POOL_TIMEOUT,
}

# The hot paths' fixed statements run as prepared statements (common.db.fetch_prepared):
# planned once per connection, not on every request. Turn off behind PgBouncer in
# transaction mode older than 1.21 (it cannot keep a prepared statement between transactions).
DB_PREPARED_STATEMENTS = env.bool("DB_PREPARED_STATEMENTS", default=True)
if DB_PREPARED_STATEMENTS:
    # psycopg prepares nothing with a threshold of None (Django's default); with a number it
    # prepares what is asked for (Django's own cursors bind on the client and never are) and
    # never anything else on its own.
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = 2**31 - 1

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

# Sign-in throttling (API token and workspace login): after this many failures within
# LOGIN_LOCKOUT_SECONDS, a username (or a client address) waits out the rest of the window.
LOGIN_FAILURES_PER_USERNAME = env.int("LOGIN_FAILURES_PER_USERNAME", default=5)
LOGIN_FAILURES_PER_ADDRESS = env.int("LOGIN_FAILURES_PER_ADDRESS", default=50)
LOGIN_LOCKOUT_SECONDS = env.int("LOGIN_LOCKOUT_SECONDS", default=900)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Redis / Celery -------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_DEFAULT_QUEUE = "fieldsync"
# Pool processes per worker (`celery worker` without -c): a fixed number, not the host's CPU
# count, so the Postgres connections a worker takes (one per process) are known in advance.
CELERY_WORKER_CONCURRENCY = env.int("CELERY_WORKER_CONCURRENCY", default=2)
# Publishing never blocks a push for long: if Redis is down, the op is already committed
# and the periodic sweep rings the worker later.
CELERY_BROKER_CONNECTION_TIMEOUT = 2.0
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}
SWEEP_INTERVAL_SECONDS = env.float("SWEEP_INTERVAL_SECONDS", default=15.0)
CELERY_BEAT_SCHEDULE = {
    "sweep-pending-ops": {
        "task": "operations.tasks.sweep_pending_ops_task",
        "schedule": timedelta(seconds=SWEEP_INTERVAL_SECONDS),
    },
    "compact-history": {
        "task": "operations.tasks.compact_history_task",
        "schedule": timedelta(hours=6),
    },
}

# --- Object storage (S3-compatible) ---------------------------------------------------------
S3_ENDPOINT_URL = env.str("S3_ENDPOINT_URL", default="http://127.0.0.1:8333")
S3_BUCKET = env.str("S3_BUCKET", default="fieldsync")
S3_REGION = env.str("S3_REGION", default="us-east-1")
AWS_ACCESS_KEY_ID = env.str("AWS_ACCESS_KEY_ID", default="fieldsync")
AWS_SECRET_ACCESS_KEY = env.str("AWS_SECRET_ACCESS_KEY", default="fieldsync-secret")
# Whether requests to the object store carry a sha256 of their payload in their signature.
# Off: a body we send carries a CRC32 the store checks instead (media.storage), a cheaper
# sum, and one SeaweedFS verifies (it takes a signed payload's sha256 on trust).
S3_SIGN_PAYLOAD = env.bool("S3_SIGN_PAYLOAD", default=False)

# Where phones fetch attachments, when it differs from S3_ENDPOINT_URL (presigned download
# URLs are signed for this host).
S3_PUBLIC_ENDPOINT_URL = env.str("S3_PUBLIC_ENDPOINT_URL", default="")

# --- Uploads (tus) and attachments -----------------------------------------------------------
_MiB = 1024 * 1024
# Unfinished uploads idle this long are expired (multipart aborted, bytes deleted).
UPLOADS_EXPIRY_SECONDS = env.int("UPLOADS_EXPIRY_SECONDS", default=7 * 24 * 3600)
# Preferred multipart part size; raised per upload so no file needs more than 10,000 parts.
UPLOADS_PART_SIZE = env.int("UPLOADS_PART_SIZE", default=8 * _MiB)
UPLOADS_MAX_SIZE = {
    "photo": env.int("UPLOADS_MAX_SIZE_PHOTO", default=50 * _MiB),
    "video": env.int("UPLOADS_MAX_SIZE_VIDEO", default=2048 * _MiB),
    "signature": env.int("UPLOADS_MAX_SIZE_SIGNATURE", default=10 * _MiB),
    "document": env.int("UPLOADS_MAX_SIZE_DOCUMENT", default=100 * _MiB),
}
UPLOADS_CONTENT_TYPES = {
    "photo": env.list(
        "UPLOADS_CONTENT_TYPES_PHOTO",
        default=["image/jpeg", "image/png", "image/heic", "image/heif", "image/webp"],
    ),
    "video": env.list(
        "UPLOADS_CONTENT_TYPES_VIDEO",
        default=["video/mp4", "video/quicktime", "video/3gpp", "video/webm"],
    ),
    "signature": env.list(
        "UPLOADS_CONTENT_TYPES_SIGNATURE", default=["image/png", "image/jpeg", "image/svg+xml"]
    ),
    "document": env.list(
        "UPLOADS_CONTENT_TYPES_DOCUMENT",
        default=["application/pdf", "image/jpeg", "image/png", "text/plain"],
    ),
}
# A PATCH finding its upload locked waits this long for the holder before answering 423.
UPLOADS_LOCK_WAIT_SECONDS = env.float("UPLOADS_LOCK_WAIT_SECONDS", default=5.0)
# A body that sends nothing for this long is treated as a vanished phone: what arrived is
# kept and the upload's lease is given back for the phone's next attempt.
UPLOADS_READ_TIMEOUT_SECONDS = env.float("UPLOADS_READ_TIMEOUT_SECONDS", default=30.0)
# The writing request's lease on its upload lapses this long after its last renewal (it
# renews every third of it, and a wait for the phone lasts at most the read timeout): what a
# process killed mid-upload leaves locked, for at most this long.
UPLOADS_LOCK_LEASE_SECONDS = env.float(
    "UPLOADS_LOCK_LEASE_SECONDS", default=max(60.0, 2 * UPLOADS_READ_TIMEOUT_SECONDS)
)
# A verification claimed longer ago than this is assumed dead and is handed out again.
UPLOADS_VERIFY_LEASE_SECONDS = env.float("UPLOADS_VERIFY_LEASE_SECONDS", default=300.0)
UPLOADS_DOWNLOAD_URL_SECONDS = env.int("UPLOADS_DOWNLOAD_URL_SECONDS", default=300)
CELERY_BEAT_SCHEDULE["sweep-uploads"] = {
    "task": "media.tasks.sweep_uploads_task",
    "schedule": timedelta(seconds=SWEEP_INTERVAL_SECONDS),
}

# --- Request bodies (common.body) -------------------------------------------------------------
# Every body must arrive within BODY_GRACE_SECONDS plus its length at this minimum rate (8 KiB/s
# is 64 kbit/s: a bad cellular link still makes it; a client trickling bytes does not).
BODY_GRACE_SECONDS = env.float("BODY_GRACE_SECONDS", default=30.0)
BODY_MIN_BYTES_PER_SECOND = env.int("BODY_MIN_BYTES_PER_SECOND", default=8 * 1024)
# What a refused request sent is read and dropped up to this size and time, so the client
# reads the refusal instead of a reset connection; past it the connection is closed.
REFUSED_BODY_DRAIN_BYTES = env.int("REFUSED_BODY_DRAIN_BYTES", default=16 * _MiB)
REFUSED_BODY_DRAIN_SECONDS = env.float("REFUSED_BODY_DRAIN_SECONDS", default=5.0)

# --- Sync behaviour -------------------------------------------------------------------------
# An op whose predecessor (seq - 1) is still missing after this long is applied anyway; the
# skipped seqs are shown in the device's health so one lost op never freezes a phone.
SYNC_GAP_TIMEOUT_SECONDS = env.float("SYNC_GAP_TIMEOUT_SECONDS", default=600.0)
# Pending ops older than this are re-rung by the sweep (a dead worker or a lost message).
SYNC_STALE_PENDING_SECONDS = env.float("SYNC_STALE_PENDING_SECONDS", default=10.0)
# History is partitioned by calendar month (operations.partitions): a month of the op log
# and of the change feed is dropped once all of it is older than this (so a row lives 1-2
# months longer at most); cursors from before a dropped month get 410 cursor_expired.
SYNC_RETENTION_DAYS = env.int("SYNC_RETENTION_DAYS", default=90)
# The event log is kept for ever unless this is set (the records are rebuilt from it).
SYNC_EVENT_RETENTION_DAYS = env.int("SYNC_EVENT_RETENTION_DAYS", default=0)
# Months of partitions made ahead of time (beat makes them with the retention, every 6 h).
SYNC_PARTITIONS_AHEAD = env.int("SYNC_PARTITIONS_AHEAD", default=1)
# Within this long of a month's edge, pushes of one device are serialised (a retry stamped
# by another host's clock might land in the other month's partition): more than the clock
# skew between hosts plus the longest a push can run.
SYNC_PARTITION_EDGE_SECONDS = env.float("SYNC_PARTITION_EDGE_SECONDS", default=300.0)
SYNC_MAX_OPS_PER_PUSH = 500
SYNC_MAX_PUSH_BYTES = 1024 * 1024
# An apply round (one transaction) takes up to SYNC_APPLY_BATCH ops of each of up to
# SYNC_APPLY_DEVICES devices: bigger rounds cost fewer statements per op, smaller ones hold
# their locks for less time (docs/sync.md).
SYNC_APPLY_BATCH = env.int("SYNC_APPLY_BATCH", default=100)
SYNC_APPLY_DEVICES = env.int("SYNC_APPLY_DEVICES", default=32)
# …and at most this many ops in all (fewer of each device when many are claimed): a round
# commits at once, so it must stay short for the other tenants' ops behind it.
SYNC_APPLY_ROUND_OPS = env.int("SYNC_APPLY_ROUND_OPS", default=200)
# A drain waits this long before it looks, gathering the pushes that arrive meanwhile into
# its first round: a little latency for fewer, fuller rounds.
SYNC_APPLY_GATHER_SECONDS = env.float("SYNC_APPLY_GATHER_SECONDS", default=0.02)
# Per device, per minute: far above what a phone syncing every few seconds sends, low enough
# that a runaway client cannot hog the web processes.
SYNC_PUSHES_PER_MINUTE = env.int("SYNC_PUSHES_PER_MINUTE", default=600)
SYNC_PULLS_PER_MINUTE = env.int("SYNC_PULLS_PER_MINUTE", default=600)
SYNC_PULL_DEFAULT_LIMIT = 500
SYNC_PULL_MAX_LIMIT = 1000
# Django refuses bodies above this before our own 413 check can run; keep it above the limit.
DATA_UPLOAD_MAX_MEMORY_SIZE = SYNC_MAX_PUSH_BYTES + 64 * 1024

# --- REST framework -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.ApiTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["common.parsers.StrictJSONParser"],
    # Responses escape non-ASCII as \uXXXX: an op_id echoed back as sent (even one holding
    # an unpaired surrogate) can always be written.
    "UNICODE_JSON": False,
    "EXCEPTION_HANDLER": "common.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "fieldsync API",
    "DESCRIPTION": "Offline-first sync backend for field-service technicians.",
    "VERSION": VERSION,
    # Swagger UI and ReDoc from the package, not a CDN: the docs work offline, and with the
    # split view (no inline script) under the docs pages' content security policy.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "operations.api.schema.add_components",
    ],
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Logging: one JSON object per line --------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "ts", "levelname": "level", "name": "logger"},
        },
    },
    # On the handler, not a logger: a logger's filters never see records that propagate to it.
    "filters": {"context": {"()": "common.logging.ContextFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"]}
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "fieldsync": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
