"""The evaluation command end to end on tiny shards with tiny checkpoints, and its paste-back."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_modules.evaluation import evaluate as evaluate_module
from lightning_modules.evaluation.evaluate import baseline_crops, generate, load_clips, load_system, paste_back, with_frames
from lightning_modules.evaluation.table_metrics import default_metrics, every_nth
from lightning_modules.tracking.checkpoints import resolve_checkpoint
from preprocess.media import decode_mp4, load_audio, probe
from preprocess.weights import weights_available
from tests.conftest import write_video
from tests.synthetic_shards import write_synthetic_shards
from tests.test_training_cli import RENDERER_BASE, REPO, mlflow_runs, run_cli, tiny_args


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Tiny A2E checkpoints (with and without history) and a tiny renderer, on shards with frames and audio."""
    root = tmp_path_factory.mktemp("evaluate")
    shards = write_synthetic_shards(root / "shards", {"train": 2, "val": 1, "test": 2}, frames=24, image_size=64)
    run_cli(root, "fit", *tiny_args(shards), "--trainer.max_steps", "10", "--trainer.logger.init_args.run_name", "a2e-both")
    run_cli(root, "fit", *tiny_args(shards), "--trainer.max_steps", "10", "--trainer.logger.init_args.run_name", "a2e-nohistory",
            "--model.init_args.net.init_args.use_history", "false")
    run_cli(root, "fit", *tiny_args(shards, base=RENDERER_BASE), "--trainer.max_steps", "10", "--trainer.logger.init_args.run_name", "renderer")
    return root


def test_evaluate_writes_the_table_videos_with_audio_and_mlflow_metrics(trained) -> None:
    ck = trained / "checkpoints" / "realtalk"
    chosen = default_metrics(None, None)
    assert ("lpips" in chosen) == weights_available("alexnet") and ("fid" in chosen) == weights_available("fid-inception")
    # FID's Inception costs seconds per setting on a CPU; its numbers are tested against the reference tool elsewhere
    chosen = [m for m in chosen if m != "fid"]
    proc = run_cli(
        trained, "evaluate", "--a2e", str(ck / "a2e-both"), str(ck / "a2e-nohistory"), "--renderer", str(ck / "renderer"),
        "--shards", str(trained / "shards"), "--out", str(trained / "out"), "--videos", "1", "--calibration", "--metrics", *chosen,
        "--identity-every", "4",  # dlib's identity network is ~150 ms a frame here
        "--fd-every", "2",
        "--baselines", "reference", "blur", "--fitted",
    )
    assert "| reconstruction |" in proc.stdout and "| cross-audio |" in proc.stdout, proc.stdout
    rows = list(csv.DictReader(open(trained / "out" / "table.csv")))
    systems = {(r["system"], r["setting"]) for r in rows}
    assert {("a2e-both + renderer", "reconstruction"), ("a2e-nohistory + renderer", "cross-audio")} <= systems
    by_history = {r["use_history"] for r in rows if r["setting"] == "reconstruction" and not r["system"].startswith(("baseline:", "fitted β"))}
    assert by_history == {"True", "False"}  # the ablation switch is reported per row (Table 5)
    recon = next(r for r in rows if r["system"] == "a2e-both + renderer" and r["setting"] == "reconstruction")
    assert 0 < float(recon["SSIM"]) < 1 and float(recon["PSNR"]) > 5 and float(recon["FD_effnet"]) >= 0 and float(recon["ms/frame"]) > 0
    assert recon["Sync conf"] == "" and recon["FID"] == ""  # no SyncNet offline; FID not asked for here
    assert "fid (not asked for)" in (trained / "out" / "table.md").read_text()  # left out by --metrics, not for want of weights
    if weights_available("alexnet"):
        assert 0 < float(recon["LPIPS"]) < 1 and 0 < float(recon["LPIPS mouth"]) < 1
    else:
        assert recon["LPIPS"] == ""  # no weights: left out, never random
    baselines = [r for r in rows if r["system"].startswith("baseline:")]
    assert len(baselines) == 2 and {r["setting"] for r in baselines} == {"reconstruction"}  # once, not per A2E
    assert all(0 < float(r["SSIM"]) < 1 and float(r["PSNR mouth"]) > 0 for r in baselines)  # LMD is left out: dlib may find no face in synthetic frames
    fitted = [r for r in rows if r["system"].startswith("fitted β")]
    assert [(r["system"], r["setting"]) for r in fitted] == [("fitted β (a perfect A2E) + renderer", "reconstruction")]  # once per renderer
    assert float(fitted[0]["SSIM"]) != pytest.approx(float(recon["SSIM"]), abs=1e-6)  # other coefficients, other pixels
    itself = next(r for r in rows if r["setting"] == "vs itself")
    assert float(itself["SSIM"]) == pytest.approx(1.0, abs=1e-4)  # float32 SSIM maps

    videos = sorted((trained / "out").rglob("*.mp4"))
    assert len(videos) == 4  # 2 systems x 2 settings x 1 video
    for v in videos:
        info = probe(v)
        assert info.has_audio and info.width == 64 and info.fps == 25
        frames = decode_mp4(v.read_bytes())
        assert len(frames) == 24 and abs(len(load_audio(v)) / 16000 - 24 / 25) < 0.1

    client, runs = mlflow_runs(trained)
    renderer = next(r for r in runs if r.info.run_name == "renderer")
    metrics = client.get_run(renderer.info.run_id).data.metrics
    assert metrics["eval/a2e-both/reconstruction/ssim"] == pytest.approx(float(recon["SSIM"]))
    assert "eval/a2e-nohistory/cross-audio/fd_effnet" in metrics
    assert "eval/a2e-both/baseline-blur/reconstruction/ssim" in metrics
    assert metrics["eval/a2e-both/fitted/reconstruction/ssim"] == pytest.approx(float(fitted[0]["SSIM"]))
    artifacts = {f.path for f in client.list_artifacts(renderer.info.run_id, "eval")}
    assert {"eval/table.md", "eval/videos"} <= artifacts


