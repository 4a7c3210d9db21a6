"""``python -m lightning_modules export``: ONNX graphs of the trained networks, checked against PyTorch.

    python -m lightning_modules export --a2e CKPT --renderer CKPT --out DIR

Writes three graphs (batch dimension dynamic) and ``export.json`` (shapes, opset, the check):

- ``a2e.onnx``: audio [B, 2W, D], shape [B, Ds], history [B, N, De] -> exp [B, W, De] (one window each).
- ``reference_encoder.onnx``: reference [1, 3, S, S] in [-1, 1] -> ref_0 … ref_d, its encoder features.
  The reference frame never changes within a video, so a runtime runs this once per avatar.
- ``renderer.onnx``: source_masked [B, 3, S, S], mask [B, 1, S, S], coeffs [B, C], sketch [B, K, S, S] (only for
  renderers that take the mouth sketch) and the ref_i of the levels with cross-attention (``export.json`` lists them)
  -> image [B, 3, S, S] (the raw output: blend it with the source under the mask as
  :func:`~lightning_modules.renderer.generator.blend` does).

Every graph is run with onnxruntime (CPU) on random inputs and compared with PyTorch; the export
fails if any output differs by more than ``--atol`` (default 1e-4, float32).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_modules.inference.networks import A2ENetwork, RendererNetwork, load_pair
from lightning_modules.renderer.generator import FIARenderer
from preprocess.errors import ConfigError

OPSET = 18


class ReferenceEncoder(nn.Module):
    def __init__(self, net: FIARenderer) -> None:
        super().__init__()
        self.net = net

    def forward(self, reference: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.net.encode_reference(reference))


class RendererWithReference(nn.Module):
    def __init__(self, net: FIARenderer) -> None:
        super().__init__()
        self.net = net

    def forward(self, source_masked: torch.Tensor, mask: torch.Tensor, coeffs: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        """``rest``: the sketch first when the renderer takes one, then the reference features."""
        sketch, reference_features = (rest[0], rest[1:]) if self.net.sketch_channels else (None, rest)
        return self.net.render(source_masked, mask, list(reference_features), coeffs, sketch)


def example_inputs(a2e: A2ENetwork, renderer: RendererNetwork, batch: int = 2, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Random inputs of the right shapes for each graph."""
    g = torch.Generator().manual_seed(seed)
    net, w, s = a2e.net, a2e.window, renderer.image_size
    rn = renderer.net
    mask = (torch.rand(batch, 1, s, s, generator=g) > 0.5).float()
    reference = torch.rand(1, 3, s, s, generator=g) * 2 - 1
    with torch.no_grad():
        ref = rn.encode_reference(reference)
    sketch = {"sketch": torch.rand(batch, rn.sketch_channels, s, s, generator=g)} if rn.sketch_channels else {}
    return {
        "a2e": {"audio": torch.randn(batch, 2 * w, net.audio_embed.in_features, generator=g),
                "shape": torch.randn(batch, rn.shape_dim, generator=g), "history": torch.randn(batch, a2e.num_history, rn.exp_dim, generator=g)},
        "reference_encoder": {"reference": reference},
        "renderer": {"source_masked": (torch.rand(batch, 3, s, s, generator=g) * 2 - 1) * (1 - mask), "mask": mask,
                     "coeffs": torch.randn(batch, rn.coeff_dim, generator=g), **sketch, **{f"ref_{i}": f for i, f in enumerate(ref)}},
    }


def export_graph(module: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str], path: Path, batched: Sequence[str]) -> None:
    axes = {name: {0: "batch"} for name in (*batched, *(o for o in outputs if batched))}
    with warnings.catch_warnings():  # not under no_grad: eval-mode transformer layers would take a fused path ONNX lacks
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module.eval(), tuple(inputs.values()), str(path), input_names=list(inputs), output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)


def check_graph(path: Path, module: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Largest |onnxruntime − PyTorch| over the outputs, on ``inputs``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}  # reference levels without cross-attention are pruned from the graph
    got = session.run(None, {k: v.numpy() for k, v in inputs.items() if k in wanted})
    with torch.no_grad():
        want = module(*inputs.values())
    want = want if isinstance(want, tuple) else (want,)
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))


def export(a2e: A2ENetwork, renderer: RendererNetwork, out: Path, atol: float = 1e-4) -> dict:
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    rn = renderer.net.float().eval()
    graphs = {
        "a2e": (a2e.net.float().eval(), ["exp"], ["audio", "shape", "history"]),
        "reference_encoder": (ReferenceEncoder(rn), [f"ref_{i}" for i in range(len(rn.encoder.stages) + 1)], []),
        "renderer": (RendererWithReference(rn), ["image"], ["source_masked", "mask", "coeffs", *(["sketch"] if rn.sketch_channels else [])]),
    }
    trace, check = example_inputs(a2e, renderer, batch=2, seed=0), example_inputs(a2e, renderer, batch=3, seed=1)
    report = {"opset": OPSET, "atol": atol, "a2e": str(a2e.path), "renderer": str(renderer.path), "image_size": renderer.image_size,
              "window": a2e.window, "num_history": a2e.num_history, "audio_features": a2e.audio_features, "graphs": {}}
    for name, (module, outputs, batched) in graphs.items():
        path = out / f"{name}.onnx"
        export_graph(module, trace[name], outputs, path, batched)
        err = check_graph(path, module, check[name])  # another batch size than traced: the batch axis is really dynamic
        names = {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}
        report["graphs"][name] = {"file": path.name, "inputs": {k: list(v.shape) for k, v in check[name].items() if k in names}, "outputs": outputs,
                                  "max_abs_diff": err}
        if not err <= atol:
            raise ConfigError(f"{path}: onnxruntime differs from PyTorch by {err:.2e} (> --atol {atol:g})")
    (out / "export.json").write_text(json.dumps(report, indent=1))
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lightning_modules export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a2e", required=True, help="A2E checkpoint (.ckpt or run folder)")
    p.add_argument("--renderer", required=True, help="renderer checkpoint (.ckpt or run folder)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--atol", type=float, default=1e-4, help="largest accepted |onnxruntime − PyTorch| (default 1e-4)")
    p.add_argument("--no-ema", action="store_true", help="the renderer's last weights instead of their moving average (when it was trained with ema_decay)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = export(*load_pair(args.a2e, args.renderer, ema=not args.no_ema), args.out, args.atol)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for g in report["graphs"].values():
        print(f"{args.out / g['file']}: max |onnxruntime - torch| = {g['max_abs_diff']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
