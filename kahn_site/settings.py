"""KAHN Scope settings.

One switch decides the mode: ``KAHN_MODE`` is read once, here, and everything that differs between
OSS and cloud (database, channel layer, cache, auth) is a backend chosen below — never an ``if`` deep
in a view. Every other setting comes from the environment; secrets may come from ``NAME_FILE``.
"""

import hashlib
import hmac
import os
from pathlib import Path

import environ
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()


def env_secret(name: str, default: str | None = None) -> str | None:
    """A secret from ``NAME``, or from the file named by ``NAME_FILE`` (container secrets)."""
    path = env.str(f"{name}_FILE", default="")
    if path:
        return Path(path).read_text().strip()
    return env.str(name, default=default)


def env_required(name: str, why: str) -> str:
    value = env_secret(name)
    if not value:
        raise ImproperlyConfigured(f"{name} is not set: {why}.")
    return value


def env_flag(name: str, default: bool) -> bool:
    """A yes/no setting, read strictly: a typo in a security switch must not quietly turn it off."""
    value = env.str(name, default="").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be 1 or 0 (true or false), not {value!r}.")


def env_seconds(name: str, default: int) -> int:
    value = env.str(name, default="").strip()
    if not value:
        return default
    if not value.isdigit():
        raise ImproperlyConfigured(f"{name} must be a whole number of seconds, not {value!r}.")
    return int(value)


KAHN_MODE = env.str("KAHN_MODE", default="oss").strip().lower()
if KAHN_MODE not in ("oss", "cloud"):
    raise ImproperlyConfigured(f"KAHN_MODE must be 'oss' or 'cloud', not {KAHN_MODE!r}.")
CLOUD = KAHN_MODE == "cloud"

# Where OSS keeps its embedded database and, by default, where producers write their archive.
KAHN_HOME = Path(env.str("KAHN_HOME", default=str(BASE_DIR / ".kahn")))
# A folder's path, or an archive in S3 as s3://bucket/prefix (kept as written: a Path would fold its "//").
_archive = env.str("KAHN_ARCHIVE", default=str(KAHN_HOME / "archive"))
KAHN_ARCHIVE: Path | str = _archive if _archive.startswith("s3://") else Path(_archive)
# A run with no run_end whose last event is older than this is shown as interrupted, not running.
KAHN_STALE_AFTER = env.int("KAHN_STALE_AFTER", default=3600)

# ---------------------------------------------------------------- mode-dependent backends
REDIS_URL: str | None
if CLOUD:
    SECRET_KEY = env_required("DJANGO_SECRET_KEY", "cloud mode signs sessions with it")
    DATABASES = {
        "default": env.db_url_config(
            env_required("DATABASE_URL", "cloud mode stores tenants and runs in PostgreSQL")
        )
    }
    DEBUG = env.bool("DJANGO_DEBUG", default=False)
    ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])
    if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured(
            "DATABASE_URL must be a postgres:// URL in cloud mode: row-level security keeps tenants apart."
        )
    # Migrations run as this role, the tables' owner; the service runs as DATABASE_URL's role, which
    # owns nothing (see tenants/management/commands/migrate.py and the README).
    _owner_url = env_secret("DATABASE_OWNER_URL")
    KAHN_DATABASE_OWNER = env.db_url_config(_owner_url) if _owner_url else None
    REDIS_URL = env_required("REDIS_URL", "cloud mode shares live updates and rate limits between replicas")
else:
    # OSS binds to loopback only and has no login, so a fixed key signs nothing of value;
    # set DJANGO_SECRET_KEY to use your own.
    SECRET_KEY = env_secret("DJANGO_SECRET_KEY") or "kahn-oss-loopback-only-key-not-a-secret"
    default_sqlite = KAHN_HOME / "scope.sqlite3"
    DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{default_sqlite}")}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    DEBUG = env.bool("DJANGO_DEBUG", default=False)
    ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
    # Optional in OSS: retention runs by hand there (`manage.py retention`), with no broker needed.
    REDIS_URL = env_secret("REDIS_URL") or None

