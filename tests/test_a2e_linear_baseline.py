"""The linear audio → β reference that the A2E small-data evidence is read against."""

from __future__ import annotations

import numpy as np

from lightning_modules.a2e.linear_baseline import (
    LAMBDAS,
    centred,
    cv_errors,
    load_clips,
    mse,
    predict_centred,
    predict_raw,
    report,
    ridge,
    with_intercept,
)
from preprocess.face_model import DEFAULT_MODEL_PATH
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


def test_cross_validation_equals_refitting_without_each_clip(tmp_path):
    train = load_clips(write_synthetic_shards(tmp_path, {"train": 4}, frames=30), "train")
    for design, predict in ((centred, predict_centred), (with_intercept, predict_raw)):
        fast = cv_errors(train, design, predict)
        for lam in LAMBDAS[:3]:
            naive = np.mean([mse(predict(ridge(*design(train[:i] + train[i + 1:]), lam), [c]), [c]) for i, c in enumerate(train)])
            assert abs(fast[lam] - naive) < 1e-8 * max(naive, 1.0), (lam, fast[lam], naive)


def test_the_lips_part_of_each_error_is_a_part_of_it(tmp_path):
    root = write_synthetic_shards(tmp_path, {"train": 4, "val": 2}, frames=30)
    rows = report(root, "train", "val", DEFAULT_MODEL_PATH)
    assert all(0 <= float(r[3]) <= float(r[2]) for r in rows), rows
    assert 0 < float(rows[0][3]) < float(rows[0][2]), rows  # the clip mean misses some of the lips' motion, not all its error is there
