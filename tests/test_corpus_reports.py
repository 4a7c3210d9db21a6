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


def _synced_shards(root, lags: dict[str, int | None]):
    """One A2E shard set whose clips' inner lips open with their loudness ``lag`` frames before the sound (None: no tie)."""
    from preprocess.media import SAMPLES_PER_FRAME
    from preprocess.shard_report import INNER_LIPS
    from tests.synthetic_shards import write_synthetic_shards

    write_synthetic_shards(root, {"train": len(lags), "val": 1}, frames=120, maxcount=10)
    import io
    import json
    import tarfile

    rng = np.random.default_rng(0)
    level = np.convolve(rng.uniform(0.2, 2.2, 124), np.ones(3) / 3, "valid")[:120]  # syllables: a new level every frame or two
    path = root / "train-000-000000.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    out = []
    for m, data in members:
        key, _, ext = m.name.partition(".")
        lag = lags.get(key, "absent")
        if ext == "coeffs.npz" and lag != "absent":
            with np.load(io.BytesIO(data)) as z:
                c = {k: z[k] for k in z.files}
            opening = np.roll(level, -lag) if lag is not None else rng.uniform(0.2, 2.2, 120)
            for a, b in INNER_LIPS:
                c["lmk"][:, a] = [100.0, 150.0]
                c["lmk"][:, b] = np.stack([np.full(120, 100.0), 150.0 + 5 * opening], -1)
            buf = io.BytesIO()
            np.savez_compressed(buf, **c)
            data = buf.getvalue()
        if ext == "audio.wav" and lag != "absent":
            from preprocess.media import wav_bytes

            noise = rng.normal(0, 1, 120 * SAMPLES_PER_FRAME)
            data = wav_bytes((0.05 * np.repeat(level, SAMPLES_PER_FRAME) * noise).astype(np.float32))
        m.size = len(data)
        out.append((m, data))
    with tarfile.open(path, "w") as tar:
        for m, data in out:
            tar.addfile(m, io.BytesIO(data))
    return json.loads((root / "manifest.json").read_text())


def test_sync_report_finds_the_shift_and_the_keep_list_leaves_clips_out_of_training(tmp_path):
    from datamodules.a2e_datamodule import A2EDataModule
    from preprocess.shard_report import sync_rows, write_sync
    from tests.synthetic_shards import AUDIO_NAME

    _synced_shards(tmp_path, {"syn_train_0": 0, "syn_train_1": 3, "syn_train_2": None})
    rows = {r["key"]: r for r in sync_rows(tmp_path, min_sync=0.5, max_offset=6) if r["split"] == "train"}
    assert rows["syn_train_0"]["r"] > 0.9 and rows["syn_train_0"]["best offset"] == 0 and rows["syn_train_0"]["keep"]
    # lips 3 frames ahead of the sound: shifting the sound 3 frames earlier restores the tie
    assert rows["syn_train_1"]["r"] < 0.5 and rows["syn_train_1"]["best offset"] == 3 and rows["syn_train_1"]["r at best offset"] > 0.9
    assert abs(rows["syn_train_2"]["r"]) < 0.3 and not rows["syn_train_2"]["keep"]
    exclude = write_sync(list(rows.values()), tmp_path / "sync.tsv")
    assert exclude.read_text().split() == ["syn_train_1", "syn_train_2"]
    dm = A2EDataModule(str(tmp_path), window=8, num_history=4, audio_features=AUDIO_NAME, audio_dim=16, batch_size=4, num_workers=0,
                       clip_shuffle=3, train_batches_per_epoch=10, exclude=str(exclude))
    dm.setup("fit")
    assert {k for b in dm.train_dataloader() for k in b["key"]} == {"syn_train_0"}
