"""The edge agent's typed configuration, read from one YAML file.

Every section rejects unknown keys, so a typo on a camera that nobody visits
for weeks stops the agent at start-up with a message naming the key, instead
of silently running with a default. Every field has a one-line description,
which ``docs/agent.md`` and ``farmeye agent --describe-config`` show.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class ConfigError(ValueError):
    """A config file that cannot be used; the message says what to change."""


def _default_state_dir() -> Path:
    """systemd's StateDirectory= sets $STATE_DIRECTORY; elsewhere use home."""
    return Path(os.environ.get("STATE_DIRECTORY") or "~/.farmeye-agent").expanduser()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubConfig(_Section):
    """Where the hub is and how to reach it."""

    address: str = Field(
        description="HOST:PORT of the hub's camera ingest (default port 7700)."
    )
    tls: bool = Field(
        default=False, description="Speak TLS to the hub (the hub must too)."
    )
    ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA that signed the hub's certificate "
        "(default: the system's CAs).",
    )
    clock_from_hub: bool = Field(
        default=True,
        description="Ask the hub for its clock at each handshake and time photos "
        "by it when the camera's clock is off (turn off only for an older hub).",
    )


class UploaderConfig(_Section):
    """How photos travel to the hub."""

    window: int = Field(
        default=4, ge=1, le=64, description="Uploads sent before their acks arrive."
    )
    ack_timeout_s: float = Field(
        default=60.0, gt=0, description="Seconds to wait for the ack of one upload."
    )
    backoff_initial_s: float = Field(
        default=1.0, gt=0, description="First wait before reconnecting after a failure."
    )
    backoff_max_s: float = Field(
        default=300.0, gt=0, description="Longest wait between reconnection attempts."
    )
    auth_retry_s: float = Field(
        default=900.0,
        gt=0,
        description="Wait after the hub refused the device (wrong secret, revoked).",
    )
    stable_after_s: float = Field(
        default=30.0,
        gt=0,
        description="A connection up this long resets the backoff to its start.",
    )


class SyntheticCameraConfig(_Section):
    """Generated frames, for demos and tests."""

    type: Literal["synthetic"] = Field(description="Camera backend.")
    width: int = Field(default=640, ge=16, le=8192, description="Width in pixels.")
    height: int = Field(default=480, ge=16, le=8192, description="Height in pixels.")
    jpeg_quality: int = Field(default=85, ge=1, le=95, description="JPEG quality.")


class FolderCameraConfig(_Section):
    """Photos dropped into a folder by another program or camera."""

    type: Literal["folder"] = Field(description="Camera backend.")
    path: Path = Field(description="Folder watched for .jpg, .jpeg and .png files.")
    min_age_s: float = Field(
        default=1.0,
        ge=0,
        description="Leave files younger than this, in case they are still written.",
    )


class Picamera2CameraConfig(_Section):
    """A Raspberry Pi camera module through picamera2 (from apt)."""

    type: Literal["picamera2"] = Field(description="Camera backend.")
    camera_index: int = Field(default=0, ge=0, description="Which camera module.")
    width: int = Field(default=1280, ge=16, le=8192, description="Width in pixels.")
    height: int = Field(default=960, ge=16, le=8192, description="Height in pixels.")
    jpeg_quality: int = Field(default=90, ge=1, le=95, description="JPEG quality.")


class OpencvCameraConfig(_Section):
    """A USB webcam through OpenCV (V4L2 on Linux)."""

    type: Literal["opencv"] = Field(description="Camera backend.")
    device: int | str = Field(
        default=0, description="Camera index, or a device path such as /dev/video0."
    )
    width: int = Field(default=1280, ge=16, le=8192, description="Width in pixels.")
    height: int = Field(default=960, ge=16, le=8192, description="Height in pixels.")
    jpeg_quality: int = Field(default=90, ge=1, le=95, description="JPEG quality.")
    warmup_frames: int = Field(
        default=5,
        ge=0,
        le=100,
        description="Frames read and dropped before each photo, for auto exposure.",
    )


