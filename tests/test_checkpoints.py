"""Checkpoints of the flat layout (before the stage packages) still load, through the alias table.

``fixtures/a2e_flat_layout.ckpt`` was written by commit f99bada (the last flat layout) with the tiny
A2E configs (``configs/debug/tiny.yaml``, 10 steps on synthetic shards); its hyperparameters name
``lightning_modules.a2e_module.A2EModule`` and ``lightning_modules.nets.a2e_transformer.A2ETransformer``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from lightning_modules.a2e.module import A2EModule
from lightning_modules.a2e.transformer import A2ETransformer
from lightning_modules.tracking.checkpoints import MOVED_CLASSES, load_module

FLAT_LAYOUT_A2E = Path(__file__).parent / "fixtures" / "a2e_flat_layout.ckpt"


def test_a_checkpoint_of_the_flat_layout_loads_with_its_weights() -> None:
    saved = torch.load(FLAT_LAYOUT_A2E, map_location="cpu", weights_only=False)
    assert saved["hyper_parameters"]["_class_path"] == "lightning_modules.a2e_module.A2EModule"  # the fixture is what it claims

    module = load_module(A2EModule, FLAT_LAYOUT_A2E)
    assert isinstance(module.net, A2ETransformer)
    assert module.net.d_model == saved["hyper_parameters"]["net"]["init_args"]["d_model"] == 32  # tiny.yaml, not the default 256
    for name, value in module.state_dict().items():
        torch.testing.assert_close(value, saved["state_dict"][name], rtol=0, atol=0, msg=name)
    pred = module.eval()({
        "audio": torch.randn(2, 16, module.net.audio_dim), "shape_ref": torch.randn(2, module.net.shape_dim),
        "history": torch.randn(2, module.hparams.num_history, module.net.exp_dim),
    })
    assert pred.shape == (2, 8, module.net.exp_dim) and torch.isfinite(pred).all()


def test_without_the_alias_table_lightning_refuses_the_old_path() -> None:
    with pytest.raises(ValueError, match="lightning_modules.a2e_module.A2EModule"):
        A2EModule.load_from_checkpoint(FLAT_LAYOUT_A2E)


@pytest.mark.parametrize("old", sorted(MOVED_CLASSES))
def test_every_moved_class_resolves_to_the_same_class_name(old: str) -> None:
    module_name, _, class_name = MOVED_CLASSES[old].rpartition(".")
    assert class_name == old.rpartition(".")[2]
    assert isinstance(getattr(importlib.import_module(module_name), class_name), type)
