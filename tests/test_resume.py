"""Resumable, idempotent, multi-rank and multi-worker runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from preprocess.cli import main
from preprocess.errors import ConfigError
from preprocess.runner import EXIT_OK, EXIT_SOME_FAILED, run_shard
from tests.test_shard_pipeline import small_job

REPO = Path(__file__).resolve().parents[1]


def shard_keys(out: Path) -> list[str]:
    """Every sample key in complete shards, duplicates kept."""
    import tarfile

    keys = []
    for p in sorted(out.glob("*.tar")):
        with tarfile.open(p) as tar:
            keys += [m.name.split(".")[0] for m in tar if m.name.endswith(".meta.json")]
    return keys


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "preprocess", "shard", *args]


@pytest.fixture(scope="module")
def reference_run(good_root: Path, tmp_path_factory) -> Path:
    """An uninterrupted single-rank run's folder."""
    out = tmp_path_factory.mktemp("ref")
    assert run_shard(small_job(good_root, out)) == EXIT_OK
    return out


@pytest.fixture(scope="module")
def reference(reference_run: Path) -> list[str]:
    keys = shard_keys(reference_run)
    assert len(keys) == 6
    return sorted(keys)


def test_kill_9_mid_run_then_resume(good_root: Path, tmp_path: Path, reference: list[str]) -> None:
    out = tmp_path / "out"
    args = cli("--root", str(good_root), "--out", str(out), "--audio.name", "mel", "--min_seconds", "0.5",
               "--shard_maxcount", "1", "--progress", "false")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not list(out.glob("*.tar")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = shard_keys(out)
    assert 1 <= len(partial) < 6
    rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == EXIT_OK, rerun.stderr
    assert f"{len(partial)} already in complete shards" in rerun.stderr
    keys = shard_keys(out)
    assert sorted(keys) == reference and len(keys) == len(set(keys))  # same set, no duplicates, no gaps
    assert not list(out.glob("*.tmp*"))
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 6


def test_rerun_is_idempotent_and_overwrite_redoes(good_root: Path, tmp_path: Path, capsys) -> None:
    job = small_job(good_root, tmp_path, limit=3)
    assert run_shard(job) == EXIT_OK
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tar")}
    assert run_shard(job) == EXIT_OK
    assert "skipped (already written)  3" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tar")} == before
    job.crf = 20  # other settings: resuming would mix samples, so it is refused ...
    with pytest.raises(ConfigError, match="--overwrite"):
        run_shard(job)
    job.overwrite = True  # ... until the old shards are dropped
    assert run_shard(job) == EXIT_OK
    assert len(shard_keys(tmp_path)) == 3 and len(set(shard_keys(tmp_path))) == 3
    capsys.readouterr()
    job.overwrite = False
    assert run_shard(job) == EXIT_OK  # and with the same settings a rerun resumes again
    assert "skipped (already written)  3" in capsys.readouterr().out


def test_clip_with_a_too_short_segment_is_not_redone_and_keeps_its_ledger_line(folder_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "in" / "spk_b"
    root.mkdir(parents=True)
    shutil.copy(folder_root / "spk_b" / "face_lost.mp4", root)  # face segments of 20 and 25 frames
    job = small_job(tmp_path / "in", tmp_path / "out")
    job.min_seconds = 0.9  # 22 frames: the first segment is a ledger line, the second a sample
    for _ in range(2):  # the rerun finds the clip done: no second copy of its sample, the ledger line stays
        assert run_shard(job) == EXIT_SOME_FAILED
        assert shard_keys(job.out) == ["folder_spk_b_face_lost_s1"]
        ledger = [json.loads(ln) for ln in (job.out / "failures.jsonl").read_text().splitlines()]
        assert [(f["key"], f["stage"]) for f in ledger] == [("folder_spk_b_face_lost_s0", "length")]


def test_dry_run_writes_nothing(good_root: Path, tmp_path: Path, capsys) -> None:
    assert run_shard(small_job(good_root, tmp_path / "out", dry_run=True)) == EXIT_OK
    assert not (tmp_path / "out").exists()
    assert "6 clips for rank 0/1" in capsys.readouterr().out


def test_ranks_share_a_job(good_root: Path, tmp_path: Path, monkeypatch, reference: list[str]) -> None:
    monkeypatch.setenv("SLURM_NTASKS", "2")
    per_rank = {}
    for rank in (1, 0):  # any finishing order
        monkeypatch.setenv("SLURM_PROCID", str(rank))
        assert run_shard(small_job(good_root, tmp_path)) == EXIT_OK
        per_rank[rank] = {k for p in tmp_path.glob(f"*-{rank:03d}-*.tar") for k in shard_keys_of(p)}
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]
    assert sorted(per_rank[0] | per_rank[1]) == reference
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 6  # the last rank to finish sees every shard
    assert (tmp_path / "failures.jsonl").read_text() == ""


def test_three_ranks_in_any_order_one_killed_merge_one_manifest(good_root: Path, tmp_path: Path, monkeypatch, reference_run: Path, reference: list[str]) -> None:
    """Rank 2 is killed mid-write, ranks 0 and 1 finish, rank 2 runs again and finishes: only then is manifest.json
    written (by the last rank, from the partial manifests), equal to one uninterrupted rank's; no rank read
    another rank's tars."""
    import preprocess.manifest as manifest_module
    import preprocess.runner as runner
    import preprocess.shard_writer as sw

    read_by: dict[int, list[str]] = {}
    real_read = sw.read_shard_info

    def recording_read(path: Path):
        read_by.setdefault(int(os.environ["SLURM_PROCID"]), []).append(path.name)
        return real_read(path)

    monkeypatch.setattr(runner, "read_shard_info", recording_read)
    monkeypatch.setattr(manifest_module, "read_shard_info", recording_read)
    monkeypatch.setenv("SLURM_NTASKS", "3")
    real_close = sw.SplitShardWriter.close

    def killed_before_its_last_shard_completes(self):
        raise KeyboardInterrupt

    def job():
        j = small_job(good_root, tmp_path)
        j.shard_maxcount = 1  # a shard per sample: rank 2 completes one before it is killed
        return j

    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setattr(sw.SplitShardWriter, "close", killed_before_its_last_shard_completes)
    with pytest.raises(KeyboardInterrupt):
        run_shard(job())
    monkeypatch.setattr(sw.SplitShardWriter, "close", real_close)
    assert list(tmp_path.glob("*-002-*.tar.tmp"))
    assert json.loads((tmp_path / "manifest-rank002.json").read_text())["shards"]  # its first shard was recorded before the kill
    for rank in (1, 0):
        monkeypatch.setenv("SLURM_PROCID", str(rank))
        assert run_shard(job()) == EXIT_OK
        assert not (tmp_path / "manifest.json").exists()  # rank 2 has not finished: nobody merges yet
    monkeypatch.setenv("SLURM_PROCID", "2")
    assert run_shard(job()) == EXIT_OK
    merged, single = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path, reference_run))
    counts = lambda m: {k: (v["samples"], v["frames"]) for k, v in m["splits"].items()}  # noqa: E731 - shard counts differ (1 vs 2 per shard)
    assert counts(merged) == counts(single) and merged["totals"]["frames"] == single["totals"]["frames"] == 180
    keys = shard_keys(tmp_path)
    assert sorted(keys) == reference and len(keys) == len(set(keys))
    assert sum(s["samples"] for s in merged["shards"]) == 6 and (tmp_path / "failures.jsonl").read_text() == ""
    assert all(name.split("-")[1] == f"{rank:03d}" for rank, names in read_by.items() for name in names), read_by
    assert main(["merge", "--out", str(tmp_path)]) == 0 and counts(json.loads((tmp_path / "manifest.json").read_text())) == counts(single)


