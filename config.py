"""Settings, read from the environment or a `.env` file and checked once at start-up."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

VERSION = "0.1.0"


def _http_url(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL with a host, got {value!r}")
    return value.rstrip("/")


class Settings(BaseSettings):
    # An empty variable (as in .env.example) means "use the default".
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    database_url: str = "sqlite:///./taskflow.db"
    # Connections each worker keeps open, and also how many requests it runs at once in
    # threads: every database call happens in one, so a request never waits for a connection.
    db_pool_size: int = Field(default=20, ge=1, le=1000)
    # Beyond the pool, for the lease sweeper and the readiness check.
    db_max_overflow: int = Field(default=5, ge=0)
    auto_migrate: bool = True

    auth_server_url: str = "http://localhost:3001"
    # Empty means "derive from AUTH_SERVER_URL".
    jwks_url: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwks_cache_ttl: int = Field(default=3600, ge=0)

    # Seconds a claim lasts without a heartbeat; unset means claims never expire.
    lease_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    # How often the sweeper hands back tasks whose lease ran out; 0 turns it off in this process.
    lease_sweep_seconds: float = Field(default=5.0, ge=0, le=3600)

    # The local development issuer: never trusted unless switched on explicitly.
    dev_auth: bool = False
    dev_key_file: str = ".taskflow-dev-key.pem"

    allowed_origins: Annotated[list[str], NoDecode] = ["http://localhost:3000"]
    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError:
            raise ValueError("DATABASE_URL cannot be parsed as a database URL") from None
        if backend not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError(f"DATABASE_URL must be sqlite:///… or postgresql://…, got {backend!r}")
        return value

    @field_validator("auth_server_url")
    @classmethod
    def _auth_server_url(cls, value: str) -> str:
        return _http_url(value, "AUTH_SERVER_URL")

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str) -> str:
        return value and _http_url(value, "JWKS_URL")

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*":
                raise ValueError("ALLOWED_ORIGINS cannot be '*': credentials are allowed, so origins must be listed")
            _http_url(origin, "each ALLOWED_ORIGINS entry")
            if urlsplit(origin).path not in {"", "/"}:
                raise ValueError(f"an origin has no path: {origin!r}")
        return [origin.rstrip("/") for origin in value]

    @model_validator(mode="after")
    def _defaults_from_auth_server(self) -> Settings:
        self.jwks_url = self.jwks_url or f"{self.auth_server_url}/api/auth/jwks"
        self.jwt_issuer = self.jwt_issuer or self.auth_server_url
        self.jwt_audience = self.jwt_audience or self.auth_server_url
        return self


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
