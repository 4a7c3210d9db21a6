"""Cluster runs on this CPU with real processes: the SLURM recipes with srun/scontrol stand-ins, a requeue that
resumes the same run, stop signals and max_time saving the step they stop at, and a real MLflow server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightning_modules.tracking.final_checkpoint import FinalStepCheckpoint
from tests.synthetic_shards import write_synthetic_shards
from tests.test_data_path import _a2e
from tests.test_training_cli import mlflow_runs, run_cli, tiny_args

REPO = Path(__file__).resolve().parents[1]
STUBS = REPO / "tests" / "slurm_stubs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_env(cwd: Path, job: int, tasks: int = 2) -> dict[str, str]:
    """What SLURM sets for a job of ``tasks`` tasks on one node (srun's per-task variables come from the stub)."""
    return {
        **os.environ, "PATH": f"{STUBS}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO), "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1",
        "SLURM_JOB_ID": str(job), "SLURM_JOB_NAME": "realtalk-test", "SLURM_NTASKS": str(tasks), "SLURM_NTASKS_PER_NODE": str(tasks),
        "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1", "SLURM_NODELIST": "localhost", "SLURM_SUBMIT_DIR": str(cwd),
        "SLURM_CPUS_PER_TASK": "1", "MASTER_PORT": str(free_port()), "SCONTROL_LOG": str(cwd / "scontrol.log"), "SRUN_PIDS_FILE": str(cwd / "srun.pids"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}", "OMP_NUM_THREADS": "1",
    }


def sbatch(script: str, env: dict[str, str], *args: str, cwd: Path) -> subprocess.Popen:
    # the recipes cd to SLURM_SUBMIT_DIR; they name configs/ relative to it, so the working copy is linked there
    return subprocess.Popen(["bash", str(STUBS / "sbatch"), str(REPO / script), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.ddp
def test_the_slurm_recipes_shard_then_train_and_a_requeue_resumes_the_same_run(tmp_path):
    """preprocess.sbatch on the bundled clips with 2 tasks, then fit.sbatch on those shards with 2 gloo ranks:
    SIGUSR1 mid-run stops both ranks after one step, saves it in the run's folder, requeues through scontrol;
    the same command again (same SLURM_JOB_ID, no --ckpt_path) resumes it: one MLflow run, its metric steps
    without a duplicate or a gap, nothing written to the working directory's root."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    (tmp_path / "sharded_data").symlink_to(REPO / "sharded_data")
    shards = tmp_path / "shards"
    env = slurm_env(tmp_path, job=7001) | {"ROOT": "sharded_data/samples", "OUT": str(shards), "PRESET": "configs/preprocess/demo.yaml"}
    proc = sbatch("configs/slurm/preprocess.sbatch", env, "--audio.name", "mel", cwd=tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert sorted(p.name for p in shards.glob("manifest-rank*.json")) == ["manifest-rank000.json", "manifest-rank001.json"]
    assert '"samples": 3' in (shards / "manifest.json").read_text() and "manifest.json: 3 samples" in out  # merged after srun

    job = 7002
    fit_args = ["--config", "configs/debug/tiny_renderer.yaml", "--data.init_args.shards", str(shards), "--trainer.accelerator", "cpu",
                "--trainer.devices", "2", "--trainer.precision", "32-true", "--trainer.sync_batchnorm", "false",  # SyncBatchNorm is GPU-only
                "--trainer.max_steps", "160", "--trainer.log_every_n_steps", "1",
                "--trainer.val_check_interval", "20", "--trainer.logger.init_args.experiment_name", "cluster"]
    env = slurm_env(tmp_path, job)
    run_dir = tmp_path / "checkpoints" / "cluster" / f"renderer-job{job}"
    first = sbatch("configs/slurm/fit.sbatch", env, *fit_args, cwd=tmp_path)
    deadline = time.time() + 240
    while not list(run_dir.glob("step*.ckpt")) and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert first.poll() is None, first.communicate()[0][-3000:]
    for pid in (tmp_path / "srun.pids").read_text().split():
        os.kill(int(pid), signal.SIGUSR1)
    out1, _ = first.communicate(timeout=240)
    assert first.returncode == 0, out1[-3000:]
    saved = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert 0 < saved < 160 and "SIGUSR1 received: stopping after step" in out1
    assert (tmp_path / "scontrol.log").read_text() == f"scontrol requeue {job}\n"

    second = sbatch("configs/slurm/fit.sbatch", slurm_env(tmp_path, job), *fit_args, cwd=tmp_path)  # the requeued job
    out2, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out2[-3000:]
    assert f"job {job} already trained run 'renderer-job{job}'" in out2 and "resuming it" in out2
    assert torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 160
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.run_name == f"renderer-job{job}"
    history = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss/l1"))
    gaps = {b - a for a, b in zip(history, history[1:])}
    assert len(history) == len(set(history)) and gaps == {1} and history[0] == 0  # every step once, none skipped
    assert (tmp_path / "scontrol.log").read_text().count("requeue") == 1
    assert not list(tmp_path.glob("*.ckpt")) and not list(tmp_path.rglob("hpc_ckpt_*"))


class SignalAt(Callback):
    """Sends this process a signal at the end of one step, as SLURM would at any moment."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("ending", ["sigterm", "max_time"])
def test_a_stop_signal_or_max_time_saves_the_step_it_stops_at(tmp_path, monkeypatch, ending):
    """Whatever every_n_train_steps (0 here: no periodic save), the step training stopped at is saved; SIGTERM
    does not requeue (that is SLURM's decision, or a user's scancel)."""
    monkeypatch.setenv("SCONTROL_LOG", str(tmp_path / "scontrol.log"))
    monkeypatch.setenv("PATH", f"{STUBS}{os.pathsep}{os.environ['PATH']}")
    root = write_synthetic_shards(tmp_path / "shards", {"train": 2, "val": 1}, frames=24)
    dm, module = _a2e(root, workers=0)
    ckpt = FinalStepCheckpoint(dirpath=tmp_path / "run", save_last=True)
    stop = {"sigterm": dict(max_steps=50, callbacks=[ckpt, SignalAt(7, signal.SIGTERM)]),
            "max_time": dict(max_steps=10**6, max_time={"seconds": 3}, callbacks=[ckpt])}[ending]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **stop)
    trainer.fit(module, dm)
    assert trainer.global_step == 7 if ending == "sigterm" else 0 < trainer.global_step < 10**6  # the step the signal came in
    assert torch.load(tmp_path / "run" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == trainer.global_step
    assert not (tmp_path / "scontrol.log").exists() and signal.getsignal(signal.SIGTERM) != ckpt._note  # handlers restored


@pytest.mark.ddp
def test_a_two_rank_fit_and_its_resume_track_into_a_real_mlflow_server(tmp_path):
    """mlflow server on 127.0.0.1 with its own store, started and stopped here; MLFLOW_TRACKING_URI is all a job needs."""
    from mlflow.tracking import MlflowClient

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}", "--artifacts-destination", str(tmp_path / "server" / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    (tmp_path / "server").mkdir()
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "the MLflow server did not start"
                time.sleep(0.5)
        shards = write_synthetic_shards(tmp_path / "shards", {"train": 3, "val": 2}, frames=40)
        work = tmp_path / "work"
        work.mkdir()
        args = [*tiny_args(shards), "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.logger.init_args.run_name", "served"]
        env = {"MLFLOW_TRACKING_URI": uri}
        run_cli(work, "fit", *args, env=env)
        run_cli(work, "fit", *args, "--ckpt_path", "last", "--trainer.max_steps", "40", env=env)
        assert not (work / "mlruns").exists()  # nothing local: the server holds the runs
        client = MlflowClient(uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "val/exp_mse"))
        assert steps == [9, 19, 29, 39]
        assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "config")} >= {"config/config.yaml"}  # uploaded through the server
        assert "served" in run_cli(work, "runs", "compare", "--metrics", "val/exp_mse", env=env).stdout
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
