"""Evaluation metrics against independent references, on real face crops from the bundled GRID samples."""

from __future__ import annotations

import itertools
import json
import socket

import cv2
import lpips
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy import linalg
from skimage.metrics import structural_similarity

from metrics.arcface import TEMPLATE_112, ArcFaceIdentity, IResNet, align_112, depths_of
from metrics.backbones import MissingWeightsError
from metrics.dlib_face import DlibFaces
from metrics.expression_response import ExpressionResponse
from metrics.frechet_distance import fd_effnet, fid_inception
from metrics.identity_similarity import IdentitySimilarity
from metrics.image_quality import ImageQuality
from metrics.landmark_distance import LandmarkDistance
from metrics.perceptual_similarity import PerceptualSimilarity, load_lpips_backbone
from metrics.sharpness import Sharpness
from preprocess.media import iter_frames
from tests.conftest import SAMPLE_CLIPS

FRAMES_PER_CLIP = 6


def face_crops(path, count: int = FRAMES_PER_CLIP, size: int = 256) -> np.ndarray:
    """``count`` frames of a sample clip cropped around the dlib face box found in its first frame (uint8 [N, H, W, 3])."""
    import dlib

    frames = [np.ascontiguousarray(f) for f in itertools.islice(iter_frames(path), 0, 10 * count, 10)]  # dlib misreads strided arrays
    box = dlib.get_frontal_face_detector()(frames[0], 1)[0]
    cx, cy, half = (box.left() + box.right()) / 2, (box.top() + box.bottom()) / 2, box.width()
    affine = np.float32([[size / (2 * half), 0, size / 2 - cx * size / (2 * half)], [0, size / (2 * half), size / 2 - cy * size / (2 * half)]])
    return np.stack([cv2.warpAffine(f, affine, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE) for f in frames])


def as_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255


def shifted(frames: np.ndarray, dx: int) -> np.ndarray:
    """Frames moved right by ``dx`` whole pixels, the uncovered columns filled with the edge column."""
    out = np.roll(frames, dx, axis=2)
    out[:, :, :dx] = frames[:, :, :1]
    return out


@pytest.fixture(scope="module")
def crops() -> dict[str, np.ndarray]:
    return {p.stem: face_crops(p) for p in SAMPLE_CLIPS}


@pytest.fixture(scope="module")
def faces() -> DlibFaces:
    return DlibFaces()


# -- landmarks -------------------------------------------------------------------------------------
def test_lmd_of_a_clip_with_itself_is_zero_and_with_a_3px_shift_is_3(crops, faces) -> None:
    for frames in crops.values():
        same = LandmarkDistance(faces)
        same.update(as_tensor(frames), as_tensor(frames))
        assert same.compute()["lmd"] == 0 and same.compute()["skipped"] == 0
        moved = LandmarkDistance(faces)
        moved.update(as_tensor(shifted(frames, 3)), as_tensor(frames))
        out = moved.compute()
        assert out["lmd"] == pytest.approx(3.0, abs=0.1), out
        assert out["m_lmd"] == pytest.approx(3.0, abs=0.1) and out["f_lmd"] == pytest.approx(3.0, abs=0.1)


def test_lmd_on_hand_shifted_landmarks_and_the_skip_count(crops, faces) -> None:
    m = LandmarkDistance(faces)
    target = torch.rand(4, 68, 2) * 200
    pred = target.clone()
    pred[:, 48:] += torch.tensor([3.0, 4.0])  # mouth moved by 5 px, the rest untouched
    m.update_landmarks(pred, target)
    frames = next(iter(crops.values()))
    blank = np.full_like(frames[:1], 128)  # no face in the ground truth: counted, not scored
    m.update(as_tensor(frames[:1]), as_tensor(blank))
    out = m.compute()
    assert out["m_lmd"] == pytest.approx(5.0) and out["f_lmd"] == pytest.approx(0.0)
    assert out["lmd"] == pytest.approx(5.0 * 20 / 68) and out["skipped"] == 1