def test_fitted_drives_the_renderer_with_the_clips_own_expressions(trained, monkeypatch) -> None:
    ck = trained / "checkpoints" / "realtalk"
    system = load_system(resolve_checkpoint(str(ck / "a2e-both")), resolve_checkpoint(str(ck / "renderer")), str(trained / "shards"), torch.device("cpu"))
    clip = with_frames(load_clips(system.data, ["test"], 1)[0])
    seen = []
    monkeypatch.setattr(evaluate_module, "redraw", lambda net, masker, source, reference, shape, exp, *rest: seen.append(exp) or (source, source[:, :1]))
    monkeypatch.setattr(evaluate_module, "predict_expressions", lambda *a: pytest.fail("the A2E ran for the fitted row"))
    list(generate(system, clip, clip, 10, torch.device("cpu"), fitted=True))
    assert torch.equal(torch.cat(seen), torch.from_numpy(clip["coeffs"]["exp"].astype(np.float32)))


def test_without_an_a2e_the_renderer_is_scored_alone(trained) -> None:
    """No --a2e: the fitted-expression row per renderer and the baselines, equal to those rows of a run with an A2E (adapt's table)."""
    ck = trained / "checkpoints" / "realtalk"
    tables = {}
    for name, a2e in (("alone", []), ("with", ["--a2e", str(ck / "a2e-both")])):
        args = evaluate_module.build_parser().parse_args([
            *a2e, "--renderer", str(ck / "renderer"), "--shards", str(trained / "shards"), "--out", str(trained / name), "--videos", "0",
            "--no-mlflow", "--metrics", "quality", "--baselines", "blur", "--fitted", "--settings", "reconstruction"])
        evaluate_module.evaluate(args)
        tables[name] = {r["system"]: r for r in csv.DictReader(open(trained / name / "table.csv"))}
    assert set(tables["alone"]) == {"baseline: source blurred in the mask", "fitted β (a perfect A2E) + renderer"}
    assert {r["setting"] for t in tables.values() for r in t.values()} == {"reconstruction"}  # --settings
    fitted = "fitted β (a perfect A2E) + renderer"  # the baselines' mask includes the A2E's mouth when there is one: not compared
    assert float(tables["alone"][fitted]["SSIM"]) == pytest.approx(float(tables["with"][fitted]["SSIM"]), abs=1e-6)
    proc = subprocess.run([sys.executable, "-m", "lightning_modules", "evaluate", "--renderer", str(ck / "renderer"), "--shards", str(trained / "shards")],
                          cwd=trained, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "--fitted" in proc.stderr


@pytest.mark.ddp
def test_evaluate_on_two_ranks_writes_the_table_of_one(trained) -> None:
    """--devices 2 (gloo): each rank scores its share of the clips and the metrics reduce over both; every value of
    the table (baselines, fitted row, calibration included) equals one process's to 1e-6. Not ms/frame: a timing."""
    ck = trained / "checkpoints" / "realtalk"
    tables = {}
    for devices in (1, 2):
        out = trained / f"ranks{devices}"
        run_cli(trained, "evaluate", "--a2e", str(ck / "a2e-both"), "--renderer", str(ck / "renderer"), "--shards", str(trained / "shards"),
                "--out", str(out), "--videos", "1", "--no-mlflow", "--metrics", "quality", "lmd", "fd_effnet", "--baselines", "blur", "--fitted",
                "--calibration", "--devices", str(devices))
        tables[devices] = list(csv.DictReader(open(out / "table.csv")))
        assert len(list(out.rglob("*.mp4"))) == 2  # the first pair of each setting, written by whichever rank scored it
    one, two = tables[1], tables[2]
    assert [(r["system"], r["setting"]) for r in one] == [(r["system"], r["setting"]) for r in two] and len(one) == 7
    for a, b in zip(one, two):
        for column, value in a.items():
            if column != "ms/frame" and value not in ("", None) and column not in ("system", "setting", "mask"):
                try:
                    x, y = float(value), float(b[column])
                except ValueError:
                    assert value == b[column], column
                    continue
                same = (x != x and y != y) or abs(x - y) <= 1e-6 * max(1.0, abs(x))  # NaN: dlib finds no face in these synthetic frames
                assert same, (a["system"], a["setting"], column, x, y)


def test_evaluate_stops_on_a_bad_pairing_file(trained, tmp_path) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("syn_test_0 no_such_clip\n")
    ck = trained / "checkpoints" / "realtalk"
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_modules", "evaluate", "--a2e", str(ck / "a2e-both"), "--renderer", str(ck / "renderer"),
         "--shards", str(trained / "shards"), "--pairs", str(pairs), "--out", str(tmp_path / "out"), "--no-mlflow"],
        cwd=trained, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode != 0 and "pairs.txt:1" in proc.stderr and "no_such_clip" in proc.stderr


