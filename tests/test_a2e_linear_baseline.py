"""The linear audio → β reference that the A2E small-data evidence is read against."""

from __future__ import annotations

import numpy as np

from lightning_modules.a2e.linear_baseline import load_clips, report
from tests.synthetic_shards import write_synthetic_shards


def test_linear_baseline_finds_linear_audio_and_scores_the_oracle(tmp_path, capsys):
    # synthetic β = linear(audio) + a per-clip offset: the ridge must beat every trivial predictor
    root = write_synthetic_shards(tmp_path, {"train": 6, "val": 2}, frames=40)
    rows = {r[0]: float(r[2]) for r in report(root, "train", "val")}
    val = load_clips(root, "val")
    oracle = np.mean(np.concatenate([((c.exp - c.exp.mean(0)) ** 2).ravel() for c in val]))
    assert abs(rows["clip mean (oracle)"] - oracle) < 1e-3
    assert rows["linear + clip mean (oracle)"] < 0.5 * rows["clip mean (oracle)"]
    assert rows["linear, no priors"] < rows["training mean"]
    assert "6 train clips (240 frames) -> 2 val clips (80 frames)" in capsys.readouterr().out