_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory, for the test database: tests run `manage.py` in subprocesses against it.
    _db["TEST"] = {"NAME": str(KAHN_HOME / f"test-{os.getpid()}.sqlite3")}
    _db.setdefault("OPTIONS", {}).update(
        {
            # WAL lets the pages read while `ingest_archive --follow` writes; IMMEDIATE takes the
            # write lock at BEGIN, so two writers queue instead of failing with "database is locked".
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
    )
elif _db["ENGINE"] == "django.db.backends.postgresql" and CLOUD:
    # A pool of connections per process, not one kept per thread: daphne runs each request's sync
    # code in a thread of its own, and connections kept by threads (CONN_MAX_AGE) piled up under
    # concurrent requests until PostgreSQL refused more. A gunicorn worker needs one at a time.
    _db["CONN_MAX_AGE"] = 0
    _db.setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env.int("DATABASE_POOL_SIZE", default=8),
        "timeout": 10,
    }
elif _db["ENGINE"] == "django.db.backends.postgresql":
    _db.setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
    _db.setdefault("CONN_HEALTH_CHECKS", True)
else:
    raise ImproperlyConfigured("DATABASE_URL must be a sqlite:/// or postgres:// URL.")
# `transaction` when DATABASE_URL leads to a pooler in transaction pooling mode (PgBouncer's
# `pool_mode = transaction`): each transaction may then run on another server connection, so nothing
# may outlive one. Everything Scope binds to a connection already is transaction-local (the tenant's
# setting, the staging tables of COPY, row locks); this turns off the two things that are not.
DATABASE_POOLER = env.str("DATABASE_POOLER", default="").strip().lower()
if DATABASE_POOLER not in ("", "transaction"):
    raise ImproperlyConfigured(
        "DATABASE_POOLER must be 'transaction' (behind a pooler in transaction mode) or empty, "
        f"not {DATABASE_POOLER!r}."
    )
if _db["ENGINE"] == "django.db.backends.postgresql":
    # The statements every request of a producer makes are bound on the server (kahn_site.rows):
    # psycopg prepares each on a connection after this many uses, so PostgreSQL plans it once per
    # connection, not per request. Django's own cursors bind on the client and are never prepared.
    # Behind a transaction pooler a statement prepared on one server connection is missing on the
    # next, so none is prepared (binding on the server still works: its statements are unnamed);
    # nor does a queryset's `.iterator()` keep a server-side cursor open across transactions.
    _db.setdefault("OPTIONS", {}).setdefault("prepare_threshold", None if DATABASE_POOLER else 5)
    if DATABASE_POOLER:
        _db["DISABLE_SERVER_SIDE_CURSORS"] = True
elif DATABASE_POOLER:
    raise ImproperlyConfigured("DATABASE_POOLER is for a postgres:// DATABASE_URL.")

# ---------------------------------------------------------------- Django
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "mozilla_django_oidc",
    "rest_framework",
    "drf_spectacular",
    # Swagger UI's files for /api/docs/, found by staticfiles like the site's own.
    "drf_spectacular_sidecar",
    "channels",
    "tenants",
    "billing",
    "runs",
    # Alert rules and their outbox, a room of runs with its own tables (SPEC section 12).
    "runs.alerts",
    "ingest",
    "retention",
    # The site itself: its `serve` command, which puts the apps above together in one process.
    "kahn_site",
]

MIDDLEWARE = [
    # The operator's /metrics, and the timing of every ingest write, refused or not (kahn_site.metrics).
    "kahn_site.metrics.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Every answer, pages and errors alike, carries the Content Security Policy below.
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Chooses the request's tenant and binds it, in code and for row-level security (tenants.middleware).
    "tenants.middleware.CloudTenantMiddleware" if CLOUD else "tenants.middleware.LocalTenantMiddleware",
]

ROOT_URLCONF = "kahn_site.urls"
ASGI_APPLICATION = "kahn_site.asgi.application"

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
                "tenants.context_processors.workspace",
            ],
        },
    },
]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = KAHN_HOME / "staticfiles"

