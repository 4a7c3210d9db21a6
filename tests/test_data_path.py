"""The training data path at cluster scale: frames decoded on demand, masks on the batch's device, evaluation
dealt by clip, schema 2 and its converter, and a loader state that makes resumed and repeated runs see the
same batches."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import av
import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import default_collate

from datamodules.a2e_datamodule import A2EDataModule
from datamodules.face_masks import fill_polygons
from datamodules.renderer_datamodule import RendererDataModule
from datamodules.renderer_frames import scale_camera, to_images
from lightning_modules.a2e.module import A2EModule
from lightning_modules.a2e.transformer import A2ETransformer
from preprocess.config import ReencodeJob
from preprocess.media import decode_frames, decode_mp4, encode_mp4
from preprocess.reencode import run_reencode
from preprocess.schema import SCHEMA_VERSION, ShardMismatchError, decode_sample
from tests.synthetic_shards import AUDIO_NAME, write_synthetic_shards
from tests.test_renderer import tiny_module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("frames"), {"train": 3, "val": 2}, frames=24, image_size=64)


# -- frames decoded on demand -----------------------------------------------------------------------
def test_a_short_keyframe_interval_and_decoding_only_the_wanted_frames(grid_frames):
    clip = grid_frames["bbaf2n"][:40, :64, :64]
    data = encode_mp4(list(clip), keyframe_interval=8)
    with av.open(io.BytesIO(data)) as c:
        keys = [i for i, p in enumerate(p for p in c.demux(video=0) if p.size) if p.is_keyframe]
        assert keys == list(range(0, 40, 8)) and not c.streams.video[0].codec_context.has_b_frames
    full = decode_mp4(data)
    for wanted in ([17], [39, 0, 17, 17, 18], list(range(40))):
        assert np.array_equal(decode_frames(data, wanted), full[wanted])
    default_gop = encode_mp4(list(clip))  # a schema-1 video (B-frames, one keyframe) still decodes right, only slower
    assert np.array_equal(decode_frames(default_gop, [33, 3]), decode_mp4(default_gop)[[33, 3]])
    with pytest.raises(ValueError, match="frame 40 is not in this video"):
        decode_frames(data, [40])


def test_device_batch_equals_what_the_schema_1_reader_made_on_the_cpu(frames):
    """Loader (uint8 crops of the wanted frames) + finish_batch equals the old path: the whole clip decoded,
    images resized to float and the masks drawn on the CPU with a 2-D max filter, to 1e-6."""
    dm = RendererDataModule(str(frames), image_size=48, num_workers=0, eval_stride=3)
    clip = dm.decode(next(iter(dm.raw_samples("val"))))
    batch = dm.finish_batch(default_collate(list(dm.eval_items(clip["__key__"], clip))))
    old = decode_sample(next(iter(dm.raw_samples("val"))), frames=True)
    t = batch["frame"].numpy()
    assert torch.allclose(batch["source"], to_images(old["frames"][t], 48), atol=1e-6)
    assert torch.allclose(batch["reference"], to_images(old["frames"][[0] * len(t)], 48), atol=1e-6)
    c = {k: torch.from_numpy(old["coeffs"][k][t].astype(np.float32)) for k in ("shape", "exp", "pose")}
    camera = torch.from_numpy(scale_camera(old["coeffs"]["camera"][t].astype(np.float32), 64, 48))
    fm = dm.masker.face_model
    pts = fm(c["shape"], c["exp"], c["pose"], camera)
    jaw = pts[:, fm.index_sets["lower_face"]]
    ends = torch.stack([torch.stack([jaw[:, -1, 0], torch.full_like(jaw[:, 0, 0], 49.0)], -1), torch.stack([jaw[:, 0, 0], torch.full_like(jaw[:, 0, 0], 49.0)], -1)], 1)
    region = torch.maximum(fill_polygons(jaw, 48), fill_polygons(torch.cat([jaw, ends], 1), 48))
    r, sigma = round(0.03 * 48), 0.01 * 48
    region = gaussian_blur2d(F.max_pool2d(region, 2 * r + 1, stride=1, padding=r), (2 * int(3 * sigma) + 1,) * 2, (sigma, sigma), border_type="replicate").clamp(0, 1)
    assert torch.allclose(batch["mask"], region, atol=1e-6) and batch["mask"].sum() > 0
    assert torch.equal(batch["teeth"], fill_polygons(pts[:, fm.index_sets["inner_mouth"]], 48))
    assert batch["source"].dtype == torch.float32 and batch["partner"].shape == batch["source"].shape


# -- schema 2 and the converter ---------------------------------------------------------------------
def test_schema_1_renderer_shards_are_refused_then_converted_in_place_resumably(tmp_path, capsys):
    root = write_synthetic_shards(tmp_path / "old", {"train": 3, "val": 1}, frames=20, image_size=32, schema=1)
    before = {p.name: p.read_bytes() for p in root.glob("*.tar")}
    with pytest.raises(ShardMismatchError, match=f"shard schema 1; this reader needs 2..2: .*python -m preprocess reencode --shards {root}"):
        RendererDataModule(str(root), image_size=32).setup("fit")
    A2EDataModule(str(root), audio_features=AUDIO_NAME, audio_dim=16).setup("fit")  # A2E reads no frames: schema 1 serves it
    # a killed earlier run left a half-written copy, and one sample's video is damaged
    (root / "train-000-000000.tar.reencode.tmp").write_bytes(b"partial")
    damaged = root / "train-000-000001.tar"
    with tarfile.open(damaged) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(damaged, "w") as tar:
        for m, data in members:
            data = data[: len(data) // 2] if m.name.endswith(".frames.mp4") else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    assert run_reencode(ReencodeJob(shards=root, crf=10, progress=False)) == 3  # some frames did not decode (crf of the synthetic source)
    assert "syn_train_2: " in capsys.readouterr().err and not list(root.glob("*.tmp"))
    dm = RendererDataModule(str(root), image_size=32, num_workers=0, batch_size=4, train_batches_per_epoch=3)
    dm.setup("fit")
    assert len(list(dm.train_dataloader())) == 3  # the damaged clip is skipped, the others train
    for name, old in before.items():
        if name == damaged.name:
            continue
        new_samples = {s["__key__"]: s for s in _samples(root / name)}
        for s in _samples_from_bytes(old):
            new = new_samples[s["__key__"]]
            assert json.loads(new["meta.json"])["schema_version"] == SCHEMA_VERSION
            assert all(new[k] == s[k] for k in ("coeffs.npz", "audio_feats.npy", "audio.wav"))  # landmarks and fits kept
            a, b = decode_mp4(s["frames.mp4"]).astype(float), decode_mp4(new["frames.mp4"]).astype(float)
            # one more yuv420 generation: ~34 dB on these 32 px flat-colour faces (measured), 41 dB on the corpus's 256 px crops
            assert 10 * np.log10(255**2 / max(((a - b) ** 2).mean(), 1e-9)) > 30
    assert run_reencode(ReencodeJob(shards=root, progress=False)) == 0 and "0 shards converted" in capsys.readouterr().out  # done: nothing again


def _samples(path: Path) -> list[dict]:
    return _samples_from_bytes(path.read_bytes())


def _samples_from_bytes(data: bytes) -> list[dict]:
    out: dict[str, dict] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {"__key__": key})[ext] = tar.extractfile(m).read()
    return list(out.values())


# -- seeded, resumable training streams -------------------------------------------------------------
class Seen(Callback):
    """The (clip, frame or window start) of every item of every training batch, in order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        where = batch["frame"] if "frame" in batch else batch["start"]
        self.items += list(zip(batch["key"], where.tolist()))


