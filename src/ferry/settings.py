"""The one settings model: flag > environment > ferry.toml > default.

Environment names are the guide's (``REDIS_URL``, ``WORKER_CONCURRENCY``...) and
``FERRY_*`` for what the guide does not name; users rely on them, so each field
names its variable explicitly.
"""

from __future__ import annotations

import base64
import importlib.util
import ipaddress
import json
import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ferry.platform import open_passed_pipe
from ferry.validation import first_problem

CONFIG_FILE_ENV = "FERRY_CONFIG"
DEFAULT_CONFIG_FILE = "ferry.toml"
# A child of a ferry supervisor reads its secret settings from this file descriptor
# (the read end of a pipe its parent passed it), never from its environment.
SETTINGS_FD_ENV = "FERRY_SETTINGS_FD"

# Settings whose values are secrets: never shown, never passed on in an environment.
SECRET_FIELDS = frozenset({"api_keys", "admin_api_keys", "signing_secret"})
# URLs that may carry a password or a token: shown only as `redacted_url` shows them,
# and passed to children as secrets are.
URL_FIELDS = frozenset({"redis_url", "main_server_url"})
HIDDEN = "***"
# Partitions are asked in parallel by every status read and figure: a few, not hundreds.
MOST_PARTITIONS = 64


def env(name: str, description: str, default: Any = None, **constraints: Any) -> Any:
    """A field read from the environment variable `name`, or from `name` lower-cased in ferry.toml."""
    return Field(
        default,
        validation_alias=AliasChoices(name, name.lower()),
        description=description,
        **constraints,
    )


