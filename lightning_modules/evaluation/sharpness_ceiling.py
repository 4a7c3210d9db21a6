"""``python -m lightning_modules.evaluation.sharpness_ceiling``: the sharpest a renderer drawing at R px can look.

A rendering smaller than the crop is scaled up into it, so it cannot be sharper than the crop itself scaled down
to R px and back. This scores exactly that, with `evaluate`'s Sharpness metric: the validation crops of a shard
set, scaled down as training scales them (bilinear, antialiased) and back up as `dub` and `evaluate` do (bicubic,
and bilinear beside it), pasted under the renderer's region. Read a renderer's sharpness against the ceiling of
its size before training it longer: no amount of training passes it.

    python -m lightning_modules.evaluation.sharpness_ceiling --shards sharded_data/grid_s1 --sizes 128 192 256
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from datamodules.renderer_datamodule import RendererDataModule
from lightning_modules.inference.compose import to_crop_size
from metrics.sharpness import Sharpness

MODES = ("bicubic", "bilinear")


def ceiling(batches: Iterable[dict[str, torch.Tensor]], sizes: Sequence[int]) -> dict[tuple[int, str], float]:
    """Sharpness of each batch's ``source`` crops ([-1, 1]) rendered perfectly at each size and pasted back under
    its ``mask``, per (size, upscaling mode)."""
    scores = {(size, mode): Sharpness() for size in sizes for mode in MODES}
    for batch in batches:
        crop = (batch["source"] + 1) / 2
        region, side = batch["mask"], batch["source"].shape[-1]
        for size in sizes:
            small = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            scaled = {"bicubic": to_crop_size(small, region, side)[0],
                      "bilinear": F.interpolate(small, size=(side, side), mode="bilinear", align_corners=False)}
            for mode, image in scaled.items():
                scores[size, mode].update(crop * (1 - region) + image.clamp(0, 1) * region, crop, region)
    return {key: float(metric.compute()) for key, metric in scores.items()}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lightning_modules.evaluation.sharpness_ceiling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="a shard folder (its val split is read)")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192, 256], help="rendering sizes in px")
    p.add_argument("--crop", type=int, default=256, help="the crop size the renderings are pasted into (the shards' 256)")
    p.add_argument("--clips", type=int, default=10, help="validation clips (a fixed, seeded subset, as eval_clips)")
    p.add_argument("--eval-stride", type=int, default=8, help="every N-th frame of each clip")
    p.add_argument("--mask-neck", action=argparse.BooleanOptionalAction, default=True,
                   help="the region includes the neck (the renderer default; the s1 preset has --no-mask-neck)")
    args = p.parse_args(argv)
    data = RendererDataModule(args.shards, image_size=args.crop, num_workers=0, eval_clips=args.clips, eval_stride=args.eval_stride,
                              mask_neck=args.mask_neck, batch_size=16)
    data.setup("validate")
    batches = (data.on_after_batch_transfer(b, 0) for b in data.val_dataloader())
    scores = ceiling(batches, args.sizes)
    print(f"Sharpness ceiling (1 = as sharp as the crop) of {args.shards} val, {args.clips} clips, pasted into {args.crop} px:\n")
    print("| rendered at | " + " | ".join(f"{m} to {args.crop}" for m in MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    for size in args.sizes:
        print(f"| {size} px | " + " | ".join(f"{scores[size, m]:.3f}" for m in MODES) + " |")


if __name__ == "__main__":
    main()