# ---------------------------------------------------------------- the browser surface
# Every page's script and style comes from static/ (data reaches scripts through `json_script` and
# data- attributes, which are not run), so the policy allows no inline script or style, on the
# pages and on Django admin alike. 'self' covers /ws/live's ws:// and wss:// too.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        # data: for images only, which run nothing: stylesheets of the libraries the site serves (Swagger
        # UI's, for /api/docs/) draw their icons with them.
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# Behind a proxy that terminates TLS and says so in X-Forwarded-Proto (SPEC section 8). Only then is
# that header trusted (and the OIDC callback URL given to the provider https): a client talking to
# Scope directly could set it to anything.
KAHN_TLS_PROXY = env_flag("KAHN_TLS_PROXY", default=False)
if KAHN_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # Sent on https answers only (Django's SecurityMiddleware). No includeSubDomains: the operator's
    # other hosts under the same domain are not Scope's to pin. No redirect to https either: the
    # proxy does that, and health checks speak plain HTTP to the container.
    SECURE_HSTS_SECONDS = env_seconds("KAHN_HSTS_SECONDS", default=365 * 24 * 3600)

# ---------------------------------------------------------------- cloud: sign-in with OIDC
if CLOUD:
    _oidc_why = "cloud mode signs people in with OIDC"
    OIDC_RP_CLIENT_ID = env_required("OIDC_RP_CLIENT_ID", _oidc_why)
    OIDC_RP_CLIENT_SECRET = env_required("OIDC_RP_CLIENT_SECRET", _oidc_why)
    OIDC_OP_AUTHORIZATION_ENDPOINT = env_required("OIDC_OP_AUTHORIZATION_ENDPOINT", _oidc_why)
    OIDC_OP_TOKEN_ENDPOINT = env_required("OIDC_OP_TOKEN_ENDPOINT", _oidc_why)
    OIDC_OP_USER_ENDPOINT = env_required("OIDC_OP_USER_ENDPOINT", _oidc_why)
    OIDC_OP_JWKS_ENDPOINT = env_required("OIDC_OP_JWKS_ENDPOINT", _oidc_why)
    OIDC_RP_SIGN_ALGO = "RS256"
    OIDC_RP_SCOPES = "openid email profile"
    OIDC_USE_PKCE = True
    # Seconds for each call to the provider; a sign-in never hangs on it.
    OIDC_TIMEOUT = env.float("OIDC_TIMEOUT", default=10)
    # Users are matched by `sub` (tenants.oidc); the callback view is tenants.urls'.
    AUTHENTICATION_BACKENDS = ["tenants.oidc.TenantOIDCBackend"]
    LOGIN_URL = "oidc_authentication_init"
    LOGIN_REDIRECT_URL = "/"
    LOGOUT_REDIRECT_URL = "signed_out"
    # No ATOMIC_REQUESTS: the tenant middleware makes each request one transaction, as it must bind
    # kahn.tenant_id before the view runs, and rolls it back when the answer is an error; a savepoint
    # around every view on top of that would cost two round trips a request and add nothing.

# ---------------------------------------------------------------- cloud: machine clients' access tokens
# A machine client may read with an access token of the sign-in's provider (SPEC section 8,
# tenants.access_tokens): a JWT of this issuer for this audience, verified against
# OIDC_OP_JWKS_ENDPOINT, or an opaque token, asked about at the introspection endpoint when it is set.
# Without an issuer and an audience, bearer credentials are API keys only. The audience is this API's
# own: the sign-in's client id would let the provider's ID tokens pass for access tokens.
OIDC_OP_ISSUER = env.str("OIDC_OP_ISSUER", default="")
OIDC_API_AUDIENCE = env.str("OIDC_API_AUDIENCE", default="")
OIDC_OP_INTROSPECTION_ENDPOINT = env.str("OIDC_OP_INTROSPECTION_ENDPOINT", default="")
if bool(OIDC_OP_ISSUER) != bool(OIDC_API_AUDIENCE) or (
    OIDC_OP_INTROSPECTION_ENDPOINT and not OIDC_API_AUDIENCE
):
    raise ImproperlyConfigured(
        "Access tokens need both OIDC_OP_ISSUER and OIDC_API_AUDIENCE (and OIDC_OP_INTROSPECTION_ENDPOINT "
        "needs them too): set both, or neither to accept API keys only."
    )
# The provider's key set is kept this long; a token naming a key it lacks fetches it again at once,
# but at most once per cooldown, so that tokens with made-up key ids cannot make every request a fetch.
OIDC_JWKS_CACHE_SECONDS = 300
OIDC_JWKS_REFETCH_COOLDOWN_SECONDS = 30