class Settings(BaseSettings):
    """Every knob of ferry, for every command."""

    model_config = SettingsConfigDict(
        case_sensitive=False,
        extra="ignore",
        validate_default=True,
    )

    # Redis and the main server
    redis_url: str | None = env(
        "REDIS_URL",
        "Redis/Valkey URL (redis+sentinel://, redis+cluster:// too: docs/scaling.md); unset means ferry "
        "runs its embedded Valkey.",
    )
    main_server_url: str | None = env(
        "MAIN_SERVER_URL", "Where workers POST each message (http:// or https://)."
    )
    main_server_ca_file: Path | None = env(
        "MAIN_SERVER_CA_FILE", "CA bundle that verifies the main server's certificate."
    )
    main_server_cert_file: Path | None = env(
        "MAIN_SERVER_CERT_FILE", "Client certificate for mTLS to the main server."
    )
    main_server_key_file: Path | None = env(
        "MAIN_SERVER_KEY_FILE", "Private key of the client certificate."
    )
    http_client: Literal["auto", "pyreqwest", "aiohttp"] = env(
        "FERRY_HTTP_CLIENT",
        "The workers' HTTP client. auto: pyreqwest where it and uvloop are installed (not Windows), unless "
        "MAIN_SERVER_CA_FILE is set (pyreqwest adds that CA to the system's, aiohttp trusts it alone); "
        "docs/benchmarks.md.",
        "auto",
    )

    # Workers (the guide's names and defaults)
    worker_concurrency: int = env("WORKER_CONCURRENCY", "Concurrent deliveries per worker.", 4, ge=1, le=10000)
    worker_retry_interval: float = env(
        "WORKER_RETRY_INTERVAL", "Seconds between delivery attempts (the base with backoff).", 30.0, gt=0
    )
    worker_max_attempts: int = env(
        "WORKER_MAX_ATTEMPTS", "Delivery attempts before a message is dead-lettered.", 10000, ge=1
    )
    worker_id: str = env("WORKER_ID", "This worker's name in metrics and in Redis.", "")
    worker_metrics_port: int = env(
        "WORKER_METRICS_PORT", "Port of the worker's /metrics (0: off).", 9100, ge=0, le=65535
    )
    metrics_host: str = env(
        "FERRY_METRICS_HOST",
        "Address the workers' and supervisors' /metrics listen on (0.0.0.0: for a Prometheus elsewhere).",
        "127.0.0.1",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = env(
        "LOG_LEVEL", "Log level.", "INFO"
    )

    # Proxy
    proxy_port: int = env("PROXY_PORT", "Port the proxy listens on.", 8001, ge=1, le=65535)
    proxy_certfile: Path | None = env("PROXY_CERTFILE", "The proxy's TLS certificate (PEM).")
    proxy_keyfile: Path | None = env("PROXY_KEYFILE", "The proxy's TLS private key (PEM).")

    proxy_host: str = env("FERRY_PROXY_HOST", "Address the proxy listens on.", "127.0.0.1")
    proxy_workers: int = env("FERRY_PROXY_WORKERS", "Proxy processes (uvicorn workers).", 1, ge=1, le=256)
    proxy_client_ca_file: Path | None = env(
        "FERRY_PROXY_CLIENT_CA_FILE", "Require client certificates signed by this CA (mTLS)."
    )
    api_keys_file: Path | None = env(
        "FERRY_API_KEYS_FILE", "File of accepted API keys' SHA-256 hashes (hex), one per line."
    )
    health_metrics_need_key: bool = env(
        "FERRY_HEALTH_METRICS_NEED_KEY", "Whether /api/v1/health and /metrics need an API key.", False
    )
    rate_limit_per_second: float = env(
        "FERRY_RATE_LIMIT", "Messages per second per API key (0: no limit).", 0.0, ge=0
    )
    rate_limit_burst: int = env(
        "FERRY_RATE_LIMIT_BURST", "Messages a key may send at once above its rate (0: one second's worth).", 0, ge=0
    )
    api_docs: bool = env(
        "FERRY_API_DOCS",
        "Serve /docs, the OpenAPI page (it loads its scripts from a public CDN); /openapi.json is always served.",
        False,
    )
    idempotency_ttl_seconds: int = env(
        "FERRY_IDEMPOTENCY_TTL_SECONDS", "How long an Idempotency-Key maps to its first message.", 86400, ge=1
    )
    # Each proxy process holds its clients to these (ferry.adapters.uvicorn applies them).
    head_timeout_seconds: float = env(
        "FERRY_HEAD_TIMEOUT_SECONDS",
        "Time a client has to send a whole request head (from connecting, or from a later request's "
        "first byte); then 408 request_timeout.",
        10.0,
        gt=0,
    )
    body_timeout_seconds: float = env(
        "FERRY_BODY_TIMEOUT_SECONDS",
        "Longest wait for the next KiB of a request body (or its end); then 408 request_timeout.",
        10.0,
        gt=0,
    )
    keep_alive_seconds: float = env(
        "FERRY_KEEP_ALIVE_SECONDS",
        "How long a connection may wait for a request (after connecting or an answer) before it is closed.",
        5.0,
        gt=0,
    )
    max_connections: int = env(
        "FERRY_MAX_CONNECTIONS",
        "Connections each proxy process holds; past them a new one is answered 503 too_many_connections.",
        1000,
        ge=1,
    )
    body_buffer_bytes: int = env(
        "FERRY_BODY_BUFFER_BYTES",
        "Request body bytes each proxy process holds past every request's first 64 KiB; past them "
        "503 body_buffer_full.",
        64 << 20,
        ge=0,
    )
    trusted_proxies: str = env(
        "FERRY_TRUSTED_PROXIES",
        "Comma-separated addresses or networks (CIDR) of load balancers whose X-Forwarded-For names the "
        "client in the proxy's logs; from any other peer it is ignored.",
        "",
    )

    # ferry's own
    home: Path = env("FERRY_HOME", "Data, embedded Valkey and dev certificates.", Path(".ferry"))
    api_keys: SecretStr = env("FERRY_API_KEYS", "Comma-separated API keys accepted by the proxy.", "")
    admin_api_keys: SecretStr = env(
        "FERRY_ADMIN_API_KEYS",
        "Comma-separated admin keys for the proxy's dead-letter routes (API keys never work there).",
        "",
    )
    lease_seconds: float = env(
        "FERRY_LEASE_SECONDS",
        "How long a silent worker keeps its in-flight messages before others take them back.",
        30.0,
        gt=0,
    )
    max_body_bytes: int = env("FERRY_MAX_BODY_BYTES", "Largest message body accepted.", 1 << 20, ge=1)
    max_batch: int = env("FERRY_MAX_BATCH", "Most messages in one batch request.", 100, ge=1)
    max_queue_size: int = env(
        "FERRY_MAX_QUEUE_SIZE", "Queue length past which the proxy answers 503 (0: no cap).", 0, ge=0
    )
    durability: Literal["normal", "strict"] = env(
        "FERRY_DURABILITY", "strict: fsync to the AOF (WAITAOF) before answering 202.", "normal"
    )
    strict_replicas: int = env(
        "FERRY_STRICT_REPLICAS",
        "Replicas that must also have fsynced a message to their AOF before a strict 202 (WAITAOF 1 N); "
        "fewer in time: 503.",
        0,
        ge=0,
    )
    partitions: int = env(
        "FERRY_PARTITIONS",
        "Queue partitions: key groups of their own, one per Redis Cluster master (docs/scaling.md).",
        1,
        ge=1,
        le=MOST_PARTITIONS,
    )
    signing_secret: SecretStr | None = env(
        "FERRY_SIGNING_SECRET", "Standard Webhooks secret (whsec_<base64>) that signs deliveries."
    )
    delivery_timeout_seconds: float = env(
        "FERRY_DELIVERY_TIMEOUT_SECONDS", "Time allowed for one delivery attempt.", 30.0, gt=0
    )
    retry_backoff: Literal["fixed", "exponential"] = env(
        "FERRY_RETRY_BACKOFF", "fixed: the retry interval every time; exponential: doubling, jittered.", "fixed"
    )
    retry_max_interval_seconds: float = env(
        "FERRY_RETRY_MAX_INTERVAL_SECONDS", "Cap on one wait between attempts (backoff, Retry-After).", 86400.0, gt=0
    )
    max_returns: int = env(
        "FERRY_MAX_RETURNS",
        "Times a message may be taken back from dead workers before it is dead-lettered (poison pill).",
        3,
        ge=1,
    )
    status_ttl_seconds: int = env(
        "FERRY_STATUS_TTL_SECONDS", "How long a delivered message's status stays readable.", 7 * 86400, ge=1
    )
    shutdown_grace_seconds: float = env(
        "FERRY_SHUTDOWN_GRACE_SECONDS", "On SIGTERM, time given to in-flight deliveries.", 25.0, ge=0
    )
    allow_evicting_redis: bool = env(
        "FERRY_ALLOW_EVICTING_REDIS",
        "Run even when Redis may evict keys (maxmemory-policy other than noeviction).",
        False,
    )
    portable_process_control: bool = env(
        "FERRY_PORTABLE_PROCESS_CONTROL",
        "Use Windows' process control on any platform: stop handlers without the loop's signal handlers, "
        "children that watch their supervisor, no SIGTTIN/SIGTTOU (ferry.platform reads it; always on Windows).",
        False,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get(CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, config_file))

    @field_validator("worker_id")
    @classmethod
    def _default_worker_id(cls, value: str) -> str:
        return value or f"{socket.gethostname()}-{os.getpid()}"

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value:
            from ferry.queue.topology import parse_redis_url

            parse_redis_url(value)  # ValueError: the URL names no server, sentinels or cluster
        return value or None

    @field_validator("http_client")
    @classmethod
    def _client_installed(cls, value: str) -> str:
        if value == "pyreqwest" and importlib.util.find_spec("pyreqwest") is None:
            raise ValueError("pyreqwest is not installed here (no wheel for this platform?): use auto or aiohttp")
        return value

    @field_validator("main_server_url")
    @classmethod
    def _check_main_server_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value or None

    @field_validator(
        "main_server_ca_file",
        "main_server_cert_file",
        "main_server_key_file",
        "proxy_certfile",
        "proxy_keyfile",
        "proxy_client_ca_file",
        "api_keys_file",
    )
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, value: str) -> str:
        networks = []
        for item in filter(None, (part.strip() for part in value.split(","))):
            try:
                network = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
            networks.append(str(network) if "/" in item else str(network.network_address))
        return ",".join(networks)

    @field_validator("signing_secret")
    @classmethod
    def _check_signing_secret(cls, value: SecretStr | None) -> SecretStr | None:
        text = value.get_secret_value() if value is not None else ""
        if not text:
            return None
        if not text.startswith("whsec_"):
            raise ValueError("must be whsec_ followed by base64")
        try:
            base64.b64decode(text.removeprefix("whsec_"), validate=True)
        except ValueError:
            raise ValueError("must be whsec_ followed by base64") from None
        return value

    @model_validator(mode="after")
    def _body_buffer_holds_a_body(self) -> Settings:
        if self.body_buffer_bytes + 64 * 1024 < self.max_body_bytes:  # 64 KiB of each body are not counted
            raise ValueError("FERRY_BODY_BUFFER_BYTES must hold a body of FERRY_MAX_BODY_BYTES (less 64 KiB)")
        return self

    @model_validator(mode="after")
    def _replicas_need_strict(self) -> Settings:
        if self.strict_replicas and self.durability != "strict":
            raise ValueError("FERRY_STRICT_REPLICAS needs FERRY_DURABILITY=strict (normal mode waits for no fsync)")
        return self

    @model_validator(mode="after")
    def _cert_needs_key(self) -> Settings:
        if bool(self.main_server_cert_file) != bool(self.main_server_key_file):
            raise ValueError("MAIN_SERVER_CERT_FILE and MAIN_SERVER_KEY_FILE go together")
        if bool(self.proxy_certfile) != bool(self.proxy_keyfile):
            raise ValueError("PROXY_CERTFILE and PROXY_KEYFILE go together")
        if self.proxy_client_ca_file and not self.proxy_certfile:
            raise ValueError("FERRY_PROXY_CLIENT_CA_FILE needs PROXY_CERTFILE and PROXY_KEYFILE (mTLS is on top of TLS)")
        return self

    @property
    def rate_limit_capacity(self) -> int:
        """Tokens a key's bucket holds: the burst, or one second's worth."""
        return self.rate_limit_burst or max(1, int(self.rate_limit_per_second))

    @property
    def signing_key(self) -> bytes | None:
        """The raw HMAC key of the Standard Webhooks secret."""
        if self.signing_secret is None:
            return None
        return base64.b64decode(self.signing_secret.get_secret_value().removeprefix("whsec_"))

    def __repr_args__(self) -> Any:
        # The URLs as they may be shown (SecretStr hides the other secrets itself).
        for name, value in super().__repr_args__():
            yield name, redacted_url(value) if name in URL_FIELDS and isinstance(value, str) else value


