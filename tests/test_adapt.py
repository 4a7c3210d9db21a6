"""`adapt` on a real bundled clip (6 s: bbaf2n twice) from a tiny renderer `fit` wrote: shards cut 80/20, fine-tuning
from its weights with a run naming its parent, the table on the held-out end, resume, dub taking the result, bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lightning_modules.inference.dub import dub_one
from lightning_modules.inference.networks import load_pair
from lightning_modules.renderer.adapt import main as adapt_main
from preprocess.media import iter_frames, load_audio, probe
from tests.conftest import SAMPLES, write_video
from tests.synthetic_shards import write_synthetic_shards
from tests.test_training_cli import RENDERER_BASE, mlflow_runs, run_cli, tiny_args
from tests.tiny_checkpoints import tiny_a2e


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapt")
    shards = write_synthetic_shards(root / "shards", {"train": 2, "val": 1}, frames=24, image_size=64)
    run_cli(root, "fit", *tiny_args(shards, base=RENDERER_BASE), "--trainer.max_steps", "4", "--trainer.logger.init_args.run_name", "generic")
    frames = np.stack(list(iter_frames(SAMPLES / "bbaf2n.mpg")))
    audio = load_audio(SAMPLES / "bbaf2n.mpg")[: len(frames) * 640]
    video = write_video(root / "person.mp4", np.concatenate([frames, frames]), audio=np.concatenate([audio, audio]))
    return {"root": root, "renderer": root / "checkpoints" / "realtalk" / "generic" / "last.ckpt", "video": video}


def test_adapt_fine_tunes_checks_resumes_and_dub_takes_it(setup, capsys) -> None:
    root, out = setup["root"], setup["root"] / "out"
    args = ["adapt", "--video", str(setup["video"]), "--renderer", str(setup["renderer"]), "--minutes", "0.1", "--out", str(out),
            "--image-size", "96", "--detail", "2", "--cache-dir", str(root / "cache"), "--metrics", "quality", "sharpness", "--no-progress"]
    first = run_cli(root, *args)
    assert "samples written            2" in first.stdout  # the video's start (train) and end (val)
    assert (out / "renderer.ckpt").is_file()
    data = yaml.safe_load((out / "fit.yaml").read_text())["data"]["init_args"]
    assert (data["image_size"], data["batch_size"]) == (96, 1)  # the generic one's 64 px and batch 2, the batch scaled by the sides
    trained = torch.load(out / "renderer.ckpt", map_location="cpu", weights_only=False)["optimizer_states"]
    assert [(g["lr"], tuple(g["betas"])) for o in trained for g in o["param_groups"]] == [(1e-3, (0.9, 0.999))] * 2  # adapt's, not the preset's
    rows = {r["system"]: r for r in csv.DictReader(open(out / "eval" / "table.csv"))}
    assert set(rows) == {"fitted β (a perfect A2E) + generic", "fitted β (a perfect A2E) + adapt-person",
                         "baseline: reference frame's lower face", "baseline: source blurred in the mask"}
    assert all(0 < float(r["SSIM"]) < 1 and float(r["Sharpness"]) > 0 for r in rows.values())
    assert "| fitted β (a perfect A2E) + adapt-person |" in first.stdout and (out / "table.md").read_text().count("| reconstruction |") == 4
    client, runs = mlflow_runs(root)
    run = next(r for r in runs if r.info.run_name == "adapt-person")
    assert run.data.tags["parent/run_name"] == "generic"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss/l1")]
    assert steps and steps[0] < 10  # a new run from step 0, not the parent's count
    assert client.get_metric_history(run.info.run_id, "train/loss/detail")  # --detail turned the term on (the preset has it off)

    # the same command again: the shards come from the cache, the fine-tuning resumes its run and its clock
    second = run_cli(root, *args)
    assert "samples written" not in second.stdout and "resuming the fine-tuning" in second.stderr
    assert [r.info.run_name for r in mlflow_runs(root)[1]].count("adapt-person") == 1
    # resumed with another setting, it stops before training rather than change what the run learns halfway
    assert adapt_main([*args[1:], "--detail", "3"]) == 2
    assert "other settings (model.init_args.loss.init_args.lambda_detail: 2.0 -> 3.0)" in capsys.readouterr().err

    a2e, renderer = load_pair(tiny_a2e(root / "a2e.ckpt"), out / "renderer.ckpt")
    report, _ = dub_one(setup["video"], SAMPLES / "lbax4n.mpg", root / "dubbed.mp4", a2e, renderer, progress=False, cache_dir=root / "avatars")
    assert report.redrawn > 0 and probe(root / "dubbed.mp4").has_audio
    assert renderer.image_size == 96  # dub renders at the size it was adapted at


def test_adapt_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys) -> None:
    common = ["--minutes", "0.1", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert adapt_main(["--video", str(tmp_path / "nope.mp4"), "--renderer", str(setup["renderer"]), *common]) == 2
    assert "no such file" in capsys.readouterr().err
    a2e = tiny_a2e(tmp_path / "a2e.ckpt")
    assert adapt_main(["--video", str(setup["video"]), "--renderer", str(a2e), *common]) == 2
    assert "not a FIARenderer" in capsys.readouterr().err
    assert adapt_main(["--video", str(setup["video"]), "--renderer", str(setup["renderer"]), "--image-size", "100", *common]) == 2
    assert "--image-size 100: give a multiple of 16" in capsys.readouterr().err
    assert adapt_main(["--video", str(setup["video"]), "--renderer", str(setup["renderer"]), "--detail", "-1", *common]) == 2
    assert "--detail -1.0: give a weight of 0 or more" in capsys.readouterr().err
    blank = write_video(tmp_path / "wall.mp4", np.full((150, 96, 128, 3), 90, np.uint8), audio=np.zeros(150 * 640, np.float32))
    assert adapt_main(["--video", str(blank), "--renderer", str(setup["renderer"]), *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "wall.mp4" in err and "face" in err
    short = write_video(tmp_path / "short.mp4", np.stack(list(iter_frames(SAMPLES / "bbaf2n.mpg")))[:75],
                        audio=load_audio(SAMPLES / "bbaf2n.mpg")[: 75 * 640])
    assert adapt_main(["--video", str(short), "--renderer", str(setup["renderer"]), *common]) == 2
    assert "lasts 3.0 s; adapt needs at least 5 s" in capsys.readouterr().err
