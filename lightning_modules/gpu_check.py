"""``python -m lightning_modules.gpu_check`` (``make gpu-check``): the one prepared check for a task lent a GPU.

A device is lent for 15 minutes, start included, with no internet: this script spends them measuring.
Each part runs in its own process under a time cap; a part that fails or runs out of time prints its
error and the others go on. At the end one table, printed and written to ``$OUT/gpu_check.md``.

Parts:
  tests            pytest -m gpu tests/test_gpu.py: a bf16 fit of each stage on CUDA, CUDA outputs equal CPU's
  a2e-infer        A2E transformer (paper size): fp32, bf16, bf16 + torch.compile; 1 and 256 windows per call
  renderer-infer   FIA renderer, 256 px, 69 M parameters: fp32, bf16, bf16 + torch.compile; batch 1 and 32
  a2e-train        A2E training steps (bf16-mixed) replaying a real batch of the demo shards: windows/s
  renderer-train   GAN steps (critic on), 256 px, bf16-mixed, batch 8/16/32: images/s (perceptual VGG16 with
                   random weights: the weights store does not travel, and speed does not depend on the values);
                   at batch 16 fp16 (GradScaler), channels_last, EMA and compile against plain bf16; DDP all-reduce bytes
  data             datamodules.bench on the demo shards: loader images/s per process (before/now), the masks'
                   device work on the GPU, 4 workers, A2E windows/s, validation items/s
  cli              python -m lightning_modules fit on the demo shards through the CLI, bf16-mixed, logger off; then
                   evaluate of those checkpoints on the device: frames/s

``--device cpu --tiny`` runs the same parts with tiny networks on the CPU (``make gpu-check DEVICE=cpu``, the
dry run a test calls), so the script is known to work before a device ever sees it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAPS = {"tests": 60, "a2e-infer": 35, "renderer-infer": 70, "a2e-train": 30, "renderer-train": 150, "data": 45, "cli": 120}
"""Seconds per part on a device: 510 together, inside the 10 minutes one call may spend."""
ROW = "GPU-CHECK-ROW "


@dataclass
class Row:
    part: str
    case: str
    ms: float | None = None
    rate: float | None = None
    unit: str = ""
    peak_mib: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        return [self.part, self.case, f"{self.ms:,.2f}" if self.ms is not None else "—",
                f"{self.rate:,.1f} {self.unit}" if self.rate is not None else "—",
                f"{self.peak_mib:,.0f}" if self.peak_mib is not None else "—", self.note]


def emit(row: Row) -> None:
    """One result, as soon as it exists: a part killed at its cap keeps what it printed."""
    print(ROW + json.dumps(asdict(row)), flush=True)


# -- the parts (each runs in a child process) ---------------------------------------------------------
def _precisions(args: argparse.Namespace) -> Iterator[tuple[str, bool, bool]]:
    """(label, bf16, compiled); the compiled case last: its compilation is the slowest thing a part does."""
    yield "fp32", False, False
    yield "bf16", True, False
    if not args.no_compile:
        yield "bf16+compile", True, True


def _infer(args: argparse.Namespace, part: str, net: object, make_inputs: Callable[[int], tuple], batches: tuple[int, ...],
           unit: str, per_item_note: Callable[[float], str]) -> None:
    import torch

    from lightning_modules.throughput import timed_call

    net = net.to(args.device).eval()
    for label, bf16, compiled in _precisions(args):
        model = torch.compile(net) if compiled else net
        amp = torch.autocast(args.device, dtype=torch.bfloat16) if bf16 else nullcontext()
        for batch in batches:
            inputs = tuple(x.to(args.device) for x in make_inputs(batch))

            def call(model: object = model, inputs: tuple = inputs, amp: object = amp) -> None:
                with torch.inference_mode(), amp:
                    model(*inputs)

            seconds, peak = timed_call(call, args.device, repeats=3 if args.tiny else 20, warmup=2 if compiled else 1)
            emit(Row(part, f"{label}, batch {batch}", 1e3 * seconds, batch / seconds, unit, peak, per_item_note(seconds / batch)))


def part_a2e_infer(args: argparse.Namespace) -> None:
    import torch

    from lightning_modules.a2e.transformer import A2ETransformer

    torch.manual_seed(0)
    size = {"d_model": 32, "num_heads": 2, "cmsa_layers": 1, "tca_layers": 1} if args.tiny else {}
    net = A2ETransformer(audio_dim=384, shape_dim=9, exp_dim=64, **size)
    window, hop = 16, 8  # streaming with the default overlap: 8 new frames per window

    def inputs(b: int) -> tuple:
        return torch.randn(b, 2 * window, 384), torch.randn(b, 9), torch.randn(b, 16, 64)

    _infer(args, "a2e-infer", net, inputs, (1, 8) if args.tiny else (1, 256), "windows/s",
           lambda s: f"{hop / s:,.0f} frames/s streamed ({hop} new frames per 16-frame window)")


def part_renderer_infer(args: argparse.Namespace) -> None:
    import torch

    from lightning_modules.renderer.bench import EXP_DIM, SHAPE_DIM, _inputs
    from lightning_modules.renderer.generator import FIARenderer

    torch.manual_seed(0)
    tiny = {"widths": (8, 16, 16, 32), "decoder_widths": (8, 16, 16, 32), "blocks": 1, "encoder_blocks": 1, "attention_heads": 2, "mlp_hidden": 16}
    net = FIARenderer(SHAPE_DIM, EXP_DIM, **(tiny if args.tiny else {}))
    size = 64 if args.tiny else 256
    _infer(args, "renderer-infer", net, lambda b: _inputs(b, size, "cpu"), (1, 4) if args.tiny else (1, 32), "frames/s",
           lambda s: f"{1e3 * s:,.2f} ms/frame at {size} px")


def _precision(args: argparse.Namespace) -> str:
    return "bf16-mixed" if args.device == "cuda" else "32-true"  # bf16 on a CPU is emulated: minutes per step


def part_renderer_train(args: argparse.Namespace) -> None:
    """GAN steps (critic on): bf16 at batch 8/16/32, then at batch 16 each option against plain bf16 eager: fp16 (GradScaler),
    channels_last, the generator EMA, both networks compiled; and the gradient all-reduce bytes per iteration under DDP."""
    from lightning_modules.renderer.bench import EXP_DIM, SHAPE_DIM, paper_size_module, training_batches
    from lightning_modules.renderer.discriminator import PatchDiscriminator
    from lightning_modules.renderer.generator import FIARenderer
    from lightning_modules.renderer.loss import PerceptualLoss, RendererLoss
    from lightning_modules.renderer.module import RendererModule
    from lightning_modules.throughput import fit_rate

    size, steps = (64, 4) if args.tiny else (256, 12)
    backbone = "efficientnet_lite0" if args.tiny else "vgg16"  # the dry run's CPU is slow enough
    precision = _precision(args)

    def module(**options: object) -> RendererModule:
        perceptual = PerceptualLoss(backbone, pretrained=False)
        if args.tiny:
            net = FIARenderer(SHAPE_DIM, EXP_DIM, widths=(8, 16, 16, 32), decoder_widths=(8, 16, 16, 32), blocks=1, encoder_blocks=1, attention_heads=2, mlp_hidden=16)
            return RendererModule(net, PatchDiscriminator(width=8, layers=2), RendererLoss(perceptual), disc_start_step=0, **options)
        m = paper_size_module(perceptual)
        return RendererModule(m.net, m.discriminator, m.loss, disc_start_step=0, **options)

    b = 2 if args.tiny else 16  # the batch the options are compared at, against plain mixed precision at that batch
    cases = [(f"{precision}, batch {n}", precision, n, {}) for n in ((2,) if args.tiny else (8, 16, 32))]
    if args.device == "cuda":
        cases.append((f"16-mixed (GradScaler), batch {b}", "16-mixed", b, {}))
    cases += [(f"{precision} + channels_last, batch {b}", precision, b, {"channels_last": True}),
              (f"{precision} + EMA 0.999, batch {b}", precision, b, {"ema_decay": 0.999})]
    if not args.no_compile:
        cases.append((f"{precision} + compile (G and D apart), batch {b}", precision, b, {"compile": True}))
    base = None
    for label, prec, batch, options in cases:
        warmup = 6 if options.get("compile") else 3  # compilation happens in the first steps
        rate, peak = fit_rate(module(**options), training_batches(batch, size, steps + warmup), batch, args.device, prec, warmup=warmup)
        plain = prec == precision and not options
        if plain and batch == b:
            base = rate
        note = f"generator + critic + {backbone} perceptual (random weights) per step" if plain else f"{rate / base:.2f}x plain {precision} at batch {b}"
        emit(Row("renderer-train", f"{label}, {size} px", 1e3 * batch / rate, rate, "images/s", peak, note))
    m = module()
    g, d = (sum(p.numel() for p in n.parameters() if p.requires_grad) for n in (m.net, m.discriminator))
    emit(Row("renderer-train", "DDP gradient all-reduce per iteration", None, None, "", None,
             f"ddp: {2 * 4 * (g + d) / 2**20:,.0f} MiB (both networks, twice); ddp_networks: {4 * (g + d) / 2**20:,.0f} MiB (each once); "
             "from the parameter counts, as the 2-rank gloo test counts them"))


def _a2e_datamodule(args: argparse.Namespace, workers: int, batches: int) -> object:
    from datamodules.a2e_datamodule import A2EDataModule

    window, history = (8, 4) if args.tiny else (16, 16)
    return A2EDataModule(args.shards, window=window, num_history=history, audio_features=args.audio_features, audio_dim=args.audio_dim,
                         batch_size=8 if args.tiny else 64, num_workers=workers, clip_shuffle=2, train_batches_per_epoch=batches)


def part_a2e_train(args: argparse.Namespace) -> None:
    import torch

    from lightning_modules.a2e.module import A2EModule
    from lightning_modules.a2e.transformer import A2ETransformer
    from lightning_modules.throughput import fit_rate

    dm = _a2e_datamodule(args, workers=0, batches=1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    size = {"d_model": 32, "num_heads": 2, "cmsa_layers": 1, "tca_layers": 1} if args.tiny else {}
    torch.manual_seed(0)
    net = A2ETransformer(audio_dim=args.audio_dim, shape_dim=batch["shape"].shape[-1], exp_dim=batch["exp"].shape[-1], **size)
    module = A2EModule(net, window=dm.hparams.window, num_history=dm.hparams.num_history)
    windows = len(batch["audio"])
    rate, peak = fit_rate(module, [batch] * (6 if args.tiny else 40), windows, args.device, _precision(args))
    emit(Row("a2e-train", f"{_precision(args)}, batch {windows} windows", 1e3 * windows / rate, rate, "windows/s", peak,
             f"{rate * dm.hparams.window:,.0f} frames/s of training targets (one real batch of {Path(args.shards).name}, replayed)"))


def part_data(args: argparse.Namespace) -> None:
    from datamodules.bench import measure, summary_line

    size, batches = (64, 3) if args.tiny else (256, 24)
    rows = measure(args.shards, None, size, workers=1 if args.tiny else 4, batches=batches, device=args.device)
    for name, rate, unit in rows:
        if unit != "x":
            stage = "a2e" if name.startswith("a2e") else "renderer"
            emit(Row("data", f"{stage}: {name}", None, rate, unit, None, "datamodules.bench (no training step)"))
    emit(Row("data", "renderer loader processes", None, None, "", None, summary_line(size, rows[1][1])))


def part_tests(args: argparse.Namespace) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"],
                          cwd=REPO, capture_output=True, text=True)
    summary = next((line for line in reversed(proc.stdout.splitlines()) if " in " in line and ("passed" in line or "skipped" in line or "failed" in line)), "")
    print(proc.stdout[-4000:], file=sys.stderr)
    emit(Row("tests", "pytest -m gpu tests/test_gpu.py", None, None, "", None, summary.strip("= ") or f"exit {proc.returncode}"))
    if proc.returncode not in (0, 5):
        raise SystemExit(f"pytest exit {proc.returncode}")


def part_cli(args: argparse.Namespace) -> None:
    """Both demo presets through ``fit`` (logger off), then ``evaluate`` of the two checkpoints on the demo shards' val
    and test clips (SSIM/PSNR only: the other metrics' weights and dlib do not travel): frames/s on the device."""
    trainer = "configs/trainer/gpu.yaml" if args.device == "cuda" else "configs/trainer/cpu.yaml"
    steps = "4" if args.tiny else "60"
    stages = {
        "a2e": ["configs/model/a2e.yaml", "configs/data/a2e.yaml", trainer, "configs/experiment/a2e_demo.yaml"]
        + (["configs/debug/tiny.yaml"] if args.tiny else []),
        "renderer": ["configs/model/renderer.yaml", "configs/data/renderer.yaml", trainer, "configs/experiment/renderer_demo.yaml"]
        + (["configs/debug/tiny_renderer.yaml"] if args.tiny else []),
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    with tempfile.TemporaryDirectory() as root:
        for stage, configs in stages.items():
            extra = ["--data.init_args.audio_features", args.audio_features, "--data.init_args.audio_dim", str(args.audio_dim)] if stage == "a2e" else [
                "--model.init_args.loss.init_args.perceptual.init_args.pretrained", "false"]  # the device has no EfficientNet weight package
            cmd = [sys.executable, "-m", "lightning_modules", "fit", *(a for c in configs for a in ("--config", str(REPO / c))),
                   "--data.init_args.shards", str(Path(args.shards).resolve()), *extra, "--trainer.logger", "false", "--trainer.max_steps", steps,
                   "--trainer.val_check_interval", str(int(steps) // 2), "--checkpoint.every_n_train_steps", steps,
                   "--trainer.default_root_dir", root, "--checkpoint.dirpath", f"{root}/{stage}"]
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - start
            ok = proc.returncode == 0 and (Path(root) / stage / "last.ckpt").is_file()
            if not ok:
                print(proc.stderr[-3000:], file=sys.stderr)
            emit(Row("cli", f"fit {stage}, {Path(trainer).stem} preset", None, None, "", None,
                     f"{'ok' if ok else 'FAILED, exit ' + str(proc.returncode)}: {steps} steps + validation in {seconds:.0f} s wall (start-up included)"))
        cmd = [sys.executable, "-m", "lightning_modules", "evaluate", "--a2e", f"{root}/a2e", "--renderer", f"{root}/renderer",
               "--shards", str(Path(args.shards).resolve()), "--split", "val", "test", "--metrics", "quality", "--videos", "0", "--no-mlflow",
               "--device", args.device, "--out", f"{root}/evaluation"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"evaluate exit {proc.returncode}")
        frames = sum(float(r["frames"]) for r in csv.DictReader(open(f"{root}/evaluation/table.csv")) if r["setting"] in ("reconstruction", "cross-audio"))
        emit(Row("cli", f"evaluate on {args.device}, 1 process", 1e3 * seconds / frames, frames / seconds, "frames/s", None,
                 f"{frames:.0f} frames (reconstruction + cross-audio, SSIM/PSNR) in {seconds:.0f} s wall, start-up included"))


PARTS: dict[str, Callable[[argparse.Namespace], None]] = {
    "tests": part_tests, "a2e-infer": part_a2e_infer, "renderer-infer": part_renderer_infer, "a2e-train": part_a2e_train,
    "renderer-train": part_renderer_train, "data": part_data, "cli": part_cli,
}


# -- the orchestrator ---------------------------------------------------------------------------------
def _child(args: argparse.Namespace, part: str) -> list[str]:
    flags = ["--device", args.device, "--shards", args.shards, "--audio-features", args.audio_features, "--audio-dim", str(args.audio_dim)]
    return [sys.executable, "-m", "lightning_modules.gpu_check", "--part", part, *flags, *(["--tiny"] if args.tiny else []),
            *(["--no-compile"] if args.no_compile else [])]


def run_part(args: argparse.Namespace, part: str, cap: float) -> list[Row]:
    """The rows a part printed, plus one saying how it ended when it did not end well."""
    start = time.perf_counter()
    print(f"[{part}] up to {cap:.0f} s", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(_child(args, part), cwd=REPO, capture_output=True, text=True, timeout=cap)
        out, err, ending = proc.stdout, proc.stderr, None if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired as e:
        out, err, ending = e.stdout or "", e.stderr or "", f"stopped at its {cap:.0f} s cap"
        out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
    rows = [Row(**json.loads(line[len(ROW):])) for line in out.splitlines() if line.startswith(ROW)]
    if ending:
        last = next((line.strip() for line in reversed(err.splitlines()) if line.strip()), "no output")
        print(err[-3000:], file=sys.stderr)
        rows.append(Row(part, ending, note=last[:200]))
    print(f"[{part}] {len(rows)} rows in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return rows


def compare_supply(rows: list[Row]) -> None:
    """Each data row against the fastest training step of its stage: can the loader keep the device busy?"""
    for stage in ("a2e", "renderer"):
        demand = max((r.rate for r in rows if r.part == f"{stage}-train" and r.rate), default=None)
        for r in rows:
            if demand and r.part == "data" and r.case.startswith(stage) and r.rate:
                r.note = f"{r.rate / demand:.2f}x what the fastest {stage}-train row consumes ({demand:,.1f}/s)"


def machine() -> str:
    import torch

    from preprocess.bench import _cpu_name

    gpu = f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)" if torch.cuda.is_available() else "no GPU"
    return f"{gpu}; {_cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lightning_modules.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny networks and few steps (the CPU dry run)")
    ap.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="default: every part, in this order")
    ap.add_argument("--shards", default="sharded_data/demo", help="shards the data, a2e-train and cli parts read (make demo's shard step)")
    ap.add_argument("--audio-features", default="whisper-tiny", help="the audio features those shards carry")
    ap.add_argument("--audio-dim", type=int, default=384)
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    ap.add_argument("--cap-scale", type=float, default=1.0, help="multiply every part's time cap")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check", help="folder for gpu_check.md (default $OUT, else ./gpu_check)")
    ap.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)  # internal: run one part in this process
    args = ap.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            ap.error("no CUDA device here: use --device cpu --tiny for the dry run")
    if args.part:
        PARTS[args.part](args)
        return 0
    rows = [row for part in args.parts for row in run_part(args, part, CAPS[part] * args.cap_scale)]
    compare_supply(rows)
    from preprocess.bench import format_table

    table = format_table(["part", "case", "ms / call", "throughput", "peak MiB", "note"], [r.cells() for r in rows])
    text = f"GPU check ({'tiny dry run, ' if args.tiny else ''}{args.device}): {machine()}\n\n{table}\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.md").write_text(text)
    print(f"wrote {out / 'gpu_check.md'}", file=sys.stderr)
    failed = [r for r in rows if r.case.startswith(("failed", "stopped"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
