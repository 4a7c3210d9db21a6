"""The per-clip lip report over predict's output."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_modules.a2e.clip_report import clip_rows, main
from preprocess.preview import iter_samples
from tests.synthetic_shards import write_synthetic_shards


def test_perfect_predictions_match_the_fitted_lips_and_noise_does_not(tmp_path, capsys):
    root = write_synthetic_shards(tmp_path / "shards", {"train": 2, "val": 2}, frames=40)
    pred = tmp_path / "pred"
    pred.mkdir()
    rng = np.random.default_rng(0)
    val = [s for s in iter_samples(root, frames=False) if s["meta"]["split"] == "val"]
    exact, noisy = val[0], val[1]
    np.savez(pred / f"{exact['__key__']}.npz", exp_pred=exact["coeffs"]["exp"], exp=exact["coeffs"]["exp"])
    np.savez(pred / f"{noisy['__key__']}.npz", exp_pred=rng.normal(size=noisy["coeffs"]["exp"].shape), exp=noisy["coeffs"]["exp"])
    rows = {r["clip"]: r for r in clip_rows(pred, root, None)}
    assert set(rows) == {exact["__key__"], noisy["__key__"]}  # only clips with a prediction
    assert rows[exact["__key__"]]["predicted vs fitted opening r"] == pytest.approx(1.0)
    # the synthetic clips are silent: no loudness to follow, so no number rather than a made-up one
    assert np.isnan(rows[exact["__key__"]]["fitted lips follow loudness r"]) and np.isnan(rows[exact["__key__"]]["predicted lips follow loudness r"])
    assert abs(rows[noisy["__key__"]]["predicted vs fitted opening r"]) < 0.5
    main(["--predictions", str(pred), "--shards", str(root)])
    assert "2 clips; median predicted vs fitted opening r" in capsys.readouterr().out


def test_no_matching_prediction_is_one_clear_error(tmp_path):
    root = write_synthetic_shards(tmp_path / "shards", {"train": 1, "val": 1}, frames=20)
    with pytest.raises(SystemExit, match="run predict on that split first"):
        clip_rows(tmp_path, root, None)
