"""Settings, read from the environment or a `.env` file and checked once at start-up."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from limits import parse_many
from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

VERSION = "0.1.0"
DEFAULT_PORTS = {"http": 80, "https": 443}
# Host headers /mcp always answers to: a DNS-rebinding attack arrives with the attacker's name.
LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost")


def _rate_limit(value: str) -> str:
    try:
        parse_many(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate limit such as '600/minute' or '10/second;600/minute'") from None
    return value


RateLimitSpec = Annotated[str, AfterValidator(_rate_limit)]


def _http_url(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL with a host, got {value!r}")
    return value.rstrip("/")


def _canonical_url(value: str) -> str:
    """PUBLIC_URL as clients and the metadata spell it: lower-case host, no default port, no trailing slash.

    The MCP resource made from it is compared as a string with the `aud` of every token, and the
    protected resource metadata, which clients copy into their token requests, spells it so.
    """
    url = _http_url(value, "PUBLIC_URL")
    parts = urlsplit(url)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"PUBLIC_URL is a base URL: no query, fragment or credentials, got {value!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"PUBLIC_URL has an invalid port: {value!r}") from None
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host if port in {None, DEFAULT_PORTS[parts.scheme]} else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class Settings(BaseSettings):
    # An empty variable (as in .env.example) means "use the default".
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    database_url: str = "sqlite:///./taskflow.db"
    # Connections each worker keeps open, and also how many requests it runs at once in
    # threads: every database call happens in one, so a request never waits for a connection.
    db_pool_size: int = Field(default=20, ge=1, le=1000)
    # Beyond the pool, for the lease sweeper and the readiness check.
    db_max_overflow: int = Field(default=5, ge=0)
    # Requests a worker lets wait for one of its DB_POOL_SIZE threads; more are answered 503 at
    # once (a load balancer can send them elsewhere) rather than queue without bound. 0: no cap.
    max_queued_requests: int = Field(default=200, ge=0)
    # Seconds a request waits for a connection before it is answered 503.
    db_pool_timeout: float = Field(default=5.0, gt=0, le=300)
    # Seconds, on TaskFlow's own PostgreSQL connections; 0 turns one off. No legitimate request
    # comes near them: they end a stuck lock or a runaway query with a clear 503 instead of a
    # request that hangs holding a connection. SQLite waits DB_LOCK_TIMEOUT for its write lock.
    db_statement_timeout: float = Field(default=30.0, ge=0, le=3600)
    db_lock_timeout: float = Field(default=10.0, ge=0, le=3600)
    db_idle_in_transaction_timeout: float = Field(default=60.0, ge=0, le=3600)
    auto_migrate: bool = True
    # Where this process LISTENs for commits that wake waiting requests (PostgreSQL only). Empty:
    # DATABASE_URL. A transaction-mode pooler (Neon's `-pooler` host, PgBouncer) cannot LISTEN:
    # point this at the direct host.
    listen_database_url: str = ""
    # How often a waiting request checks again even if nothing woke it: the bound on how late a
    # missed notification, or work that became claimable by a lease running out, is noticed.
    wait_recheck_seconds: float = Field(default=5.0, gt=0, le=15)

    auth_server_url: str = "http://localhost:3001"
    # Empty means "derive from AUTH_SERVER_URL".
    jwks_url: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwks_cache_ttl: int = Field(default=3600, ge=0)

    # Where clients reach this API (scheme, host, port, and a path prefix if a proxy adds one):
    # the MCP endpoint's resource URL, which OAuth tokens for it must name as `aud`, is {PUBLIC_URL}/mcp.
    public_url: str = "http://127.0.0.1:8000"
    # The OAuth issuer of tokens for /mcp: Better Auth's, with its base path. Empty: {AUTH_SERVER_URL}/api/auth.
    mcp_issuer: str = ""
    # Also accept the REST API's own tokens (Better Auth's jwt plugin) at /mcp, with all their authority.
    mcp_accept_api_tokens: bool = True
    # Host headers /mcp answers to, against DNS rebinding ("host:*" allows any port). Empty: PUBLIC_URL's
    # host, and the loopback names.
    mcp_allowed_hosts: Annotated[list[str], NoDecode] = []
    # Origins a browser-based MCP client may call /mcp from. Empty: ALLOWED_ORIGINS and PUBLIC_URL's origin.
    mcp_allowed_origins: Annotated[list[str], NoDecode] = []

    # Seconds a claim lasts without a heartbeat; unset means claims never expire.
    lease_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    # How often the sweeper hands back tasks whose lease ran out; 0 turns it off in this process.
    lease_sweep_seconds: float = Field(default=5.0, ge=0, le=3600)

    # The local development issuer: never trusted unless switched on explicitly.
    dev_auth: bool = False
    dev_key_file: str = ".taskflow-dev-key.pem"

    allowed_origins: Annotated[list[str], NoDecode] = ["http://localhost:3000"]

    # A request body larger than this is refused with 413 before or while it is read.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=1024**3)

    # Requests per caller (worker id), e.g. "600/minute" or "10/second;600/minute"; unset: no limit.
    rate_limit_read: RateLimitSpec | None = None
    rate_limit_write: RateLimitSpec | None = None
    # memory:// keeps each process's own count; redis://host:6379 shares one budget across
    # workers and instances.
    rate_limit_storage: str = "memory://"

    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = "INFO"
    # text for people, json (one object per line) for a log pipeline.
    log_format: Literal["text", "json"] = "text"
    # Prometheus metrics at /metrics; never expose it publicly.
    metrics: bool = True
    # Traces go to this OTLP/HTTP collector (e.g. http://localhost:4318); empty: no tracing.
    otel_exporter_otlp_endpoint: str = ""

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("rate_limit_storage")
    @classmethod
    def _rate_limit_storage(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"memory", "redis", "rediss", "redis+unix"}:
            raise ValueError(f"RATE_LIMIT_STORAGE must be memory:// or redis://…, got {value!r}")
        return value

    @field_validator("otel_exporter_otlp_endpoint")
    @classmethod
    def _otel_endpoint(cls, value: str) -> str:
        return value and _http_url(value, "OTEL_EXPORTER_OTLP_ENDPOINT")

    @field_validator("database_url", "listen_database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value:  # LISTEN_DATABASE_URL unset
            return value
        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError:
            raise ValueError("DATABASE_URL cannot be parsed as a database URL") from None
        if backend not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError(f"DATABASE_URL must be sqlite:///… or postgresql://…, got {backend!r}")
        if backend == "sqlite" and make_url(value).database in {None, "", ":memory:"}:
            # Each connection would see a database of its own, empty and unmigrated.
            raise ValueError(
                "DATABASE_URL must name a SQLite file (sqlite:///./taskflow.db), not an in-memory database"
            )
        return value

    @field_validator("auth_server_url")
    @classmethod
    def _auth_server_url(cls, value: str) -> str:
        return _http_url(value, "AUTH_SERVER_URL")

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str) -> str:
        return value and _http_url(value, "JWKS_URL")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        return _canonical_url(value)

    @field_validator("mcp_issuer")
    @classmethod
    def _mcp_issuer(cls, value: str) -> str:
        # Compared as a string with the tokens' `iss`: kept as written, bar a trailing slash.
        return value and _http_url(value, "MCP_ISSUER")

    @field_validator("allowed_origins", "mcp_allowed_hosts", "mcp_allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("allowed_origins", "mcp_allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if "*" in origin:
                raise ValueError(f"origins are listed one by one, without wildcards: {origin!r}")
            _http_url(origin, "each ALLOWED_ORIGINS entry")
            if urlsplit(origin).path not in {"", "/"}:
                raise ValueError(f"an origin has no path: {origin!r}")
        return [origin.rstrip("/") for origin in value]

    @model_validator(mode="after")
    def _defaults_from_auth_server(self) -> Settings:
        self.jwks_url = self.jwks_url or f"{self.auth_server_url}/api/auth/jwks"
        self.jwt_issuer = self.jwt_issuer or self.auth_server_url
        self.jwt_audience = self.jwt_audience or self.auth_server_url
        self.mcp_issuer = self.mcp_issuer or f"{self.auth_server_url}/api/auth"
        public = urlsplit(self.public_url)
        if not self.mcp_allowed_hosts:
            self.mcp_allowed_hosts = [public.netloc, *LOOPBACK_HOSTS]
        if not self.mcp_allowed_origins:
            self.mcp_allowed_origins = [*self.allowed_origins, f"{public.scheme}://{public.netloc}"]
        return self

    @property
    def mcp_resource(self) -> str:
        """The MCP endpoint's URL: the `resource` (RFC 8707) its OAuth tokens are issued for."""
        return f"{self.public_url}/mcp"


def load_settings() -> Settings:
    """Settings from the environment, or exit with one line that says what is wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])).upper() or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise SystemExit(f"taskflow: bad configuration: {problems}") from None