def _site_origin(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ImproperlyConfigured(
            f"KAHN_SITE_ORIGINS: {value!r} is not an origin like https://scope.example.com"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


# The origins (scheme://host[:port]) the site's pages are served on, besides the one a request names in
# its Host header (one of ALLOWED_HOSTS, with the scheme it came by): a page of any other origin
# cannot open a session socket (tenants.sockets), nor, for Django's CSRF check, post a form.
KAHN_SITE_ORIGINS = [_site_origin(origin) for origin in env.list("KAHN_SITE_ORIGINS", default=[])]
CSRF_TRUSTED_ORIGINS = KAHN_SITE_ORIGINS

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("KAHN_LOG_LEVEL", default="WARNING")},
}

# ---------------------------------------------------------------- read API (DRF, OpenAPI)
REST_FRAMEWORK = {
    # Every API error leaves as {"error": {"code", "message", "details"}} (SPEC section 11).
    "EXCEPTION_HANDLER": "kahn_site.api_errors.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["kahn_site.api_renderers.OrjsonRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # An API key or a machine's access token (both checked by the cloud tenant middleware, which
    # binds the tenant) or the browser session. The same in both modes: OSS resolves no keys and
    # has no sign-in, and its one tenant passes the permission below, so nothing there ever asks
    # for credentials.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.api_authentication.ApiKeyAuthentication",
        "tenants.access_tokens.AccessTokenAuthentication",
        "tenants.api_authentication.SessionAuthentication",
    ],
    # No view runs without a current tenant, and an API key only within its scopes
    # (tenants.permissions): a new view cannot forget either.
    "DEFAULT_PERMISSION_CLASSES": ["tenants.permissions.HasTenant", "tenants.permissions.HasScope"],
}
SPECTACULAR_SETTINGS = {
    # The schema says what a client must send: nothing in OSS, a key or a session in cloud.
    "AUTHENTICATION_WHITELIST": REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"] if CLOUD else [],
    "TITLE": "KAHN Scope API",
    "DESCRIPTION": "Read-only observability for KAHN orchestrator runs: history, replay, diagnostics.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # The schema and /api/docs/ are read like the read API: by anyone in OSS, by a member or a key in cloud.
    "SERVE_PERMISSIONS": REST_FRAMEWORK["DEFAULT_PERMISSION_CLASSES"],
    # Each path once, as the contract spells it (both spellings are routed: kahn_site.api_routes).
    "PREPROCESSING_HOOKS": ["kahn_site.api_routes.schema_without_other_spellings"],
    # Swagger UI from this site's own static files, and no call to the public validator's badge.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}

# ---------------------------------------------------------------- cache and ingest rate limits
# Rate limit counts live in the cache: in cloud mode Redis, shared by every replica; short socket
# timeouts so that a Redis outage costs a request milliseconds, not seconds (limits then fail open).
if CLOUD:
    CACHES = {
        "default": {
            # Django's Redis backend, keeping its redis-py clients (kahn_site/redis_cache.py).
            "BACKEND": "kahn_site.redis_cache.RedisCache",
            "LOCATION": REDIS_URL,
            # Lets deployments (or test runs) that share one Redis keep their counts apart.
            "KEY_PREFIX": env.str("KAHN_CACHE_KEY_PREFIX", default=""),
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
KAHN_RATE_LIMITS = env.bool("KAHN_RATE_LIMITS", default=CLOUD)

# The operator's metrics at /metrics, for a scraper that sends `Authorization: Bearer <token>`;
# unset, the path is not served (kahn_site.metrics). A tenant's own are at /api/v1/metrics.
KAHN_METRICS_TOKEN = env.str("KAHN_METRICS_TOKEN", default="")

# ---------------------------------------------------------------- Celery: the retention jobs
# Redis at REDIS_URL is the broker and keeps results; without it (OSS) tasks have nowhere to go,
# and retention runs by hand. The beat schedule is in kahn_site/celery.py.
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_RESULT_EXPIRES = 7 * 24 * 3600
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A job is acknowledged when it ends, so one lost with its worker runs again elsewhere: retention
# jobs are idempotent and take one batch at a time, so running one twice is safe.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Redis hands an unacknowledged task to another worker after this long: longer than a day's job.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 6 * 3600}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = CELERY_BROKER_TRANSPORT_OPTIONS

# Retention's batches (SPEC section 9): each is one short transaction. At most this many runs...
KAHN_RETENTION_BATCH_RUNS = env.int("KAHN_RETENTION_BATCH_RUNS", default=500)
# ... and, for hard deletes, at most this many events (tests/bench/bench_retention.py sizes it).
KAHN_RETENTION_BATCH_EVENTS = env.int("KAHN_RETENTION_BATCH_EVENTS", default=20_000)

# ---------------------------------------------------------------- live updates (/ws/live, SPEC section 7)
# A larger capacity than channels' 100: a burst of group messages to one process (every socket of a
# replica shares one Redis key) or to one slow socket drops messages past it (PERF.md).
LIVE_CHANNEL_CAPACITY = 1000
if CLOUD:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "kahn_site.channel_layers.RedisLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        # channels-redis blocks 5 s on a read while a socket is idle: a client-side
                        # read timeout (redis-py 8 defaults to 5 s) would close idle sockets with
                        # 1011 (channels_redis#422). None waits; keepalive still finds dead peers.
                        "socket_timeout": None,
                        "socket_connect_timeout": 5,
                        "socket_keepalive": True,
                    }
                ],
                # Replicas of one deployment share it; deployments sharing a Redis must not.
                "prefix": env.str("KAHN_LIVE_REDIS_PREFIX", default="kahn-live"),
                "capacity": LIVE_CHANNEL_CAPACITY,
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "kahn_site.channel_layers.MemoryChannelLayer",
            "CONFIG": {"capacity": LIVE_CHANNEL_CAPACITY},
        }
    }
