"""``python -m datamodules.bench --shards DIR``: what the training loaders deliver per loader process.

Rows (each on the shards given; ``make bench`` runs it on the demo shards):
  renderer train, before   the schema-1 reader's work per image, as it was: the whole clip decoded, the
                           chosen frames resized and masked on the CPU, float32 examples collated
  renderer train, now      the RendererDataModule's training loader in this process (num_workers 0): only
                           the chosen frames decoded, uint8 crops and coefficients collated
  renderer device work     what ``on_after_batch_transfer`` then does on the batch's device (float images,
                           resize, masks), timed on this CPU: on a GPU it is not the loader's cost
  renderer train, N wkrs   the loader with ``--workers`` processes, per process
  a2e train                A2E windows/s of its training loader in this process
  val items                renderer validation items/s in this process (clips dealt before decoding)

The last line reads ``renderer <size> px: <N> images/s per loader process; <K> loader processes per 500
images/s`` (500 images/s is about what one H100 trains at 256 px, ARCHITECTURE §7).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from datamodules.a2e_datamodule import A2EDataModule
from datamodules.face_masks import FaceMasker
from datamodules.renderer_datamodule import RendererDataModule
from datamodules.renderer_frames import scale_camera, to_images, valid_frames
from datamodules.shard_stream import split_shards
from preprocess.schema import decode_sample

GPU_IMAGES_PER_S = 500


def renderer_module(shards: str, face_model: str | None, size: int, workers: int, batches: int, batch_size: int = 16) -> RendererDataModule:
    dm = RendererDataModule(shards, image_size=size, face_model=face_model, batch_size=batch_size, eval_batch_size=batch_size,
                            num_workers=workers, train_batches_per_epoch=(batches + 2) * max(1, workers), seed=0)
    dm.setup("fit")
    return dm


def loader_rate(loader: Any, batches: int, count: str) -> float:
    """Items/s over the first ``batches`` batches, workers' start included: a round's items are made before its
    first batch leaves, so timing from a later batch on would leave that work out."""
    start, items, it = time.perf_counter(), 0, iter(loader)
    for _ in range(batches):
        items += len(next(it)[count])
    return items / (time.perf_counter() - start)


def v1_reader_rate(shards: str, face_model: str | None, size: int, images: int, frames_per_clip: int = 8, batch_size: int = 16) -> float:
    """Images/s of the schema-1 reader's per-image work (kept here as the baseline it was measured against)."""
    masker, rng, done, batch = FaceMasker(face_model), np.random.default_rng(0), 0, []
    raws = iter(RendererDataModule(shards, face_model=face_model).raw_samples("train"))
    start = time.perf_counter()
    while done < images:
        try:
            raw = next(raws)
        except StopIteration:
            raws = iter(RendererDataModule(shards, face_model=face_model).raw_samples("train"))
            continue
        clip = decode_sample(raw, frames=True)  # the whole clip
        valid = valid_frames(clip)
        if not len(valid):
            continue
        src = rng.choice(valid, frames_per_clip, replace=len(valid) < frames_per_clip)
        c, crop = clip["coeffs"], int(clip["meta"]["crop_size"])
        coeffs = {k: torch.from_numpy(c[k][src].astype(np.float32)) for k in ("shape", "exp", "pose")}
        coeffs["camera"] = torch.from_numpy(scale_camera(c["camera"][src].astype(np.float32), crop, size))
        mask, teeth = masker(coeffs["shape"], coeffs["exp"], coeffs["pose"], coeffs["camera"], size)
        source, reference = to_images(clip["frames"][src], size), to_images(clip["frames"][np.full_like(src, valid[0])], size)
        for i in range(len(src)):
            batch.append({"source": source[i], "reference": reference[i], "mask": mask[i], "teeth": teeth[i], **{k: v[i] for k, v in coeffs.items()}})
            if len(batch) == batch_size:
                default_collate(batch)
                batch, done = [], done + batch_size
    return done / (time.perf_counter() - start)