# -- identity --------------------------------------------------------------------------------------
def test_csim_is_one_for_the_same_face_and_clearly_lower_for_another_speaker(crops, faces) -> None:
    names = sorted(crops)
    a, b = crops[names[0]], crops[names[1]]

    def csim(x: np.ndarray, y: np.ndarray) -> float:
        m = IdentitySimilarity(faces)
        m.update(as_tensor(x), as_tensor(y))
        return float(m.compute()["csim"])

    assert csim(a, a) == pytest.approx(1.0, abs=1e-6)
    same_speaker = csim(a[1:], a[:1])  # other frames of the clip vs its first frame (a reference)
    other_speaker = csim(b, a[:1])
    assert same_speaker > 0.95 and other_speaker < same_speaker - 0.08, (same_speaker, other_speaker)


def test_arcface_loads_an_iresnet_from_a_path_and_refuses_other_files(tmp_path, crops, faces, alexnet_standin) -> None:
    torch.manual_seed(0)
    standin = IResNet((1, 1, 1, 1))  # the real architecture at its smallest depth, random weights
    torch.save(standin.state_dict(), tmp_path / "arcface.pth")
    arcface = ArcFaceIdentity(str(tmp_path / "arcface.pth"), faces)
    assert depths_of(standin.state_dict()) == (1, 1, 1, 1)
    frames = next(iter(crops.values()))
    m = IdentitySimilarity(arcface)
    m.update(as_tensor(frames[:2]), as_tensor(frames[:2]))
    assert float(m.compute()["csim"]) == pytest.approx(1.0, abs=1e-6) and arcface.identity(frames[0]).shape == (512,)
    with pytest.raises(MissingWeightsError, match="IResNet"):
        ArcFaceIdentity(alexnet_standin, faces)


def test_five_point_alignment_maps_the_template_onto_itself() -> None:
    image = (np.random.default_rng(0).random((112, 112, 3)) * 255).astype(np.uint8)
    assert np.abs(align_112(image, TEMPLATE_112.copy()).astype(int) - image).max() <= 1


# -- PSNR / SSIM -----------------------------------------------------------------------------------
def test_psnr_and_ssim_match_numpy_and_skimage(crops) -> None:
    frames = next(iter(crops.values()))[:3]
    rng = np.random.default_rng(0)
    noisy = np.clip(frames.astype(np.float64) + rng.normal(0, 12, frames.shape), 0, 255).astype(np.uint8)
    mask = np.zeros(frames.shape[:3], bool)
    mask[:, 150:230, 70:190] = True
    m = ImageQuality()
    m.update(as_tensor(noisy), as_tensor(frames), torch.from_numpy(mask)[:, None].float())
    out = m.compute()
    x, y = noisy / 255.0, frames / 255.0
    psnr = np.mean([10 * np.log10(1 / np.mean((a - b) ** 2)) for a, b in zip(x, y)])
    psnr_mask = np.mean([10 * np.log10(1 / np.mean((a[k] - b[k]) ** 2)) for a, b, k in zip(x, y, mask)])
    ssim = np.mean([
        structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False) for a, b in zip(x, y)
    ])
    assert out["psnr"] == pytest.approx(psnr, abs=1e-6)
    assert out["psnr_mask"] == pytest.approx(psnr_mask, abs=1e-6)
    assert out["ssim"] == pytest.approx(ssim, abs=2e-3)
    assert 0 < out["ssim_mask"] < 1


# -- LPIPS -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def alexnet_standin(tmp_path_factory) -> str:
    """A torchvision-format AlexNet checkpoint with random weights: exercises the real loading path offline."""
    from torchvision.models import alexnet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "alexnet-standin.pth"
    torch.save(alexnet().state_dict(), path)
    return str(path)


def test_lpips_matches_the_lpips_package_with_the_same_backbone(crops, alexnet_standin) -> None:
    frames = next(iter(crops.values()))[:3]
    pred, target = as_tensor(shifted(frames, 5)), as_tensor(frames)
    ours = PerceptualSimilarity(weights=alexnet_standin)
    ours.update(pred, target, torch.ones(3, 1, 256, 256))
    reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    load_lpips_backbone(reference, "alex", alexnet_standin)  # the lpips package keeps the same slice layout
    with torch.no_grad():
        expected = reference(pred * 2 - 1, target * 2 - 1).mean()
    out = ours.compute()
    assert out["lpips"] == pytest.approx(float(expected), rel=1e-4)
    assert out["lpips_mask"] == pytest.approx(float(expected), rel=0.05)  # the spatial map averages to about the same