def redacted_url(url: str) -> str:
    """`url` as it may be shown: its password (or a lone user part) and its query string
    and fragment dropped, `***` where the password was. Works on anything, URL or not.

    `redis://:pw@host:6379/0` -> `redis://:***@host:6379/0`;
    `https://hooks.example/in?token=t` -> `https://hooks.example/in`.
    """
    text = url.split("#", 1)[0].split("?", 1)[0]
    scheme, separator, rest = text.rpartition("://")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{HIDDEN}@{host}" if colon else f"{HIDDEN}@{host}"
    return f"{scheme}{separator}{netloc}{slash}{path}"


def url_secrets(url: str) -> list[str]:
    """The parts of `url` that `redacted_url` hides (password, user, query string and its
    values, fragment), raw and percent-decoded, longest first: what no message may contain."""
    from urllib.parse import parse_qsl, unquote

    parts = set()
    base, _, fragment = url.partition("#")
    base, _, query = base.partition("?")
    parts.update({fragment, query})
    for name, value in parse_qsl(query, keep_blank_values=True):
        parts.update({value, f"{name}={value}"})
    netloc = base.rpartition("://")[2].partition("/")[0]
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        user, colon, password = userinfo.partition(":")
        parts.update({password} if colon else {user})
    parts |= {unquote(part) for part in parts}
    # Shorter than 4 characters, a part would turn up anywhere ("1" in "HTTP 500"): such a
    # value is no secret worth the name.
    return sorted((part for part in parts if len(part) >= 4), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """`text` (an error, a body excerpt) with `url` shown redacted and its secret parts hidden."""
    if not text:
        return text
    text = text.replace(url, redacted_url(url))
    for part in url_secrets(url):
        text = text.replace(part, HIDDEN)
    return text


class SettingsError(Exception):
    """A setting is wrong; the message is one line naming it."""


def env_name(field_name: str) -> str:
    """The environment variable that sets `field_name`."""
    field = Settings.model_fields[field_name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return field_name.upper()


def _as_text(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value).lower() if isinstance(value, bool) else str(value)


def environment(settings: Settings) -> dict[str, str]:
    """The resolved settings that are no secret, as environment variables by their public names.

    How a child `ferry` command that a supervisor starts (workers, `ferry up`'s
    proxy) learns what its parent decided; it loads its settings as any ferry
    command does. The secrets and the URLs are not among them: they go through
    `secret_environment` and a pipe (`ferry.processes.supervisor`). `WORKER_ID` is
    each child's own and never passed on.
    """
    values = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is not None and name != "worker_id" and name not in SECRET_FIELDS | URL_FIELDS:
            values[env_name(name)] = _as_text(value)
    return values


def secret_environment(settings: Settings, redis_url: str, names: frozenset[str] | None = None) -> dict[str, str]:
    """The secret settings and the URLs (of `names`, default all), by their variable names.

    For a child's settings pipe, never for an environment. `redis_url` is the one
    resolved (the embedded server's, if REDIS_URL is unset).
    """
    values = {}
    for name in sorted(names if names is not None else SECRET_FIELDS | URL_FIELDS):
        value = redis_url if name == "redis_url" else getattr(settings, name)
        if value is not None:
            values[env_name(name)] = _as_text(value)
    return values


def secret_variables() -> list[str]:
    """Every environment variable (in any case) that may hold a secret setting."""
    secret = {env_name(name).upper() for name in SECRET_FIELDS | URL_FIELDS} | {SETTINGS_FD_ENV}
    return [variable for variable in os.environ if variable.upper() in secret]


def forget_secret_environment() -> None:
    """Remove the secret settings' variables from this process's environment.

    Once a command has loaded its settings it needs them no more, and nothing it
    starts (workers, uvicorn's processes, the embedded Valkey) inherits them.
    """
    for variable in secret_variables():
        os.environ.pop(variable, None)


_inherited: dict[str, str] | None = None


def inherited_secrets() -> dict[str, str]:
    """What a supervisor sent on the pipe named by FERRY_SETTINGS_FD (read once), or {}."""
    global _inherited
    if _inherited is None:
        fd_text = os.environ.pop(SETTINGS_FD_ENV, None)
        if fd_text is None:
            return {}
        try:
            fd = open_passed_pipe(fd_text)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            os.close(fd)
            loaded = json.loads(b"".join(chunks) or b"{}")
        except (OSError, ValueError):
            raise SettingsError(f"invalid setting {SETTINGS_FD_ENV}: no settings to read on it") from None
        if not isinstance(loaded, dict):
            raise SettingsError(f"invalid setting {SETTINGS_FD_ENV}: no settings to read on it")
        _inherited = {str(name): str(value) for name, value in loaded.items()}
    return _inherited


def load_settings(**flags: Any) -> Settings:
    """Settings from flags (None means not given), the environment and ferry.toml."""
    given = {env_name(name): value for name, value in flags.items() if value is not None}
    try:
        return Settings(**(inherited_secrets() | given))
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


def _describe(error: ValidationError) -> str:
    problem = first_problem(error)
    if not problem.location:
        return f"invalid settings: {problem.message}"
    located = str(problem.location[0])
    field_name = _field_named(located)
    name = env_name(field_name) if field_name is not None else located
    if field_name in SECRET_FIELDS or isinstance(problem.value, dict):
        shown = ""  # a secret's value is never shown, not even a wrong one
    elif field_name in URL_FIELDS:
        shown = f" (got {redacted_url(str(problem.value))!r})"
    else:
        shown = f" (got {problem.value!r})"
    return f"invalid setting {name}: {problem.message}{shown}"


def _field_named(located: str) -> str | None:
    """The field an error's location names: by the field's name or its variable's, any case."""
    for name in Settings.model_fields:
        if located.lower() in (name, env_name(name).lower()):
            return name
    return None


def shown_default(field_name: str) -> str:
    """A setting's default as the README and `--help` show it ("" for none)."""
    default = Settings.model_fields[field_name].default
    if field_name == "worker_id":
        return "host-pid"
    if default is None or default == "":
        return ""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def flag_help(field_name: str) -> str:
    """A flag's help, from the setting it sets: its meaning, variable and default."""
    default = shown_default(field_name)
    where = f"env {env_name(field_name)}" + (f", {default}" if default else "")
    return f"{Settings.model_fields[field_name].description} [{where}]"


def reference_table() -> str:
    """The README's configuration reference, made from this model so it cannot drift."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{env_name(name)}` | {shown_default(name)} | {field.description} |")
    return "\n".join(rows)
