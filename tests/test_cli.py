"""The command line: presets parse, wrong keys and missing roots give one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from preprocess.cli import make_parser, normalize_option_names

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "configs" / "preprocess").glob("*.yaml"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "preprocess", *args], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_parses(preset: Path) -> None:
    command = "build-face-model" if preset.stem.endswith("face_model") else "shard"  # the one face-model preset builds, the rest shard
    cfg = make_parser().parse_args([command, "--config", str(preset)])
    assert cfg[command].dataset in ("voxceleb1", "mead", "hdtf", "folder")


def test_presets_exist_for_every_dataset() -> None:
    assert {p.stem for p in PRESETS} >= {"voxceleb1", "mead", "hdtf", "folder", "demo"}


def test_print_config_and_help() -> None:
    r = run("shard", "--config", str(REPO / "configs/preprocess/demo.yaml"), "--print_config")
    assert r.returncode == 0 and "out: sharded_data/demo" in r.stdout
    r = run("shard", "--help")
    assert r.returncode == 0 and "--workers" in r.stdout and "--track.on_face_lost" in r.stdout
    assert "Local worker processes" in r.stdout and "Frames in a row without the face" in r.stdout  # field docs shown


def test_wrong_config_key_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: folder\ntrak:\n  max_gap: 3\n")
    r = run("shard", "--config", str(bad))
    assert r.returncode == 2 and "trak" in r.stderr and "Traceback" not in r.stderr


def test_missing_root_is_one_line(tmp_path: Path) -> None:
    r = run("shard", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: dataset root not found or not a folder: {tmp_path / 'nope'}"]


def test_dashed_option_names_are_accepted(tmp_path: Path) -> None:
    assert normalize_option_names(["shard", "--dry-run", "--root=/a-b/c-d", "--track.on-face-lost", "drop", "--overwrite", "false", "-h"]) == \
        ["shard", "--dry_run", "true", "--root=/a-b/c-d", "--track.on_face_lost", "drop", "--overwrite", "false", "-h"]
    r = run("shard", "--root", str(REPO / "sharded_data/samples"), "--out", str(tmp_path / "o"), "--dry-run")
    assert r.returncode == 0 and "3 clips for rank 0/1" in r.stdout and not (tmp_path / "o").exists()