def _a2e(root: Path, workers: int, seed: int | None = None) -> tuple[A2EDataModule, A2EModule]:
    dm = A2EDataModule(str(root), window=8, num_history=4, audio_features=AUDIO_NAME, audio_dim=16, batch_size=3, num_workers=workers,
                       clip_shuffle=2, train_batches_per_epoch=4, seed=seed)
    net = A2ETransformer(audio_dim=16, d_model=16, num_heads=2, cmsa_layers=1, tca_layers=1)
    return dm, A2EModule(net, window=8, num_history=4)


def _fit(dm, module, steps: int, root: Path, ckpt: str | None = None, every: int | None = None) -> list[tuple[str, int]]:
    seen = Seen()
    callbacks = [seen] + ([ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1, filename="k")] if every else [])
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=bool(every), enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=callbacks, default_root_dir=root)
    trainer.fit(module, dm, ckpt_path=ckpt)
    return seen.items


@pytest.fixture(scope="module")
def windows(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("windows"), {"train": 5, "val": 1}, frames=32, maxcount=2)


def test_the_same_run_seed_gives_the_same_batches_and_another_seed_others(windows, tmp_path):
    runs = []
    for seed in (3, 3, 4):
        L.seed_everything(seed)  # the data seed follows the run's seed when the data config sets none
        runs.append(_fit(*_a2e(windows, workers=2), steps=6, root=tmp_path))
    assert runs[0] == runs[1] and runs[0] != runs[2] and len(runs[0]) == 18


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_run_sees_what_an_uninterrupted_one_sees(windows, tmp_path, workers):
    """Killed after 6 of 10 steps (mid-epoch: 4 batches per epoch) and resumed from the checkpoint at 6: the same
    items in the same order as an uninterrupted run, none seen twice, none skipped."""
    L.seed_everything(0)
    whole = _fit(*_a2e(windows, workers), steps=10, root=tmp_path / "whole")
    L.seed_everything(0)
    first = _fit(*_a2e(windows, workers), steps=6, root=tmp_path / "cut", every=6)
    rest = _fit(*_a2e(windows, workers), steps=10, root=tmp_path / "cut", ckpt=str(tmp_path / "cut" / "k.ckpt"))
    assert len(whole) == 30 and first + rest == whole


