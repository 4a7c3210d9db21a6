"""DDP with one wrapper per network: ``--trainer.strategy ddp_networks`` (the GPU presets' strategy).

Lightning's DDP wraps the whole LightningModule. For the GAN that means every ``manual_backward`` — the
critic's and the generator's — all-reduces every gradient bucket of both networks, zeros included
(``find_unused_parameters``): two full all-reduces per iteration. A module that names its networks
(``ddp_networks()``: the renderer's generator and critic) gets one DistributedDataParallel per network
instead, in ``module.ddp_wrappers``; its training step calls them, so each backward all-reduces only the
network it reached, once per iteration each, and the frozen critic in the generator step is called under
``no_sync``. The module itself stays unwrapped, so its state dict keeps its keys. A module that names no
networks (A2E) is wrapped whole, as by ``ddp``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.strategies.ddp import _register_ddp_comm_hook
from torch import nn
from torch.nn.parallel import DistributedDataParallel


class NetworkDDPStrategy(DDPStrategy):
    """DDPStrategy that wraps each of ``lightning_module.ddp_networks()`` in its own DistributedDataParallel."""

    strategy_name = "ddp_networks"

    def _networks(self) -> tuple[str, ...]:
        names = getattr(self.lightning_module, "ddp_networks", None)
        return tuple(names()) if callable(names) else ()

    def _setup_model(self, model: nn.Module) -> nn.Module:
        names = self._networks()
        if not names:
            return super()._setup_model(model)
        module, device_ids = self.lightning_module, self.determine_ddp_device_ids()
        module.ddp_wrappers = {name: DistributedDataParallel(getattr(module, name), device_ids=device_ids, **self._ddp_kwargs) for name in names}
        return model

    def _register_ddp_hooks(self) -> None:
        if not self._networks():
            return super()._register_ddp_hooks()
        if self.root_device.type == "cuda":  # the configured communication hook, on every network's wrapper
            for wrapper in self.lightning_module.ddp_wrappers.values():
                _register_ddp_comm_hook(wrapper, self._ddp_comm_state, self._ddp_comm_hook, self._ddp_comm_wrapper)

    def pre_backward(self, closure_loss: Any) -> None:
        if not self._networks():  # each network's wrapper prepared its own backward in its forward
            super().pre_backward(closure_loss)

    def teardown(self) -> None:
        if (module := self.lightning_module) is not None and self._networks():
            module.ddp_wrappers = {}
        super().teardown()


StrategyRegistry.register(NetworkDDPStrategy.strategy_name, NetworkDDPStrategy, description=__doc__.splitlines()[0], override=True)
