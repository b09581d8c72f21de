"""Settings layers, validation messages, run.json and URL resolution."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from farmeye import config
from farmeye.config import ConfigError, Settings, load_settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide the developer's own FARMEYE_* settings from every test."""
    for name in Settings.model_fields:
        monkeypatch.delenv(f"FARMEYE_{name.upper()}", raising=False)
    monkeypatch.delenv("FARMEYE_CONFIG", raising=False)
    monkeypatch.setenv("FARMEYE_DATA_DIR", str(tmp_path / "data"))


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_follow_the_architecture(tmp_path: Path) -> None:
    """Without file or variables, the documented defaults apply."""
    settings = load_settings()
    assert settings.data_dir == tmp_path / "data"
    assert settings.database_url is None and settings.redis_url is None
    every_interface = "0.0.0.0"  # noqa: S104 - the documented default
    assert (settings.ingest_host, settings.ingest_port) == (every_interface, 7700)
    assert (settings.http_host, settings.http_port) == (every_interface, 7780)
    assert settings.max_payload_bytes == 32 * 1024 * 1024
    assert not settings.tls_enabled


def test_data_dir_defaults_to_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no FARMEYE_DATA_DIR the data folder is ~/.farmeye."""
    monkeypatch.delenv("FARMEYE_DATA_DIR")
    assert Settings().data_dir == Path("~/.farmeye").expanduser()


def test_environment_overrides_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FARMEYE_<FIELD> beats the file, and explicit overrides beat both."""
    path = write_yaml(tmp_path / "farmeye.yaml", "ingest_port: 7001\nhttp_port: 8001\n")
    monkeypatch.setenv("FARMEYE_INGEST_PORT", "7002")

    settings = load_settings(path, http_port=8003, queue_bound=None)

    assert settings.ingest_port == 7002
    assert settings.http_port == 8003
    assert settings.queue_bound == 1000


def test_config_file_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FARMEYE_CONFIG names the file when none is passed."""
    path = write_yaml(tmp_path / "farmeye.yaml", "log_level: debug\n")
    monkeypatch.setenv("FARMEYE_CONFIG", str(path))
    assert load_settings().log_level == "DEBUG"


def test_unknown_key_names_key_and_allowed_keys(tmp_path: Path) -> None:
    """A typo in the file is an error naming it, a suggestion and every key."""
    path = write_yaml(tmp_path / "farmeye.yaml", "ingest_prot: 7001\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "'ingest_prot'" in message and str(path) in message
    assert "did you mean 'ingest_port'" in message
    assert all(name in message for name in Settings.model_fields)


def test_unknown_override_is_rejected() -> None:
    """Overrides are checked like the file is."""
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings(colour="red")


def test_bad_value_names_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value that fails validation says which layer it came from."""
    monkeypatch.setenv("FARMEYE_INGEST_PORT", "seventy")
    with pytest.raises(ConfigError, match=r"ingest_port \(from environment\)"):
        load_settings()


def test_out_of_range_port_is_rejected(tmp_path: Path) -> None:
    """Ports above 65535 fail at start-up, not at bind time."""
    path = write_yaml(tmp_path / "farmeye.yaml", "http_port: 70000\n")
    with pytest.raises(ConfigError, match=r"http_port \(from .*farmeye.yaml\)"):
        load_settings(path)


def test_empty_variable_clears_optional_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FARMEYE_DATABASE_URL='' goes back to the embedded server."""
    path = write_yaml(tmp_path / "farmeye.yaml", "database_url: postgresql://x/y\n")
    monkeypatch.setenv("FARMEYE_DATABASE_URL", "")
    assert load_settings(path).database_url is None


def test_tls_needs_certificate_and_key(tmp_path: Path) -> None:
    """Setting only one of tls_cert and tls_key is an error."""
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        load_settings(tls_cert=tmp_path / "cert.pem")
    settings = load_settings(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")
    assert settings.tls_enabled


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "must hold a mapping"),
        ("ingest_port: [\n", "not valid YAML"),
    ],
)
def test_malformed_file_is_explained(tmp_path: Path, text: str, expected: str) -> None:
    """A file that is not a YAML mapping gives a clear error."""
    path = write_yaml(tmp_path / "farmeye.yaml", text)
    with pytest.raises(ConfigError, match=expected):
        load_settings(path)


def test_missing_file_is_explained(tmp_path: Path) -> None:
    """A config file that does not exist says so and what to do."""
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    """An empty file is a valid file with no settings."""
    assert load_settings(write_yaml(tmp_path / "f.yaml", "")).http_port == 7780


def test_every_field_has_one_line_description() -> None:
    """Docs and --help reuse the descriptions, so each exists on one line."""
    for name, description in config.field_descriptions().items():
        assert description, name
        assert "\n" not in description, name


def test_operations_doc_lists_every_field() -> None:
    """docs/operations.md documents every setting with its description."""
    text = DOCS.read_text(encoding="utf-8")
    for name, description in config.field_descriptions().items():
        assert f"`{name}`" in text, name
        assert description.replace("|", "\\|") in text, name


def test_run_info_round_trip(tmp_path: Path) -> None:
    """run.json is written privately with our pid and read back."""
    path = config.write_run_info(tmp_path, {"database_url": "postgresql://a/b"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    info = config.read_run_info(tmp_path)

    assert info == {"database_url": "postgresql://a/b", "pid": os.getpid()}
    config.remove_run_info(tmp_path)
    assert config.read_run_info(tmp_path) is None
    config.remove_run_info(tmp_path)


def test_stale_run_info_is_ignored(tmp_path: Path) -> None:
    """run.json of a process that has ended reads as no running farmeye up."""
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    config.write_run_info(tmp_path, {"pid": finished.pid, "redis_url": "redis://x"})
    assert config.read_run_info(tmp_path) is None


def test_corrupt_run_info_is_ignored(tmp_path: Path) -> None:
    """A half-written or foreign run.json never crashes a command."""
    config.run_info_path(tmp_path).write_text("{not json", encoding="utf-8")
    assert config.read_run_info(tmp_path) is None
    config.run_info_path(tmp_path).write_text("[1, 2]", encoding="utf-8")
    assert config.read_run_info(tmp_path) is None


def test_resolve_urls_prefers_settings(tmp_path: Path) -> None:
    """Configured URLs win over run.json."""
    config.write_run_info(tmp_path / "data", {"database_url": "postgresql://run/db"})
    settings = load_settings(database_url="postgresql://set/db", redis_url="redis://s")
    assert config.resolve_urls(settings) == ("postgresql://set/db", "redis://s")


def test_resolve_urls_falls_back_to_run_info(tmp_path: Path) -> None:
    """Unconfigured URLs come from the run.json of a live farmeye up."""
    config.write_run_info(
        tmp_path / "data",
        {"database_url": "postgresql://run/db", "redis_url": "redis://run"},
    )
    assert config.resolve_urls(load_settings()) == (
        "postgresql://run/db",
        "redis://run",
    )


def test_resolve_urls_without_any_source_says_what_to_do() -> None:
    """With nothing configured or running, the error names both remedies."""
    with pytest.raises(ConfigError) as caught:
        config.resolve_urls(load_settings())
    assert "start `farmeye up` or set FARMEYE_DATABASE_URL" in str(caught.value)


def test_redis_url_missing_alone_is_named(tmp_path: Path) -> None:
    """A configured database with no Redis anywhere names FARMEYE_REDIS_URL."""
    with pytest.raises(ConfigError, match="FARMEYE_REDIS_URL"):
        config.resolve_urls(load_settings(database_url="postgresql://a/b"))
