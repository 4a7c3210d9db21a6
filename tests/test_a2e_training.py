"""A2E training: the model overfits one clip; one fast_dev_run through the CLI."""

from __future__ import annotations

import shutil

import lightning as L
import torch

from datamodules.a2e_datamodule import A2EDataModule
from lightning_modules.a2e_module import A2EModule
from lightning_modules.cli import main
from lightning_modules.nets.a2e_transformer import A2ETransformer
from tests.synthetic_shards import AUDIO_NAME, write_synthetic_shards
from tests.test_training_cli import tiny_args


def test_overfits_one_clip_to_near_zero_error(tmp_path):
    root = write_synthetic_shards(tmp_path, {"train": 1}, frames=48)
    shutil.copy(root / "train-000-000000.tar", root / "val-000-000000.tar")  # validate on the clip it trains on
    L.seed_everything(0)
    dm = A2EDataModule(str(root), window=8, num_history=4, audio_features=AUDIO_NAME, audio_dim=16, batch_size=6, num_workers=0,
                       clip_shuffle=1, window_shuffle=8, train_batches_per_epoch=10)
    # the paper's architecture (no history residual): one clip has one resting expression, and the
    # residual only adds the noise of random history draws here (it reaches 3% in 1500 steps)
    net = A2ETransformer(audio_dim=16, d_model=64, num_heads=4, cmsa_layers=2, tca_layers=2, ff_mult=2, dropout=0.0, history_residual=False)
    steps = 1000
    module = A2EModule(net, window=8, num_history=4, optimizer=lambda p: torch.optim.Adam(p, lr=2e-3),
                       scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps))
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, check_val_every_n_epoch=None, val_check_interval=steps, num_sanity_val_steps=0)
    trainer.fit(module, dm)
    m = trainer.callback_metrics
    baseline = float(m["val/exp_mse_clip_mean"])  # predicting the clip's mean expression
    assert float(m["val/exp_mse"]) < 0.03 * baseline, (float(m["val/exp_mse"]), baseline)  # measured: 1.6 %
    assert float(m["val/mouth_vertex_mm"]) < 0.15
    assert float(m["val/lip_open_corr"]) > 0.99


def test_fast_dev_run_through_the_cli(tmp_path, monkeypatch):
    root = write_synthetic_shards(tmp_path / "shards", {"train": 2, "val": 1, "test": 1}, frames=24)
    monkeypatch.chdir(tmp_path)
    main(["fit", *tiny_args(root), "--trainer.fast_dev_run", "true", "--trainer.logger", "false"])
    assert not (tmp_path / "mlruns").exists()
