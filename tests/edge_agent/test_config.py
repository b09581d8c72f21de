"""The agent's config file: typed, documented, unknown keys rejected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edge_agent.config import ConfigError, config_models, load_config
from farmeye.commands.agent import agent

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "agent-example.yaml"


def write(tmp_path: Path, config: dict[str, object]) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def minimal() -> dict[str, object]:
    return {
        "device_id": "dev_0123456789abcdef0123",
        "secret": "s3cret",
        "hub": {"address": "127.0.0.1:7700"},
        "camera": {"type": "synthetic"},
    }


def test_example_config_is_valid() -> None:
    """deploy/agent-example.yaml loads as shipped."""
    config = load_config(EXAMPLE)
    assert config.camera.type == "picamera2"
    assert config.schedule.active_start_utc == "05:00"


def test_every_field_has_a_description() -> None:
    """Each key of each section carries the one-line text the docs reuse."""
    for model in config_models():
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_unknown_key_is_rejected_with_a_suggestion(tmp_path: Path) -> None:
    """A typo names the key, where it is, and the likely intended key."""
    config = minimal()
    config["spool"] = {"quota_byte": 10_000_000}
    with pytest.raises(
        ConfigError, match=r"unknown key 'spool.quota_byte'.*quota_bytes"
    ):
        load_config(write(tmp_path, config))


def test_unknown_camera_type_is_rejected(tmp_path: Path) -> None:
    """camera.type must name one of the backends."""
    config = minimal()
    config["camera"] = {"type": "gopro"}
    with pytest.raises(ConfigError, match="camera"):
        load_config(write(tmp_path, config))


def test_camera_keys_are_checked_per_backend(tmp_path: Path) -> None:
    """A key of another backend is unknown for the chosen one."""
    config = minimal()
    config["camera"] = {"type": "synthetic", "device": "/dev/video0"}
    with pytest.raises(ConfigError, match="unknown key 'camera.synthetic.device'"):
        load_config(write(tmp_path, config))


def test_secret_and_secret_file_are_exclusive(tmp_path: Path) -> None:
    """Exactly one way of giving the secret."""
    config = minimal()
    config["secret_file"] = str(tmp_path / "secret")
    with pytest.raises(ConfigError, match="exactly one of secret and secret_file"):
        load_config(write(tmp_path, config))


def test_secret_is_read_from_its_file(tmp_path: Path) -> None:
    """secret_file is read and stripped when the agent needs it."""
    (tmp_path / "secret").write_text("abc\n")
    config = minimal()
    del config["secret"]
    config["secret_file"] = str(tmp_path / "secret")
    assert load_config(write(tmp_path, config)).device_secret() == "abc"


def test_half_an_active_window_is_rejected(tmp_path: Path) -> None:
    """active_start_utc without active_end_utc is an error."""
    config = minimal()
    config["schedule"] = {"active_start_utc": "06:00"}
    with pytest.raises(ConfigError, match="go together"):
        load_config(write(tmp_path, config))


def test_cli_reports_bad_config_without_a_traceback(tmp_path: Path) -> None:
    """`farmeye agent` exits 1 with the config error as its message."""
    config = minimal()
    config["colour"] = "red"
    result = CliRunner().invoke(agent, ["--config", str(write(tmp_path, config))])
    assert result.exit_code == 1
    assert "unknown key 'colour'" in result.output
    assert "Traceback" not in result.output


def test_cli_check_accepts_a_good_config(tmp_path: Path) -> None:
    """--check validates and exits 0 without starting anything."""
    result = CliRunner().invoke(
        agent, ["--config", str(write(tmp_path, minimal())), "--check"]
    )
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_cli_describes_every_key() -> None:
    """--describe-config lists keys with their descriptions."""
    result = CliRunner().invoke(agent, ["--describe-config"])
    assert result.exit_code == 0
    assert "quota_bytes: Most bytes the spool may hold" in result.output
