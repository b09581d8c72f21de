"""Typed FarmEye configuration and the ``run.json`` of a running ``farmeye up``.

Settings come from three layers, each overriding the one before: a YAML file
(``--config FILE`` or ``FARMEYE_CONFIG``), environment variables
``FARMEYE_<FIELD>``, then explicit overrides from the command line. Every
layer is checked against :class:`Settings`, which rejects unknown keys, so a
typo in a farm's config file stops start-up instead of being ignored.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

logger = logging.getLogger(__name__)

ENV_PREFIX = "FARMEYE_"
"""Prefix of the environment variables that override settings."""

CONFIG_ENV = "FARMEYE_CONFIG"
"""Environment variable naming the YAML config file when no file is given."""

RUN_INFO_NAME = "run.json"
"""File in ``data_dir`` where ``farmeye up`` publishes its server addresses."""

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class ConfigError(ValueError):
    """Configuration that cannot be used; the message says what to change."""


def _default_data_dir() -> Path:
    return Path(os.environ.get("FARMEYE_DATA_DIR") or "~/.farmeye").expanduser()


class Settings(BaseModel):
    """Every setting of the hub, workers and admin commands."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Folder for photos, embedded servers and run.json.",
    )
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL; unset means the embedded server of `farmeye up`.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL; unset means the embedded server of `farmeye up`.",
    )
    ingest_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - cameras reach the hub over the farm LAN
        description="Address the camera TCP ingest listens on.",
    )
    ingest_port: int = Field(
        default=7700,
        ge=0,
        le=65535,
        description="Port of the camera TCP ingest (0 picks a free port).",
    )
    http_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - phones reach the hub over the farm LAN
        description="Address of the REST, WebSocket and dashboard server.",
    )
    http_port: int = Field(
        default=7780,
        ge=0,
        le=65535,
        description="Port of the REST, WebSocket and dashboard server (0: free).",
    )
    tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate chain; with tls_key, turns on TLS for ingest.",
    )
    tls_key: Path | None = Field(
        default=None,
        description="PEM private key of tls_cert.",
    )
    max_payload_bytes: int = Field(
        default=32 * 1024 * 1024,
        gt=0,
        le=2**32 - 1,
        description="Largest photo accepted in one upload frame, in bytes.",
    )
    handshake_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a camera has to finish hello and auth once connected.",
    )
    idle_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="Seconds without any frame before a camera connection is closed.",
    )
    device_offline_after_s: float = Field(
        default=180.0,
        gt=0,
        description="Seconds without contact before a device is reported offline.",
    )
    triage_processes: int = Field(
        default=2,
        ge=1,
        description="Processes in the hub's triage pool (one CPU core each).",
    )
    queue_bound: int = Field(
        default=1000,
        ge=1,
        description="Analysis tasks queued before new captures are kept pending.",
    )
    min_free_bytes: int = Field(
        default=1024**3,
        ge=0,
        description="Bytes kept free on the photos' disk; new photos refused below.",
    )
    photo_retention_days: float = Field(
        default=0.0,
        ge=0,
        description="Days the hub keeps photos (0: forever); rows and verdicts stay.",
    )
    log_level: LogLevel = Field(
        default="INFO",
        description="Lowest level logged: DEBUG, INFO, WARNING or ERROR.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("data_dir", "tls_cert", "tls_key", mode="after")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "tls_cert and tls_key go together: set both to turn on TLS, or neither"
            )
        return self

    @property
    def tls_enabled(self) -> bool:
        """Whether ingest speaks TLS (both certificate and key are set)."""
        return self.tls_cert is not None and self.tls_key is not None