# -- Fréchet distance ------------------------------------------------------------------------------
class Projection(torch.nn.Module):
    """A fixed 8-d feature so the covariances are full rank with a few dozen frames."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.randn(3 * 16 * 16, 8, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.float(), 16).flatten(1) @ self.w


def numpy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_numpy_and_fd_effnet_separates_speakers(crops) -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    names = sorted(crops)
    real, fake = as_tensor(np.concatenate([crops[n] for n in names[:2]])), as_tensor(np.concatenate([crops[n] for n in names[1:]]))
    proj = Projection()
    m = FrechetInceptionDistance(feature=proj, normalize=True)
    m.update(real, real=True)
    m.update(fake, real=False)
    expected = numpy_frechet(proj(real).double().numpy(), proj(fake).double().numpy())
    assert float(m.compute()) == pytest.approx(expected, rel=1e-3)

    def fd(x: torch.Tensor, y: torch.Tensor) -> float:
        f = fd_effnet()
        f.update(x, real=True)
        f.update(y, real=False)
        return float(f.compute())

    a, b = as_tensor(crops[names[0]]), as_tensor(crops[names[1]])
    assert abs(fd(a, a)) < 1e-2 * fd(a, b)


def test_fid_loads_inception_weights_from_a_path(tmp_path, crops) -> None:
    from safetensors.torch import save_file

    from metrics.frechet_distance import InceptionPool3

    torch.manual_seed(0)  # a random stand-in in the real file format
    save_file(InceptionPool3(pretrained=False).state_dict(), str(tmp_path / "inception.safetensors"))
    m = fid_inception(str(tmp_path / "inception.safetensors"))
    frames = as_tensor(next(iter(crops.values())))
    m.update(frames, real=True)
    m.update(frames.flip(-1), real=False)
    assert torch.isfinite(m.compute())


def test_sharpness_is_one_for_the_source_and_falls_with_blur(crops) -> None:
    from kornia.filters import gaussian_blur2d

    frames = as_tensor(np.concatenate([c[:2] for c in crops.values()]))
    region = torch.zeros(len(frames), 1, 256, 256)
    region[..., 150:230, 70:190] = 1  # the lower face
    same, blurred, upscaled = Sharpness(), Sharpness(), Sharpness()
    same.update(frames, frames, region)
    blurred.update(gaussian_blur2d(frames, (9, 9), (2.0, 2.0)), frames, region)
    small = torch.nn.functional.interpolate(frames, size=(112, 112), mode="bilinear", antialias=True)
    upscaled.update(torch.nn.functional.interpolate(small, size=(256, 256), mode="bilinear"), frames, region)  # a 112 px crop pasted at 256
    assert float(same.compute()) == pytest.approx(1.0)
    assert float(blurred.compute()) < 0.2 and 0.1 < float(upscaled.compute()) < 0.8
    outside = Sharpness()
    outside.update(gaussian_blur2d(frames, (9, 9), (2.0, 2.0)) * (1 - region) + frames * region, frames, region)
    assert float(outside.compute()) == pytest.approx(1.0, abs=0.05)  # only the region counts (its border sees a little of the blur)



def test_a_rendering_is_pasted_at_the_crop_size_sharper_than_bilinear(crops) -> None:
    """dub, stream and evaluate scale a 128 px rendering into the crop bicubically: real GRID crops keep more of their
    sharpness than with bilinear scaling, and the region stays a weight in [0, 1]."""
    from lightning_modules.inference.compose import to_crop_size

    frames = as_tensor(np.concatenate([c[:2] for c in crops.values()]))
    region = torch.zeros(len(frames), 1, 256, 256)
    region[..., 150:230, 70:190] = 1
    small = torch.nn.functional.interpolate(frames, size=(128, 128), mode="bilinear", antialias=True)
    small_region = torch.nn.functional.interpolate(region, size=(128, 128), mode="bilinear", antialias=True)
    image, weight = to_crop_size(small, small_region, 256)
    assert image.shape == frames.shape and weight.shape == region.shape and 0 <= weight.min() and weight.max() <= 1
    bicubic, bilinear = Sharpness(), Sharpness()
    bicubic.update(image.clamp(0, 1), frames, region)
    bilinear.update(torch.nn.functional.interpolate(small, size=(256, 256), mode="bilinear"), frames, region)
    assert float(bicubic.compute()) > 1.2 * float(bilinear.compute())
    assert to_crop_size(frames, region, 256)[0] is frames  # already at the crop's size: untouched

def test_missing_weights_stop_with_the_file_named(tmp_path) -> None:
    missing = str(tmp_path / "nothing.pth")
    for build in (lambda: fid_inception(missing), lambda: PerceptualSimilarity(weights=missing), lambda: DlibFaces(shape_predictor=missing)):
        with pytest.raises(MissingWeightsError, match="nothing.pth"):
            build()


# -- reduction across processes --------------------------------------------------------------------
def _metric_set(faces: DlibFaces) -> dict[str, object]:
    torch.manual_seed(0)  # the random LPIPS backbone must be the same in every process
    return {
        "lmd": LandmarkDistance(faces), "csim": IdentitySimilarity(faces), "quality": ImageQuality(),
        "lpips": PerceptualSimilarity(pretrained=False), "fd": fd_effnet(), "sharpness": Sharpness(),
    }


def _update_and_compute(metrics: dict, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, indices: list[int]) -> dict[str, float]:
    for i in indices:
        p, t, k = pred[i : i + 1], target[i : i + 1], mask[i : i + 1]
        metrics["lmd"].update(p, t)
        metrics["csim"].update(p, t)
        metrics["quality"].update(p, t, k)
        metrics["lpips"].update(p, t, k)
        metrics["fd"].update(t, real=True)
        metrics["fd"].update(p, real=False)
        metrics["sharpness"].update(p, t, k)
    out = {}
    for name, m in metrics.items():
        value = m.compute()
        out.update({f"{name}/{k}": float(v) for k, v in value.items()} if isinstance(value, dict) else {name: float(value)})
    return out


def _rank_main(rank: int, port: int, data_path: str, out_path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    data = torch.load(data_path)
    n = len(data["pred"])
    # uneven shares: rank 0 takes 2 frames of every 3, so reductions cannot rely on equal counts
    mine = [i for i in range(n) if (i % 3 != 2) == (rank == 0)]
    result = _update_and_compute(_metric_set(DlibFaces()), data["pred"], data["target"], data["mask"], mine)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def test_every_metric_reduces_across_two_processes_like_one(tmp_path, crops, faces) -> None:
    target_np = np.concatenate([c[:3] for c in crops.values()])
    pred_np = shifted(target_np, 2)
    pred_np[:, 140:] = np.clip(pred_np[:, 140:].astype(int) + 20, 0, 255).astype(np.uint8)  # a "redrawn" lower face
    target, pred = as_tensor(target_np), as_tensor(pred_np)
    mask = torch.zeros(len(target), 1, 256, 256)
    mask[:, :, 140:] = 1
    mask[-1] = 0  # one frame with an empty mask
    torch.save({"pred": pred, "target": target, "mask": mask}, tmp_path / "data.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(port, str(tmp_path / "data.pt"), str(tmp_path / "ddp.json")), nprocs=2, join=True)
    single = _update_and_compute(_metric_set(faces), pred, target, mask, list(range(len(target))))
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    assert set(ddp) == set(single)
    for k, v in single.items():
        assert ddp[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert single["lmd/lmd"] > 1.5 and single["lpips/lpips"] > 0


def test_expression_response_is_the_ratio_of_summed_changes_in_the_region():
    g = torch.Generator().manual_seed(0)
    out, out2, real, real2 = (torch.rand(4, 3, 8, 8, generator=g) for _ in range(4))
    region = (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float()
    expected = ((out - out2).abs() * region).sum() / ((real - real2).abs() * region).sum()
    whole, halves = ExpressionResponse(), ExpressionResponse()
    whole.update(out, out2, real, real2, region)
    halves.update(out[:2], out2[:2], real[:2], real2[:2], region[:2])
    halves.update(out[2:], out2[2:], real[2:], real2[2:], region[2:])
    assert whole.compute() == pytest.approx(expected.item(), rel=1e-6) and halves.compute() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.isnan(ExpressionResponse().compute())  # no pair seen: undefined, not 0