CameraConfig = Annotated[
    SyntheticCameraConfig
    | FolderCameraConfig
    | Picamera2CameraConfig
    | OpencvCameraConfig,
    Field(discriminator="type"),
]


class ScheduleConfig(_Section):
    """When photos are taken; the hub may replace interval and active hours."""

    interval_s: float = Field(
        default=60.0, gt=0, le=86400, description="Seconds between photos."
    )
    jitter_s: float = Field(
        default=0.0,
        ge=0,
        description="Each interval moves by up to this much either way (at most "
        "half the interval), so cameras of a farm do not upload in step.",
    )
    active_start_utc: str | None = Field(
        default=None, description="Start of the daily active window, HH:MM UTC."
    )
    active_end_utc: str | None = Field(
        default=None,
        description="End of the daily active window, HH:MM UTC (may wrap midnight).",
    )
    skip_similar: bool = Field(
        default=False,
        description="Skip a photo nearly identical to the last one kept.",
    )
    similar_max_bits: int = Field(
        default=4,
        ge=0,
        le=64,
        description="Perceptual hashes this many bits apart or fewer are 'similar'.",
    )
    similar_keep_s: float = Field(
        default=3600.0,
        gt=0,
        description="Keep one photo at least this often even if nothing changes.",
    )

    @field_validator("active_start_utc", "active_end_utc")
    @classmethod
    def _check_hhmm(cls, value: str | None) -> str | None:
        if value is not None and not _HHMM.match(value):
            raise ValueError(f"expected a time as HH:MM (24-hour, UTC), got {value!r}")
        return value

    @model_validator(mode="after")
    def _window_pair(self) -> ScheduleConfig:
        if (self.active_start_utc is None) != (self.active_end_utc is None):
            raise ValueError(
                "active_start_utc and active_end_utc go together: set both or neither"
            )
        return self


class SpoolConfig(_Section):
    """The folder that holds photos until the hub has them."""

    path: Path | None = Field(
        default=None, description="Spool folder (default: STATE_DIR/spool)."
    )
    quota_bytes: int = Field(
        default=1_000_000_000,
        ge=10_000,
        description="Most bytes the spool may hold; past it the oldest photos go.",
    )
    min_free_bytes: int = Field(
        default=100_000_000,
        ge=0,
        description=(
            "Free disk space the spool leaves for the system; "
            "below it the oldest photos go."
        ),
    )


class HealthConfig(_Section):
    """The heartbeat sent to the hub."""

    interval_s: float = Field(
        default=60.0, gt=0, description="Seconds between health reports."
    )


class RendererConfig(_Section):
    """One display renderer: a built-in name, an entry point or module:Class."""

    type: str = Field(
        description="'console', a 'farmeye.displays' entry point, or 'module:Class'."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the renderer."
    )


class DisplayConfig(_Section):
    """Showing the coop's latest verdict on the camera."""

    enabled: bool = Field(
        default=False, description="Subscribe to the coop's verdicts and show them."
    )
    url: str | None = Field(
        default=None,
        description="Hub event stream, e.g. ws://hub.local:7780/ws/events.",
    )
    token: SecretStr | None = Field(
        default=None, description="User API token that may read the coop's events."
    )
    token_file: Path | None = Field(
        default=None, description="File holding that token (instead of token)."
    )
    coop_id: int | str | None = Field(
        default=None,
        description="Coop to follow (default: the coop the hub assigned the device).",
    )
    status_file: Path | None = Field(
        default=None,
        description="Display status JSON file (default: STATE_DIR/status.json).",
    )
    renderers: list[RendererConfig] = Field(
        default_factory=list, description="Renderers to drive, e.g. [{type: console}]."
    )

    @model_validator(mode="after")
    def _needs_url(self) -> DisplayConfig:
        if self.enabled and not self.url:
            raise ValueError(
                "display.enabled needs display.url (ws://HOST:PORT/ws/events)"
            )
        if self.token is not None and self.token_file is not None:
            raise ValueError("set display.token or display.token_file, not both")
        return self


