"""Hyperparameters that let ``load_from_checkpoint(path)`` rebuild a module with its injected networks."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters  # set while LightningCLI builds a module


def _complete(config: Any, network: Any) -> None:
    """Fill init args the CLI config lacks (values linked from the data config) from the built network's attributes."""
    if not isinstance(config, dict) or "init_args" not in config:
        return
    for name in inspect.signature(type(network).__init__).parameters:
        if name != "self" and name not in config["init_args"] and isinstance(getattr(network, name, None), (int, float, str, bool)):
            config["init_args"][name] = getattr(network, name)


def save_hparams(module: L.LightningModule, networks: Sequence[str], factories: Sequence[str]) -> None:
    """``save_hyperparameters`` for a module whose networks are injected.

    Built by LightningCLI, the init args arrive as the parsed config, so each network is kept as
    its ``class_path``/``init_args`` (completed with the values linked from the data config, which
    Lightning leaves out) and the evaluation rebuilds the whole module from the checkpoint alone.
    Built in Python, a network arrives as an object and is left out: its weights are in the state
    dict, and pickling or deep-copying it would be slow and fragile. Optimizer and scheduler
    factories are always left out.
    """
    frame = inspect.currentframe().f_back
    given = _given_hyperparameters.get()
    if given is not None:
        for name in networks:
            _complete(given.get(name), frame.f_locals[name])
    module.save_hyperparameters(ignore=list(factories) + ([] if given is not None else list(networks)), frame=frame)