def shard_keys_of(path: Path) -> list[str]:
    import tarfile

    with tarfile.open(path) as tar:
        return [m.name.split(".")[0] for m in tar if m.name.endswith(".meta.json")]


def test_worker_processes(good_root: Path, tmp_path: Path, reference: list[str]) -> None:
    assert run_shard(small_job(good_root, tmp_path, workers=2)) == EXIT_OK
    keys = shard_keys(tmp_path)
    assert sorted(keys) == reference and Counter(keys).most_common(1)[0][1] == 1


def test_interrupted_run_keeps_no_partial_shard(good_root: Path, tmp_path: Path, monkeypatch, reference: list[str]) -> None:
    """Ctrl-C in the middle of writing: the open shard stays .tmp and the rerun completes the set."""
    import preprocess.shard_writer as sw

    calls = {"n": 0}
    real_write = sw.SplitShardWriter.write

    def flaky_write(self, split, sample):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        real_write(self, split, sample)

    monkeypatch.setattr(sw.SplitShardWriter, "write", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        run_shard(small_job(good_root, tmp_path))  # maxcount 2: one complete shard, one open
    assert len(shard_keys(tmp_path)) == 2 and list(tmp_path.glob("*.tar.tmp"))
    monkeypatch.setattr(sw.SplitShardWriter, "write", real_write)
    assert run_shard(small_job(good_root, tmp_path)) == EXIT_OK
    assert sorted(shard_keys(tmp_path)) == reference and not list(tmp_path.glob("*.tmp"))