def device_work_rate(dm: RendererDataModule, batches: int, device: str = "cpu") -> float:
    """Images/s of ``finish_batch`` on ``device``, on batches the loader made (already on the device)."""
    it = iter(dm.train_dataloader())
    ready = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in next(it).items()} for _ in range(min(batches, 4))]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    dm.finish_batch({k: v.clone() if torch.is_tensor(v) else v for k, v in ready[0].items()})  # warm-up (kernels, the masker's move)
    sync()
    start, images = time.perf_counter(), 0
    for i in range(batches):
        batch = {k: v.clone() if torch.is_tensor(v) else v for k, v in ready[i % len(ready)].items()}
        images += len(dm.finish_batch(batch)["source"])
    sync()
    return images / (time.perf_counter() - start)


def a2e_module(shards: str, face_model: str | None, workers: int, batches: int) -> A2EDataModule:
    import webdataset as wds

    first = next(iter(wds.WebDataset(split_shards(shards, "train")[0], shardshuffle=False, empty_check=False)))
    features = json.loads(first["meta.json"])["audio_features"]
    dm = A2EDataModule(shards, audio_features=features["name"], audio_dim=features["dim"], face_model=face_model, batch_size=64,
                       num_workers=workers, train_batches_per_epoch=(batches + 2) * max(1, workers), seed=0)
    dm.setup("fit")
    return dm


def eval_rate(dm: RendererDataModule) -> float:
    """Validation items/s: every item of the val split once."""
    start, items = time.perf_counter(), 0
    for batch in dm.val_dataloader():
        items += len(batch["source"])
    return items / (time.perf_counter() - start)


def measure(shards: str, face_model: str | None, size: int, workers: int, batches: int, device: str = "cpu") -> list[tuple[str, float, str]]:
    """(row, rate, unit) for the rows of the module docstring; the device work timed on ``device``."""
    torch.set_num_threads(1)  # a loader process is one core
    dm = renderer_module(shards, face_model, size, 0, batches)
    now = loader_rate(dm.train_dataloader(), batches, "source")
    before = v1_reader_rate(shards, face_model, size, images=min(batches, 12) * 16)
    rows = [
        ("renderer train, before (whole clip decoded, masks on the CPU)", before, "images/s"),
        ("renderer train, now (chosen frames decoded, uint8)", now, "images/s"),
        ("  now / before", now / before, "x"),
        (f"renderer device work, on {device} (float, resize, masks)", device_work_rate(dm, batches, device), "images/s"),
    ]
    if workers > 0:
        many = loader_rate(renderer_module(shards, face_model, size, workers, batches).train_dataloader(), batches, "source")
        rows.append((f"renderer train, {workers} workers, per worker", many / workers, "images/s"))
    rows.append(("a2e train", loader_rate(a2e_module(shards, face_model, 0, batches).train_dataloader(), batches, "audio"), "windows/s"))
    rows.append(("val items (renderer)", eval_rate(dm), "items/s"))
    return rows


def summary_line(size: int, per_process: float) -> str:
    return f"renderer {size} px: {per_process:.1f} images/s per loader process; {math.ceil(GPU_IMAGES_PER_S / per_process)} loader processes per {GPU_IMAGES_PER_S} images/s"


def main(argv: list[str] | None = None) -> None:
    from preprocess.bench import _cpu_name, format_table

    ap = argparse.ArgumentParser(prog="python -m datamodules.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="sharded_data/demo", help="shard folder with a train and a val split (default: make demo's)")
    ap.add_argument("--face-model", default=None, help="the face model .npz the shards were made with (default: the shipped one)")
    ap.add_argument("--workers", type=int, default=0, help="also time the loader with this many worker processes")
    ap.add_argument("--size", type=int, default=256, help="image side the renderer trains at")
    ap.add_argument("--batches", type=int, default=40, help="timed batches of 16 per row (a round of 16 clips makes 128 images)")
    args = ap.parse_args(argv)
    if not Path(args.shards).is_dir():
        ap.error(f"no shard folder {args.shards}: make demo writes sharded_data/demo, make corpus-shards sharded_data/talking")
    rows = measure(args.shards, args.face_model, args.size, args.workers, args.batches)
    print(f"data loaders on {args.shards}, {args.size} px: {_cpu_name()}, one core per loader process, {time.strftime('%Y-%m-%d')}\n")
    print(format_table(["row", "rate", "unit"], [(name, f"{rate:,.1f}", unit) for name, rate, unit in rows]))
    print(summary_line(args.size, rows[1][1]))


if __name__ == "__main__":
    main()