def field_descriptions() -> dict[str, str]:
    """Field name -> one-line description, for ``--help`` texts and the docs."""
    return {
        name: field.description or "" for name, field in Settings.model_fields.items()
    }


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the YAML file, then ``FARMEYE_*`` variables, then ``overrides``.

    Overrides whose value is ``None`` are skipped, so a command can pass its
    options straight through without erasing what the file or environment set.
    Raises :class:`ConfigError` naming the source of any bad value.
    """
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = Path(os.environ[CONFIG_ENV])

    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append((str(config_file), _read_yaml(config_file)))
    layers.append(("environment", _read_env(os.environ)))
    given = {key: value for key, value in overrides.items() if value is not None}
    layers.append(("overrides", given))

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, values in layers:
        _reject_unknown(values, source)
        merged.update(values)
        sources.update(dict.fromkeys(values, source))
    return _validate(merged, sources)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc.strerror}; pass an existing "
            f"file with --config or fix {CONFIG_ENV}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of setting: value, "
            f"not a {type(data).__name__}"
        )
    return {str(key): value for key, value in data.items()}


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Values of ``FARMEYE_<FIELD>`` variables; an empty one means unset."""
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw or None
    return values


def _reject_unknown(values: Mapping[str, Any], source: str) -> None:
    allowed = list(Settings.model_fields)
    for key in values:
        if key in Settings.model_fields:
            continue
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown setting {key!r} in {source}{hint}; "
            f"allowed settings: {', '.join(allowed)}"
        )


def _validate(values: dict[str, Any], sources: Mapping[str, str]) -> Settings:
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            where = sources.get(field, "defaults")
            problems.append(f"{field} (from {where}): {error['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None


def run_info_path(data_dir: Path) -> Path:
    """Where ``farmeye up`` writes its addresses for other local commands."""
    return Path(data_dir).expanduser() / RUN_INFO_NAME


def write_run_info(data_dir: Path, info: Mapping[str, Any]) -> Path:
    """Publish ``info`` atomically, readable by the owner only (URLs hold passwords).

    The writer's ``pid`` is added unless given, so readers can tell a file
    left behind by a killed ``farmeye up`` from a live one.
    """
    path = run_info_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"pid": os.getpid(), **info}
    temporary = path.with_name(f".{RUN_INFO_NAME}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        json.dump(content, stream, indent=2, sort_keys=True)
        stream.write("\n")
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    return path


def read_run_info(data_dir: Path) -> dict[str, Any] | None:
    """The info of a live ``farmeye up`` in ``data_dir``, or ``None``.

    A missing, unreadable or stale file (its ``pid`` no longer runs) reads as
    ``None``: callers then ask the user to start ``farmeye up``.
    """
    path = run_info_path(data_dir)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable %s: %s", path, exc)
        return None
    if not isinstance(info, dict):
        logger.warning("ignoring %s: it holds no JSON object", path)
        return None
    pid = info.get("pid")
    if isinstance(pid, int) and not _pid_alive(pid):
        logger.info("ignoring %s left by process %s, which has ended", path, pid)
        return None
    return info


def remove_run_info(data_dir: Path) -> None:
    """Withdraw the addresses on a clean stop; a missing file is fine."""
    run_info_path(data_dir).unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_database_url(settings: Settings) -> str:
    """The configured database URL, else the one of a running ``farmeye up``."""
    if settings.database_url:
        return settings.database_url
    info = read_run_info(settings.data_dir) or {}
    url = info.get("database_url")
    if isinstance(url, str) and url:
        return url
    raise ConfigError(
        f"no database configured and no running `farmeye up` found in "
        f"{settings.data_dir}; start `farmeye up` or set FARMEYE_DATABASE_URL"
    )


def resolve_redis_url(settings: Settings) -> str:
    """The configured Redis URL, else the one of a running ``farmeye up``."""
    if settings.redis_url:
        return settings.redis_url
    info = read_run_info(settings.data_dir) or {}
    url = info.get("redis_url")
    if isinstance(url, str) and url:
        return url
    raise ConfigError(
        f"no Redis configured and no running `farmeye up` found in "
        f"{settings.data_dir}; start `farmeye up` or set FARMEYE_REDIS_URL"
    )


def resolve_urls(settings: Settings) -> tuple[str, str]:
    """``(database_url, redis_url)`` from settings, falling back to run.json."""
    return resolve_database_url(settings), resolve_redis_url(settings)
