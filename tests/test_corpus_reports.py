"""The corpus reports: identity's share of β variance, and Table 5 grouped from MLflow runs."""

from __future__ import annotations

import numpy as np

from lightning_modules.a2e.table5 import table
from preprocess.shard_report import identity_share


def test_identity_share_of_variance_is_the_between_speaker_part():
    rng = np.random.default_rng(0)
    noise = lambda n: rng.normal(0, 1, (n, 4))  # noqa: E731
    # per coordinate: speaker offsets ±1 (variance 1) and unit noise -> half of the variance is identity
    speakers = {"a": [noise(20000) + 1.0], "b": [noise(10000) - 1.0, noise(10000) - 1.0]}
    assert abs(identity_share(speakers) - 0.5) < 0.01
    assert identity_share({"a": [noise(5000)], "b": [noise(5000)]}) < 0.01


def test_table5_groups_runs_by_their_switches_over_seeds(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t5", artifact_location=str(tmp_path / "artifacts"))
    for i, (shape, history, mse) in enumerate((("True", "True", 0.5), ("True", "True", 0.7), ("False", "False", 0.9))):
        run = client.create_run(exp, run_name=f"run-{i}")
        client.log_param(run.info.run_id, "model/net/use_shape", shape)
        client.log_param(run.info.run_id, "model/net/use_history", history)
        for key, value in (("val/exp_mse", mse), ("val/exp_mse_mouth", mse / 2), ("val/exp_mse_history_mean", 1.0), ("val/mouth_vertex_mm", 2 * mse), ("val/lip_open_corr", 0.8)):
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
    out = table("t5", uri)
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()[2:]}
    assert "| 2 | 0.600 ± 0.141 | 0.300 ± 0.071 | 1.200 ± 0.283 | 0.800 ± 0.000 | — |" in rows["A2E, priors: both"]
    assert "| 1 | 0.900 | 0.450 | 1.800 | 0.800 | — |" in rows["A2E, priors: none"]
    assert "| 3 | 1.000 ± 0.000 | — | — | — | — |" in rows["history mean"]
    only = {line.split("|")[1].strip(): line for line in table("t5", uri, match="run-[02]").splitlines()[2:]}
    assert "| 1 | 0.500 |" in only["A2E, priors: both"] and "| 1 | 0.900 |" in only["A2E, priors: none"]


def test_table5_at_best_takes_every_value_at_the_lowest_validation_loss(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t5", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp, run_name="r")
    for step, (loss, mse, hist) in enumerate(((1.0, 0.9, 0.8), (0.5, 0.7, 0.8), (0.8, 0.6, 0.8))):
        for key, value in (("val/loss/total", loss), ("val/exp_mse", mse), ("val/exp_mse_history_mean", hist)):
            client.log_metric(run.info.run_id, key, value, step=step)
    client.set_terminated(run.info.run_id)
    best = {line.split("|")[1].strip(): line for line in table("t5", uri, at="best").splitlines()[2:]}
    last = {line.split("|")[1].strip(): line for line in table("t5", uri).splitlines()[2:]}
    assert "| 1 | 0.700 |" in best["A2E, priors: both"] and "| 1 | 0.600 |" in last["A2E, priors: both"]
    assert "| 1 | 0.800 |" in best["history mean"]


def test_lips_follow_audio_is_high_for_lips_driven_by_loudness_and_low_for_shuffled_ones():
    from preprocess.shard_report import SAMPLES_PER_FRAME, lips_follow_audio

    rng = np.random.default_rng(0)
    loud = np.exp(rng.normal(size=200))  # per-frame amplitude
    audio = (rng.normal(size=(200, SAMPLES_PER_FRAME)) * loud[:, None]).ravel()
    opening = np.log(loud) + 0.1 * rng.normal(size=200)
    valid = np.ones(200, bool)
    assert lips_follow_audio(audio, opening, valid) > 0.9
    assert abs(lips_follow_audio(audio, rng.permutation(opening), valid)) < 0.2
    assert np.isnan(lips_follow_audio(audio, opening, np.zeros(200, bool)))  # no seen frame: not a number, not a guess