def test_paste_back_puts_the_crop_where_it_was_cut(tmp_path) -> None:
    source = write_video(tmp_path / "src.mp4", np.full((3, 96, 128, 3), 40, np.uint8))
    crop = np.float32([[0.5, 0, -10], [0, 0.5, -4]])  # source px -> 32-px crop: covers x 20..84, y 8..72
    video = {"__key__": "k", "meta": {"source_path": str(source), "start": 0.0, "end": 3 / 25}, "coeffs": {"crop": np.tile(crop, (3, 1, 1))}}
    crops = np.full((3, 32, 32, 3), 200, np.uint8)
    mask = np.zeros((3, 32, 32), np.float32)
    mask[:, 16:] = 1  # only the lower half of the crop was redrawn
    out = paste_back(video, crops, mask)
    assert out.shape == (3, 96, 128, 3)
    assert abs(int(out[0, 60, 50, 0]) - 200) < 8  # lower half of the crop region: generated
    assert abs(int(out[0, 20, 50, 0]) - 40) < 8  # upper half: the original video
    assert abs(int(out[0, 60, 110, 0]) - 40) < 8  # outside the crop: the original video


def test_baselines_change_only_the_masked_region() -> None:
    torch.manual_seed(0)
    real, reference = torch.rand(2, 3, 64, 64), torch.rand(1, 3, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 32:, 16:48] = 1
    for name in ("reference", "blur"):
        out = baseline_crops(name, real, reference, mask)
        assert torch.equal(out[..., :32, :], real[..., :32, :])  # outside the mask: the true crop, untouched
    assert torch.equal(baseline_crops("reference", real, reference, mask)[..., 32:, 16:48], reference.expand(2, -1, -1, -1)[..., 32:, 16:48])
    inside = baseline_crops("blur", real, reference, mask)[..., 40:56, 24:40]
    assert inside.std() < 0.3 * real[..., 40:56, 24:40].std()  # noise blurred away, the mean kept
    assert abs(float(inside.mean() - real[..., 40:56, 24:40].mean())) < 0.02


def test_every_nth_follows_clip_frame_numbers_across_batches() -> None:
    # batches of 4 from clip frame 0: every 3rd clip frame is 0, 3, 6, 9 whatever the batch boundaries
    picked = [first + i for first in range(0, 12, 4) for i in every_nth(4, first, 3)]
    assert picked == [0, 3, 6, 9]
    assert every_nth(5, 7, 1) == [0, 1, 2, 3, 4]
