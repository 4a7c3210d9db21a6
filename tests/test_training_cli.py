"""The training CLI: config presets, MLflow runs, resume (1 process and DDP), run comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.synthetic_shards import AUDIO_NAME, write_synthetic_shards

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# no logger config: every fit is tracked in MLflow by default
BASE = ["model/a2e.yaml", "data/a2e.yaml", "trainer/cpu.yaml", "debug/tiny.yaml"]
MINIMAL = ["model/a2e.yaml", "data/a2e.yaml", "debug/tiny.yaml"]
RENDERER_BASE = ["model/renderer.yaml", "data/renderer.yaml", "trainer/cpu.yaml", "debug/tiny_renderer.yaml"]


def tiny_args(shards: Path, *extra_configs: str, base: list[str] = BASE) -> list[str]:
    """--config arguments for the tiny CPU run of a stage on synthetic shards."""
    args = [a for c in (*base[:-1], *extra_configs, base[-1]) for a in ("--config", str(CONFIGS / c))]  # tiny stays last
    if base is RENDERER_BASE:
        return [*args, "--data.init_args.shards", str(shards)]
    return [*args, "--data.init_args.shards", str(shards), "--data.init_args.audio_features", AUDIO_NAME, "--data.init_args.audio_dim", "16"]


def run_cli(cwd: Path, *args: str, module: str = "lightning_modules", timeout: int = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m module *args`` in ``cwd``, tracking into ``cwd/mlruns`` unless ``env`` says otherwise; asserts exit 0."""
    base = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), "HF_HUB_OFFLINE": "1"}
    base.pop("MLFLOW_TRACKING_URI", None)
    env = base | (env or {})
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def mlflow_runs(cwd: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def steps(client, run, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"), {"train": 3, "val": 2, "test": 2}, frames=40)


@pytest.fixture(scope="module")
def frame_shards(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("frames"), {"train": 3, "val": 2, "test": 2}, frames=24, image_size=64)


def every_preset() -> list[str]:
    return sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml") if p.parts[-2] != "preprocess")


@pytest.mark.parametrize("preset", every_preset())
def test_every_preset_parses_and_instantiates(preset, shards, frame_shards, monkeypatch, capsys):
    from lightning_modules.cli import RealTalkCLI

    renderer = "renderer" in preset
    # the synthetic shards' folder (and features) override the preset's
    args = tiny_args(frame_shards, preset, base=RENDERER_BASE) if renderer else tiny_args(shards, preset)
    args += ["--data.init_args.face_model", "null"]  # the synthetic shards' (a corpus preset names a model built from its corpus)
    with pytest.raises(SystemExit) as e:
        RealTalkCLI(args=["fit", *args, "--print_config"])
    assert e.value.code == 0 and "class_path" in capsys.readouterr().out
    if preset.startswith(("model/", "data/", "debug/", "experiment/")):
        cli = RealTalkCLI(args=args, run=False, trainer_defaults={"accelerator": "cpu", "devices": 1})
        cli.datamodule.setup("fit")
        if renderer:  # coefficient widths linked from the face model
            assert cli.model.net.coeff_dim == cli.datamodule.masker.face_model.shape_dim + cli.datamodule.masker.face_model.exp_dim + 6
        else:
            assert cli.model.net.audio_embed.in_features == 16  # linked from the data config


USER_ERRORS = {
    "no shards": (["--data.init_args.shards", "nowhere"], ["no 'train' shards in nowhere", "python -m preprocess shard"]),
    "shards of another audio extractor": (["--data.init_args.audio_features", "whisper-tiny"], ["audio features 'synthetic'", "regenerate the shards"]),
    "no such checkpoint": (["--ckpt_path", "nowhere.ckpt"], ["--ckpt_path nowhere.ckpt: no such checkpoint file"]),
    "a sqlite store for several machines": (["--trainer.num_nodes", "2"], ["2 nodes would track into the sqlite file", "make mlflow-server", "MLFLOW_TRACKING_URI"]),
    "unknown key": (["--model.init_args.net.init_args.d_modle", "8"], ["Option 'd_modle' is not accepted", "--model.init_args.net.help"]),
    "unknown key in a config file": (["--config", "typo.yaml"], ["Option 'lambda_vertx' is not accepted", "--model.help lightning_modules.a2e.module.A2EModule"]),
}


def check_user_error(code: int | None, stderr: str) -> str:
    """An expected user error: exit 2, one ``error:`` line last on stderr, no traceback; returns that line."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in stderr, stderr[-3000:]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr[-3000:]
    return errors[0]


def user_error(cwd: Path, *args: str) -> str:
    """Run ``python -m lightning_modules *args`` expecting an expected user error."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "lightning_modules", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return check_user_error(proc.returncode, proc.stderr)


# Runs the CLI's main() once per case in one process, each with its own working directory and file
# descriptor 2 (what Lightning's and our loggers write to), exiting as the real command would on an
# unexpected exception. One interpreter start instead of six: importing Lightning costs ~10 s here.
USER_ERROR_DRIVER = """
import json, os, sys, traceback
from lightning_modules.cli import main
results = {}
for name, cwd, args in json.loads(sys.argv[1]):
    os.chdir(cwd)
    sys.stderr.flush()
    saved = os.dup(2)
    with open("stderr.txt", "w") as f:
        os.dup2(f.fileno(), 2)
        try:
            main(args)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        os.dup2(saved, 2)
    os.close(saved)
    results[name] = [code, open("stderr.txt").read()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def user_errors(shards, tmp_path_factory) -> dict[str, tuple[int, str, Path]]:
    """Every USER_ERRORS case run by USER_ERROR_DRIVER: case -> (exit code, stderr, working directory)."""
    cases = []
    for name, (extra, _) in USER_ERRORS.items():
        cwd = tmp_path_factory.mktemp("user_error")
        (cwd / "typo.yaml").write_text("model:\n  init_args:\n    lambda_vertx: 0.3\n")
        cases.append((name, str(cwd), ["fit", *tiny_args(shards, base=MINIMAL), *extra]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-c", USER_ERROR_DRIVER, json.dumps(cases)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: (*results[name], Path(cwd)) for name, cwd, _ in cases}


@pytest.mark.parametrize("case", USER_ERRORS)
def test_an_expected_user_error_is_one_line_and_exit_2(case, user_errors):
    code, stderr, cwd = user_errors[case]
    error = check_user_error(code, stderr)
    assert all(text in error for text in USER_ERRORS[case][1]), error
    assert not (cwd / "mlruns").exists() and not (cwd / "checkpoints").exists()  # stopped before any run was opened


def test_tracking_turned_off_writes_no_mlflow_run(shards, tmp_path):
    run_cli(tmp_path, "fit", *tiny_args(shards, base=MINIMAL), "--trainer.logger", "false", "--trainer.max_steps", "10")
    assert not (tmp_path / "mlruns").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()  # Lightning's own checkpoint folder


@pytest.mark.ddp
def test_ddp_two_processes_bf16_one_run_and_resume(shards, tmp_path):
    """2 CPU processes (gloo), bf16-mixed, MLflow: one run with config and params; resume keeps it."""
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.precision", "bf16-mixed", "--trainer.logger.init_args.run_name", "ddp"]
    run_cli(tmp_path, "fit", *tiny_args(shards), *ddp)
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["run/world_size"] == "2" and run.data.params["trainer/precision"] == "bf16-mixed"
    assert run.data.params["model/net/d_model"] == "32" and run.data.tags["git/commit"]
    assert "config/config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id, "config")]
    run_cli(tmp_path, "fit", *tiny_args(shards), *ddp, "--ckpt_path", "last", "--trainer.max_steps", "40")
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.run_id == run.info.run_id and runs[0].info.status == "FINISHED"
    assert steps(client, runs[0], "val/exp_mse") == [9, 19, 29, 39]


def test_runs_are_tracked_by_default_resume_by_name_and_compare(shards, tmp_path):
    """With only the model, data and tiny configs: the default MLflow run and per-run checkpoint folder. The first
    run ends at step 25, between two checkpoints (every 10), and still saves it. A second run; then the first resumed
    by its name to step 40: still two runs, its metric steps continue without a step logged twice, its optimizer
    state restored; ``runs compare`` shows both."""
    run_cli(tmp_path, "fit", *tiny_args(shards, base=MINIMAL), "--trainer.max_steps", "25")
    first = mlflow_runs(tmp_path)[1][0].info.run_name
    ended = torch.load(tmp_path / "checkpoints" / "realtalk" / first / "last.ckpt", map_location="cpu", weights_only=False)
    assert ended["global_step"] == 25
    run_cli(tmp_path, "fit", *tiny_args(shards, base=MINIMAL), "--trainer.logger.init_args.run_name", "second", "--model.init_args.net.init_args.d_model", "16")
    run_cli(tmp_path, "fit", *tiny_args(shards, base=MINIMAL), "--trainer.logger.init_args.run_name", first, "--ckpt_path", "last", "--trainer.max_steps", "40")
    client, runs = mlflow_runs(tmp_path)
    by_name = {r.info.run_name: r for r in runs}
    assert sorted(by_name) == sorted([first, "second"])
    run = by_name[first]
    assert steps(client, run, "train/loss/total") == [4, 9, 14, 19, 24, 29, 34, 39]
    assert steps(client, run, "val/exp_mse") == [9, 19, 29, 39]
    ckpt_dir = Path(run.data.tags["checkpoint/dir"])
    assert ckpt_dir == tmp_path / "checkpoints" / "realtalk" / first
    last = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
    adam_steps = {int(s["step"]) for s in last["optimizer_states"][0]["state"].values()}
    assert adam_steps == {40} and last["global_step"] == 40  # a fresh optimizer would say 15
    assert last["mlflow_run"]["run_id"] == run.info.run_id
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "config")]
    assert "config/config.yaml" in artifacts and len(artifacts) == 2  # the first config and the resume's

    out = run_cli(tmp_path, "runs", "compare", "--metrics", "val/exp_mse", "train/loss/total", "--plot", "cmp.png").stdout
    assert first in out and "second" in out and "model/net/d_model" in out  # the param that differs is shown
    png = (tmp_path / "cmp.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # a new run under a name that has checkpoints is refused, never silently overwritten
    assert "--ckpt_path last" in user_error(tmp_path, "fit", *tiny_args(shards), "--trainer.logger.init_args.run_name", "second")
    # and "last" of no named run is no run at all: another concurrent run's checkpoint is never taken
    error = user_error(tmp_path, "fit", *tiny_args(shards), "--ckpt_path", "last")
    assert "which run?" in error and first in error and "second" in error
    assert len(mlflow_runs(tmp_path)[1]) == 2


def test_init_from_starts_a_new_run_from_a_checkpoints_weights(shards, frame_shards, tmp_path):
    """Weights only: step 0, a fresh optimizer, a new MLflow run tagged with its parent; another architecture or
    another stage's checkpoint is one line, exit 2."""
    run_cli(tmp_path, "fit", *tiny_args(shards, base=MINIMAL), "--trainer.max_steps", "10", "--trainer.logger.init_args.run_name", "parent")
    parent = tmp_path / "checkpoints" / "realtalk" / "parent" / "last.ckpt"
    run_cli(tmp_path, "fit", *tiny_args(shards, base=MINIMAL), "--init_from", str(parent), "--trainer.max_steps", "3",
            "--trainer.logger.init_args.run_name", "child", "--model.init_args.optimizer.init_args.lr", "0")
    child = torch.load(tmp_path / "checkpoints" / "realtalk" / "child" / "last.ckpt", map_location="cpu", weights_only=False)
    before = torch.load(parent, map_location="cpu", weights_only=False)
    assert child["global_step"] == 3 and before["global_step"] == 10  # a new count
    assert all(torch.equal(child["state_dict"][k], v) for k, v in before["state_dict"].items())  # lr 0: the parent's weights, untouched
    assert {int(s["step"]) for s in child["optimizer_states"][0]["state"].values()} == {3}  # a new optimizer
    client, runs = mlflow_runs(tmp_path)
    by_name = {r.info.run_name: r for r in runs}
    assert sorted(by_name) == ["child", "parent"]
    tags = by_name["child"].data.tags
    assert tags["parent/run_id"] == by_name["parent"].info.run_id and tags["parent/checkpoint"] == str(parent.resolve())
    wider = user_error(tmp_path, "fit", *tiny_args(shards), "--init_from", str(parent), "--model.init_args.net.init_args.d_model", "16")
    assert "another architecture than this config's model" in wider
    renderer = user_error(tmp_path, "fit", *tiny_args(frame_shards, base=RENDERER_BASE), "--init_from", str(parent))
    assert "a A2EModule checkpoint, and this config trains a RendererModule" in renderer
    from tests.tiny_checkpoints import other_face_model

    other = other_face_model(tmp_path / "other.npz")
    refit = user_error(tmp_path, "fit", *tiny_args(shards), "--data.init_args.face_model", str(other), "--init_from", str(parent))
    assert "trained with face model mp468-linear@1, this config uses mp468-linear@1-other" in refit
