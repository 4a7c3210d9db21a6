"""``python -m lightning_modules adapt``: a trained renderer fine-tuned on one person's video, and checked.

    python -m lightning_modules adapt --video V --renderer CKPT --a2e CKPT --minutes 5 --out DIR

1. **Shards** of the video, as ``python -m preprocess shard`` makes them, with the renderer's face model:
   the first 80% of the video for training, the last 20% held out (``--holdout``). Cached per video
   content under ``$REALTALK_CACHE/adapt`` (like ``dub``'s face tracks), so a second adaptation of the
   same video skips this step.
2. **Fine-tuning**: ``fit --init_from CKPT`` with the checkpoint's own model and data options, except three: the
   crops' own size, 256 px (``--image-size``), the loss's detail term on (``--detail``), and Adam at 1e-3 for both
   networks (a checkpoint keeps no optimizer). The critic starts at once: it comes trained too. ``--minutes`` of
   training on the GPU when there is one, else the CPU, into ``DIR/checkpoints``; the MLflow run (experiment
   ``adapt``) names its parent.
   Stopped (Ctrl-C, a killed job), the same command resumes it until its time is spent; given other options,
   it stops with one line instead of changing the run halfway.
3. **Check** on the held-out end: the generic and the adapted renderer, driven by the clip's fitted
   expressions and (with ``--a2e``) by the A2E from its audio, beside the two baselines that need no
   training (the reference's lower face, the source blurred in the mask): ``DIR/table.md``, printed.
4. ``DIR/renderer.ckpt``: the adapted checkpoint; ``dub`` and ``stream`` take it as ``--renderer``.

The defaults are the sharpest recipe measured (docs/one_speaker.md): a 128 px generic renderer adapted at 256 px
draws at half its speed in ``dub`` and ``stream``. ``--image-size 128 --detail 0`` keeps the checkpoint's size and
loss: twice as fast, and much softer. Extra ``fit`` options follow ``--``, e.g. ``-- --trainer.max_steps 300``.
Bad input (no such file, no face, less than 5 s of face, a checkpoint of the other stage) gets one line and exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from tqdm import tqdm

from lightning_modules.inference.avatar import default_cache_dir, file_sha1
from lightning_modules.inference.networks import CheckpointError, load_pair, load_renderer, read_checkpoint
from preprocess.errors import ClipError, ConfigError
from preprocess.face_track import CropConfig

EXPERIMENT = "adapt"
MIN_FACE_SECONDS = 5.0
# keys LightningCLI links from the data config into the model's: given twice, jsonargparse refuses them
LINKED_MODEL_KEYS = ("window", "num_history", "face_model")
LINKED_NET_KEYS = ("audio_dim", "shape_dim", "exp_dim")
# A checkpoint keeps no optimizer (factories are left out of its hyperparameters), so adapt names its own, for both
# networks: Adam at 1e-3 (torch's default, which adapt used unnamed before) beat the presets' 1e-4 with β1 0.5, and
# 2e-3, on an adapted speaker at equal iterations (docs/one_speaker.md "How strong a detail term, and the learning rate").
OPTIMIZER = {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3, "betas": [0.9, 0.999]}}
# λ of the loss's detail term: at 256 px, 20 kept 0.78-0.88 of the source's sharpness on three adapted speakers, with
# their closest mouths (the same section)
DETAIL = 20.0


class TimeLeftBar(L.Callback):
    """A progress bar over the time budget (Lightning's own knows no total when ``max_time`` ends training)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.bar: tqdm | None = None
        self.timer: L.pytorch.callbacks.Timer | None = None  # Lightning's, which max_time adds and a resume restores

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.timer = next((c for c in trainer.callbacks if isinstance(c, L.pytorch.callbacks.Timer)), None)
        if trainer.is_global_zero and self.timer is not None:
            self.bar = tqdm(total=round(self.seconds), unit="s", desc="adapt", dynamic_ncols=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s{postfix}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.bar is None:
            return
        self.bar.n = min(round(self.timer.time_elapsed("train")), self.bar.total)
        loss = trainer.callback_metrics.get("train/loss/l1")
        left = self.bar.total - self.bar.n
        self.bar.set_postfix_str(f"{left // 60}:{left % 60:02d} left, step {trainer.global_step}" + (f", l1 {float(loss):.3f}" if loss is not None else ""),
                                 refresh=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def shard_video(video: Path, face_model: str | None, holdout: float, cache_dir: Path | None, progress: bool) -> Path:
    """The video's shards (train: its start, val: its end), made once per video content, face model and holdout."""
    from preprocess.config import ShardJob
    from preprocess.datasets import SplitConfig
    from preprocess.face_model import FaceModel
    from preprocess.media import probe
    from preprocess.runner import EXIT_OK, run_shard

    if (seconds := probe(video).duration) < MIN_FACE_SECONDS:
        raise ClipError("length", f"{video} lasts {seconds:.1f} s; adapt needs at least {MIN_FACE_SECONDS:.0f} s of one face")
    model_name = FaceModel(face_model).full_name
    key = hashlib.sha1(f"{file_sha1(video)}:{model_name}:{holdout}".encode()).hexdigest()[:16]
    out = (cache_dir or default_cache_dir().parent / "adapt") / key
    manifest = out / "manifest.json"
    if not manifest.is_file():
        job = ShardJob(dataset="folder", root=video, out=out, face_model=Path(face_model) if face_model else None,
                       split=SplitConfig(val_fraction=0.0, test_fraction=0.0, holdout=holdout), progress=progress,
                       workers=min(2, os.cpu_count() or 1))  # the start and the end at once
        if run_shard(job) != EXIT_OK:
            fails = [json.loads(ln) for ln in (out / "failures.jsonl").read_text().splitlines() if ln.strip()] if (out / "failures.jsonl").is_file() else []
            why = "; ".join(f"{f['key'].rsplit('_', 1)[-1]}: {f['reason']}" for f in fails) or "see the lines above"
            shutil.rmtree(out, ignore_errors=True)  # not a cache of a half-made video: the next try starts clean
            raise ClipError("shard", f"{video}: {why}")
    splits = json.loads(manifest.read_text())["splits"]
    seconds = {s: splits.get(s, {}).get("frames", 0) / 25 for s in ("train", "val")}
    if sum(seconds.values()) < MIN_FACE_SECONDS or not all(seconds.values()):
        raise ClipError("length", f"{video} has {seconds['train']:.1f} s of face to learn from and {seconds['val']:.1f} s to check on; "
                                  f"adapt needs at least {MIN_FACE_SECONDS:.0f} s of one face in all, in both parts")
    return out


def fit_config(ckpt: dict[str, Any], shards: Path, minutes: float, out: Path, run_name: str, gpu: bool, batch_size: int | None,
               progress: bool = True, image_size: int | None = None, detail: float | None = None) -> dict[str, Any]:
    """A ``fit`` config of the checkpoint's own model and data options, on ``shards``, for ``minutes`` of training.

    ``image_size`` other than the checkpoint's (the networks hold no size-bound weights) divides its batch size by the
    ratio of the sides, not of the areas: the measured 256 px recipe, batch 4 from a 128 px batch of 8 (docs/one_speaker.md).
    ``detail`` replaces the loss's λ_detail.
    """
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_") and k not in LINKED_MODEL_KEYS}
    hp["net"]["init_args"] = {k: v for k, v in hp["net"].get("init_args", {}).items() if k not in LINKED_NET_KEYS}
    hp["disc_start_step"] = 0  # the critic comes trained with the generator
    hp["compile"] = False
    hp["optimizer_g"] = hp["optimizer_d"] = OPTIMIZER
    if detail is not None:
        hp["loss"]["init_args"]["lambda_detail"] = detail
    data = {k: v for k, v in (ckpt.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
    data |= {"shards": str(shards), "exclude": None, "eval_clips": None, "train_batches_per_epoch": None,
             "num_workers": 1, "persistent_workers": True, "clip_shuffle": 1}
    if image_size and image_size != data["image_size"]:
        data["batch_size"] = max(1, data["batch_size"] * data["image_size"] // image_size)
        data["image_size"] = image_size
    if batch_size:
        data["batch_size"] = batch_size
    total = round(minutes * 60)
    return {
        "model": {"class_path": ckpt["hyper_parameters"]["_class_path"], "init_args": hp},
        "data": {"class_path": ckpt["datamodule_hyper_parameters"]["_class_path"], "init_args": data},
        "trainer": {
            "accelerator": "gpu" if gpu else "cpu", "devices": 1, "precision": "bf16-mixed" if gpu else "32-true",
            "max_steps": -1, "max_epochs": -1, "max_time": f"00:{total // 3600:02d}:{total // 60 % 60:02d}:{total % 60:02d}",
            "limit_val_batches": 0, "num_sanity_val_steps": 0, "log_every_n_steps": 10, "enable_progress_bar": False,
            "default_root_dir": str(out),
            "logger": {"class_path": "lightning_modules.tracking.run_logger.RunLogger",
                       "init_args": {"experiment_name": EXPERIMENT, "run_name": run_name}},
            "callbacks": [{"class_path": f"{__name__}.TimeLeftBar", "init_args": {"seconds": total}}] if progress else [],
        },
        "checkpoint": {"every_n_train_steps": 100},
    }


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"a.b.c": value}``."""
    if isinstance(tree, dict):
        return {key: value for name, sub in tree.items() for key, value in _leaves(sub, f"{prefix}{name}.").items()}
    return {prefix[:-1]: tree}


def fine_tune(renderer: Path, shards: Path, args: argparse.Namespace, fit_args: list[str]) -> Path:
    """Run (or resume, with the same options) the fine-tuning; the path of its final checkpoint."""
    from lightning_modules.cli import main as cli_main

    _, ckpt = read_checkpoint(renderer)
    run_name = f"adapt-{args.video.stem}"
    folder = args.out / "checkpoints" / EXPERIMENT / run_name
    config = fit_config(ckpt, shards, args.minutes, args.out, run_name, args.device == "cuda", args.batch_size, not args.no_progress,
                        args.image_size, args.detail)
    plain = json.loads(json.dumps(config))  # tuples a checkpoint may hold become lists, which YAML writes plainly
    resume = (folder / "last.ckpt").is_file()
    if resume and (args.out / "fit.yaml").is_file():  # a run resumed with other options would change what it learns halfway
        before = yaml.safe_load((args.out / "fit.yaml").read_text())
        old, new = (_leaves({k: tree.get(k) for k in ("model", "data")}) for tree in (before, plain))
        if changed := [f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]:
            raise ConfigError(f"{args.out} holds a fine-tuning begun with other settings ({'; '.join(changed[:3])}): "
                              "give the options it was started with to resume it, or another --out")
    (args.out / "fit.yaml").write_text(yaml.safe_dump(plain, sort_keys=False))
    start = ["--ckpt_path", "last"] if resume else ["--init_from", str(renderer)]
    if start[0] == "--ckpt_path":
        print(f"resuming the fine-tuning in {folder} (its time counts on from where it stopped)", file=sys.stderr)
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees both its args and this command's own
    try:
        cli_main(["fit", "--config", str(args.out / "fit.yaml"), *start, *fit_args])
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        sys.argv = argv
    if not (folder / "last.ckpt").is_file():
        raise ConfigError(f"the fine-tuning wrote no checkpoint into {folder}")
    return folder / "last.ckpt"


def check(a2e: str | None, generic: Path, adapted: Path, shards: Path, out: Path, device: str, metrics: list[str] | None = None) -> str:
    """evaluate's table of the generic and the adapted renderer on the held-out end, with both baselines."""
    from lightning_modules.evaluation import evaluate as ev

    argv = [*(["--a2e", a2e] if a2e else []), "--renderer", str(generic), str(adapted), "--shards", str(shards), "--split", "val",
            "--settings", "reconstruction", "--baselines", "reference", "blur", "--fitted", "--identity-every", "5",
            "--videos", "1", "--device", device, "--out", str(out / "eval"), "--no-mlflow", *(["--metrics", *metrics] if metrics else [])]
    table = ev.evaluate(ev.build_parser().parse_args(argv)) or ""
    (out / "table.md").write_text(table)
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lightning_modules adapt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=Path, required=True, help="the person's video (at least 5 s of their face, with sound)")
    p.add_argument("--renderer", required=True, help="the generic renderer: a .ckpt, or a run folder (its newest last.ckpt)")
    p.add_argument("--a2e", help="an A2E checkpoint of the same face model: adds the rows driven from the audio (dub's setting)")
    p.add_argument("--minutes", type=float, default=5.0, help="training time of the fine-tuning (default 5)")
    p.add_argument("--out", type=Path, required=True, help="output folder: renderer.ckpt, table.md, eval/, checkpoints/")
    p.add_argument("--holdout", type=float, default=0.2, help="share of the video at its end kept for the check (default 0.2)")
    p.add_argument("--image-size", type=int, default=CropConfig.size, help=f"rendering size in px (default {CropConfig.size}, the crops' own); "
                   "the batch scales by the ratio of the sides. A 128 px checkpoint's own size trains and dubs twice as fast, much softer")
    p.add_argument("--detail", type=float, default=DETAIL, metavar="LAMBDA", help=f"weight of the renderer loss's detail term (default {DETAIL:g}: "
                   "at 256 px the sharpest face measured without losing mouth accuracy; 0 = off, as in the presets)")
    p.add_argument("--batch-size", type=int, help="examples per step (default: the checkpoint's, scaled for --image-size)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda (bf16) or cpu")
    p.add_argument("--cache-dir", type=Path, help=f"where the video's shards are kept (default {default_cache_dir().parent / 'adapt'})")
    p.add_argument("--no-check", action="store_true", help="skip the table on the held-out end")
    p.add_argument("--metrics", nargs="+", help="the table's metrics (default: evaluate's, every one whose weights are here)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    fit_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.minutes <= 0 or not 0 < args.holdout < 1:
        return _fail("--minutes must be above 0 and --holdout between 0 and 1")
    if args.detail < 0:
        return _fail(f"--detail {args.detail}: give a weight of 0 or more")
    if not (32 <= args.image_size <= 512 and args.image_size % 16 == 0):
        return _fail(f"--image-size {args.image_size}: give a multiple of 16 from 32 to 512 (256 is the crops' own size)")
    if not args.video.is_file():
        return _fail(f"--video {args.video}: no such file")
    try:
        # with an A2E, both checked to share a face model: one line now rather than after the training
        renderer = load_pair(args.a2e, args.renderer)[1] if args.a2e else load_renderer(args.renderer)
        args.out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        shards = shard_video(args.video, renderer.face_model.path, args.holdout, args.cache_dir, not args.no_progress)
        print(f"shards of {args.video.name}: {shards}", file=sys.stderr)
        final = fine_tune(renderer.path, shards, args, fit_args)
        shutil.copyfile(final, args.out / "renderer.ckpt")
        print(f"adapted renderer: {args.out / 'renderer.ckpt'} (dub/stream --renderer); {time.perf_counter() - started:.0f} s so far", file=sys.stderr)
        if not args.no_check:
            print(check(args.a2e, renderer.path, args.out / "renderer.ckpt", shards, args.out, args.device, args.metrics))
    except (CheckpointError, ClipError, ConfigError) as e:
        return _fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