def test_a_loader_state_from_other_ranks_or_workers_restarts_the_epoch_with_a_warning(windows, tmp_path, caplog):
    L.seed_everything(0)
    _fit(*_a2e(windows, workers=0), steps=2, root=tmp_path, every=2)
    dm, module = _a2e(windows, workers=2)
    with caplog.at_level("WARNING"):
        _fit(dm, module, steps=4, root=tmp_path, ckpt=str(tmp_path / "k.ckpt"))
    assert "loader state is for 1 loader slots" in caplog.text


def test_mouth_response_is_the_same_with_0_and_2_workers(frames):
    """Each evaluation item carries its partner frame, so the pairs do not depend on how items are dealt."""
    values = []
    for workers in (0, 2):
        torch.manual_seed(0)
        module = tiny_module()
        for name, p in module.net.named_parameters():
            if name.endswith("adain.mlp.4.weight"):
                p.data.normal_(0, 0.5)  # an AdaIN that does respond to β
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        dm = RendererDataModule(str(frames), image_size=64, num_workers=workers, eval_batch_size=3, eval_stride=2)
        values.append(trainer.validate(module, datamodule=dm, verbose=False)[0])
    assert values[0]["val/mouth_response"] > 0.01
    assert values[0].keys() == values[1].keys() and all(abs(values[0][k] - values[1][k]) <= 1e-6 * max(1, abs(values[0][k])) for k in values[0])


# -- evaluation dealt by clip across real processes -------------------------------------------------
VALIDATE_DRIVER = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
import lightning as L, torch
from datamodules.renderer_datamodule import RendererDataModule
from tests.test_renderer import tiny_module

shards, out, devices, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

class Counting(RendererDataModule):
    def _eval_stream(self, raw):  # one line per sample this process decodes for evaluation
        with open(out / f"decoded-rank{{self._rank}}-pid{{os.getpid()}}.txt", "a") as f:
            f.write(raw["__key__"] + "\\n")
        yield from super()._eval_stream(raw)

torch.manual_seed(0)
module = tiny_module()
for name, p in module.net.named_parameters():
    if name.endswith("adain.mlp.4.weight"):
        p.data.normal_(0, 0.5)
dm = Counting(shards, image_size=32, num_workers=workers, eval_batch_size=4, eval_stride=2)
trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                    enable_progress_bar=False, enable_model_summary=False)
metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
if trainer.is_global_zero:
    (out / "metrics.json").write_text(json.dumps(metrics))
"""


@pytest.mark.ddp
def test_validation_at_world_size_2_decodes_a_quarter_per_process_and_equals_one_process(tmp_path):
    root = write_synthetic_shards(tmp_path / "shards", {"train": 1, "val": 8}, frames=12, image_size=32, maxcount=3)
    driver = tmp_path / "validate.py"
    driver.write_text(VALIDATE_DRIVER.format(repo=str(REPO)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"world{devices}"
        out.mkdir()
        proc = subprocess.run([sys.executable, str(driver), str(root), str(out), str(devices), "2"], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        decoded = {p.name: p.read_text().split() for p in out.glob("decoded-*.txt")}
        results[devices] = (json.loads((out / "metrics.json").read_text()), decoded)
    one, (two, decoded) = results[1][0], results[2]
    per_process = sorted(len(keys) for keys in decoded.values())
    assert per_process == [2, 2, 2, 2]  # 2 ranks x 2 workers, a quarter of the 8 clips each
    assert sorted(k for keys in decoded.values() for k in keys) == [f"syn_val_{i}" for i in range(8)]  # each clip once
    assert Counter(name.split("-pid")[0] for name in decoded) == {"decoded-rank0": 2, "decoded-rank1": 2}
    assert one.keys() == two.keys() and one["val/mouth_response"] > 0
    assert all(abs(one[k] - two[k]) <= 1e-5 * max(1.0, abs(one[k])) for k in one), {k: (one[k], two[k]) for k in one}
