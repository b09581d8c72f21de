"""Tests of `farmeye diagnose`: offline verdicts from the shipped models."""

from __future__ import annotations

import io
import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from farmeye.cli import main
from farmeye.labels import LABELS


def photo(path: Path) -> Path:
    image = Image.new("RGB", (320, 240), (120, 90, 60))
    image.paste((150, 40, 30), (100, 80, 180, 150))
    out = io.BytesIO()
    image.save(out, format="JPEG")
    path.write_bytes(out.getvalue())
    return path


def test_diagnose_json_gives_both_verdicts(tmp_path: Path):
    """Each photo gets triage and full label, scores per label and model version."""
    result = CliRunner().invoke(
        main, ["diagnose", str(photo(tmp_path / "a.jpg")), "--json"]
    )
    assert result.exit_code == 0, result.output
    entry = json.loads(result.output.strip().splitlines()[-1])
    for kind in ("triage", "full"):
        assert entry[kind]["label"] in LABELS
        assert set(entry[kind]["scores"]) == set(LABELS)
        assert abs(sum(entry[kind]["scores"].values()) - 1.0) < 0.05
        assert entry[kind]["model"].endswith(kind)


def test_diagnose_reports_a_non_image_and_goes_on(tmp_path: Path):
    """A text file gets a clear error, the next photo is still diagnosed, exit 1."""
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo")
    good = photo(tmp_path / "b.jpg")
    result = CliRunner().invoke(
        main, ["diagnose", str(text), str(good), "--json", "--no-full"]
    )
    assert result.exit_code == 1
    first, second = (json.loads(line) for line in result.output.strip().splitlines())
    assert "not an image" in first["error"]
    assert second["triage"]["label"] in LABELS


def test_diagnose_missing_file_is_an_error_not_a_crash(tmp_path: Path):
    """A path that does not exist is reported as an error entry."""
    result = CliRunner().invoke(
        main, ["diagnose", str(tmp_path / "missing.jpg"), "--json", "--no-full"]
    )
    assert result.exit_code == 1
    assert "error" in json.loads(result.output)