# Who is on the other end of a socket: the local tenant in OSS, a session or an API key in cloud.
KAHN_SOCKET_IDENTITY = (
    "tenants.sockets.cloud_socket_identity" if CLOUD else "tenants.sockets.local_socket_identity"
)
# How often an open socket's session or key is checked again (expiry, a removed membership); signing
# out and revoking a key close its sockets at once.
KAHN_LIVE_RECHECK_SECONDS = env.int("KAHN_LIVE_RECHECK_SECONDS", default=60)

# ---------------------------------------------------------------- request bodies (ingest.bodies)
# An API request with a body is checked for credentials from its headers, before its body is read:
# the mode's check (OSS has no credentials to check).
KAHN_BODY_CREDENTIALS = "tenants.middleware.cloud_credentials_refusal" if CLOUD else None
# Seconds a request's body may take to arrive after its headers; a slower one is dropped (408).
KAHN_REQUEST_BODY_TIMEOUT = env.float("KAHN_REQUEST_BODY_TIMEOUT", default=20.0)
if KAHN_REQUEST_BODY_TIMEOUT <= 0:
    raise ImproperlyConfigured("KAHN_REQUEST_BODY_TIMEOUT must be a positive number of seconds.")

# API keys are stored as HMAC-SHA256 with this pepper: a leaked table without it opens nothing.
KAHN_API_KEY_PEPPER = (
    env_secret("KAHN_API_KEY_PEPPER")
    or hmac.new(SECRET_KEY.encode(), b"kahn-api-key-pepper", hashlib.sha256).hexdigest()
)

# Alerts (SPEC section 12). Channel URLs and signing secrets are encrypted with these Fernet keys,
# comma-separated: the first encrypts, each decrypts (rotation). Empty in OSS: derived from SECRET_KEY.
KAHN_ENCRYPTION_KEY = env_secret("KAHN_ENCRYPTION_KEY", default="") or ""
# Cloud mode refuses channels whose address is loopback, private, link-local or multicast; this
# lifts that for tests and private deployments.
KAHN_ALERT_ALLOW_PRIVATE = env_flag("KAHN_ALERT_ALLOW_PRIVATE", default=False)
# Where email alerts go out (`smtp://host:25`, `smtp+tls://user:pass@host:587`, `consolemail://`).
EMAIL_URL = env.str("EMAIL_URL", default="")
if EMAIL_URL:
    globals().update(env.email_url_config(EMAIL_URL))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="kahn-scope@localhost")