class TriageConfig(_Section):
    """Optional on-device triage with the shipped int8 model."""

    enabled: bool = Field(
        default=False,
        description="Run the triage model on each photo (needs ai-edge-litert).",
    )
    threads: int = Field(default=1, ge=1, le=8, description="CPU threads for LiteRT.")


class AgentConfig(_Section):
    """Everything the edge agent reads at start-up."""

    device_id: str = Field(
        description="Device id from `farmeye devices add` (dev_...).",
        pattern=r"^dev_[A-Za-z0-9_-]{8,64}$",
    )
    secret: SecretStr | None = Field(
        default=None, description="Device secret from `farmeye devices add`."
    )
    secret_file: Path | None = Field(
        default=None, description="File holding the device secret (instead of secret)."
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Folder for the spool and status file ($STATE_DIRECTORY).",
    )
    hub: HubConfig = Field(description="Where the hub is.")
    uploader: UploaderConfig = Field(
        default_factory=UploaderConfig, description="Upload pipelining and backoff."
    )
    camera: CameraConfig = Field(description="Camera backend, chosen by its type.")
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig, description="When photos are taken."
    )
    spool: SpoolConfig = Field(
        default_factory=SpoolConfig, description="Durable photo spool."
    )
    health: HealthConfig = Field(
        default_factory=HealthConfig, description="Health reports to the hub."
    )
    display: DisplayConfig = Field(
        default_factory=DisplayConfig, description="Verdict display."
    )
    triage: TriageConfig = Field(
        default_factory=TriageConfig, description="On-device triage."
    )
    log_level: LogLevel = Field(
        default="INFO", description="Lowest level logged: DEBUG, INFO, WARNING, ERROR."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("state_dir", "secret_file", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _one_secret(self) -> AgentConfig:
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError("set exactly one of secret and secret_file")
        return self

    @property
    def spool_path(self) -> Path:
        """The spool folder, defaulting into the state folder."""
        return (self.spool.path or self.state_dir / "spool").expanduser()

    @property
    def status_file(self) -> Path:
        """The display's JSON status file, defaulting into the state folder."""
        return (self.display.status_file or self.state_dir / "status.json").expanduser()

    def device_secret(self) -> str:
        """The secret, read from ``secret_file`` when that is how it is given."""
        if self.secret is not None:
            return self.secret.get_secret_value()
        assert self.secret_file is not None  # noqa: S101 (checked by _one_secret)
        return _read_secret(self.secret_file, "secret_file")

    def display_token(self) -> str | None:
        """The event-stream token, from ``token`` or ``token_file``."""
        if self.display.token is not None:
            return self.display.token.get_secret_value()
        if self.display.token_file is not None:
            return _read_secret(self.display.token_file.expanduser(), "token_file")
        return None


def parse_hhmm(text: str) -> time:
    """``"06:30"`` as a :class:`datetime.time`."""
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _read_secret(path: Path, key: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {key} {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{key} {path} is empty")
    return value


def load_config(path: Path) -> AgentConfig:
    """Read and check the YAML file, or raise :class:`ConfigError` saying why."""
    data = _read_yaml(path)
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise ConfigError(f"invalid agent config {path}: {problems}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"agent config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"agent config {path} must be a mapping of key: value, "
            f"not {type(data).__name__}"
        )
    return data


def _describe(error: Any) -> str:
    """One problem as 'where: what', with a suggestion for a mistyped key."""
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][-1])
        close = difflib.get_close_matches(key, sorted(_all_field_names()), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key {where!r}{hint}"
    return f"{where}: {error['msg']}"


def _all_field_names() -> set[str]:
    return {name for model in config_models() for name in model.model_fields}


def config_models() -> Iterator[type[BaseModel]]:
    """Every section model, for the reference docs and the description test."""
    yield from (
        AgentConfig,
        HubConfig,
        UploaderConfig,
        SyntheticCameraConfig,
        FolderCameraConfig,
        Picamera2CameraConfig,
        OpencvCameraConfig,
        ScheduleConfig,
        SpoolConfig,
        HealthConfig,
        DisplayConfig,
        RendererConfig,
        TriageConfig,
    )
