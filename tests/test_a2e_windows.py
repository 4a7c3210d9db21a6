"""A2E window assembly and the shard stream's rank/worker arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.a2e_datamodule import A2EDataModule
from datamodules.a2e_windows import fixed_windows, history_frames, make_window, random_windows
from datamodules.shard_stream import EvalItems, MissingShardsError, StreamConfig, TrainStream, index_samples
from tests.synthetic_shards import AUDIO_NAME, write_synthetic_shards


def ramp_clip(frames: int, dim: int = 3) -> dict[str, np.ndarray]:
    """audio row r holds r, frame t's coefficients hold t: alignment is readable off the values."""
    return {
        "audio": np.repeat(np.arange(2 * frames, dtype=np.float32)[:, None], dim, 1),
        "exp": np.repeat(np.arange(frames, dtype=np.float32)[:, None], 4, 1),
        "pose": np.zeros((frames, 6), np.float32),
        "shape": np.repeat(np.arange(frames, dtype=np.float32)[:, None], 2, 1),
        "valid": np.ones(frames, bool),
    }


def test_window_alignment_audio_rows_2t_and_2t_plus_1_belong_to_frame_t():
    clip = ramp_clip(50)
    w = make_window(clip, start=7, window=16, num_history=8, rng=np.random.default_rng(0))
    frames = w["exp"][:, 0]
    assert np.array_equal(frames, np.arange(7, 23))
    assert np.array_equal(w["audio"][0::2, 0], 2 * frames) and np.array_equal(w["audio"][1::2, 0], 2 * frames + 1)
    assert w["shape_ref"][0] == 0  # α_1 = the clip's first frame, not the window's
    assert w["audio"].shape == (32, 3) and w["mask"].all()
    hist = w["history"][:, 0]
    assert len(hist) == 8 and not np.isin(hist, frames).any()  # history never leaks the targets


def test_short_clip_is_padded_with_a_mask():
    clip = ramp_clip(5)
    w = make_window(clip, 0, 16, 4, np.random.default_rng(0))
    assert w["audio"].shape == (32, 3) and w["exp"].shape == (16, 4)
    assert w["mask"].tolist() == [True] * 5 + [False] * 11
    assert (w["audio"][10:] == 0).all()
    assert len(list(random_windows(clip, 16, 4, np.random.default_rng(0)))) == 1


def test_fixed_windows_cover_every_frame_once_and_repeat_exactly():
    clip = ramp_clip(37)
    a = list(fixed_windows(clip, 16, 4, seed=3))
    b = list(fixed_windows(clip, 16, 4, seed=3))
    covered = np.concatenate([w["exp"][w["mask"], 0] for w in a])
    assert np.array_equal(covered, np.arange(37))
    assert all(np.array_equal(x["history"], y["history"]) for x, y in zip(a, b))


def test_history_draws_without_replacement_when_the_pool_allows():
    idx = history_frames(40, 10, 16, 16, np.random.default_rng(0))
    assert len(set(idx.tolist())) == 16 and not ((idx >= 10) & (idx < 26)).any()
    assert len(history_frames(16, 0, 16, 4, np.random.default_rng(0))) == 4  # no frame outside: whole clip


def _stream(urls: list[str], seed: int, rank: int, world: int) -> TrainStream:
    return TrainStream(StreamConfig(urls, seed, rank, world, batch_size=1, clips_per_round=1, batches_per_worker=1), None, None, None)


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 2), (3, 2)])
def test_shard_sequence_splits_each_pass_disjointly(world, workers):
    urls = [f"s{i}" for i in range(12)]
    per_slot = len(urls) // (world * workers)
    for p in range(2):  # two passes, each shuffled differently, each a partition
        seen = [_stream(urls, 1, rank, world).shard_at(p * per_slot + n, rank * workers + w, world * workers, epoch=0)
                for rank in range(world) for w in range(workers) for n in range(per_slot)]
        assert sorted(seen) == sorted(urls)  # one pass: every shard once, nothing twice


def test_shard_sequence_resamples_when_shards_are_fewer_than_slots():
    stream = _stream(["a", "b"], 0, 1, 2)
    assert {stream.shard_at(n, 3, 4, epoch=0) for n in range(20)} == {"a", "b"}


def test_every_rank_and_worker_yields_the_same_number_of_batches(tmp_path):
    """Uneven shards (3 train shards, 2 ranks x 2 workers): equal batch counts, no rank starves."""
    root = write_synthetic_shards(tmp_path, {"train": 5, "val": 3, "test": 1}, frames=24, maxcount=2)
    counts = []
    for rank in range(2):
        dm = A2EDataModule(str(root), window=8, num_history=4, audio_features=AUDIO_NAME, audio_dim=16, batch_size=3,
                           num_workers=2, clip_shuffle=2, train_batches_per_epoch=5)
        dm._rank, dm._world = rank, 2
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        counts.append(len(batches))
        assert all(b["audio"].shape == (3, 16, 16) and b["history"].shape == (3, 4, 64) for b in batches)
        val = list(dm.val_dataloader())
        assert len(val) >= 1
    assert counts[0] == counts[1] == 6  # ceil(5 / 2 workers) per worker x 2 workers


def test_eval_items_are_dealt_once_across_ranks_and_workers(tmp_path, monkeypatch):
    root = write_synthetic_shards(tmp_path, {"val": 5}, frames=24)
    refs = index_samples(sorted(str(p) for p in root.glob("val-*.tar")))
    keys = []
    for rank in range(2):
        for worker in range(2):
            monkeypatch.setattr("datamodules.shard_stream.worker_slot", lambda w=worker: (w, 2))
            keys += [item["key"] for item in EvalItems(refs, rank, 2, lambda s: iter([{"key": s["__key__"]}]))]
    assert sorted(keys) == [f"syn_val_{i}" for i in range(5)]  # every clip once; no padding while each rank has a clip


def test_a_rank_without_clips_gets_one_marked_duplicate(tmp_path):
    root = write_synthetic_shards(tmp_path, {"val": 1}, frames=24)
    refs = index_samples(sorted(str(p) for p in root.glob("val-*.tar")))
    items = [list(EvalItems(refs, rank, 2, lambda s: iter([{"key": s["__key__"]}] * 3))) for rank in range(2)]
    assert [i["pad"] for i in items[0]] == [False] * 3 and [i["pad"] for i in items[1]] == [True]


def test_missing_split_and_mismatched_features_are_clear_errors(tmp_path):
    root = write_synthetic_shards(tmp_path, {"train": 1, "val": 1}, frames=24)
    dm = A2EDataModule(str(root), audio_features=AUDIO_NAME, audio_dim=16)
    with pytest.raises(MissingShardsError, match="no 'test' shards"):
        dm.setup("test")
    with pytest.raises(ValueError, match="whisper-tiny"):
        A2EDataModule(str(root), audio_features="whisper-tiny", audio_dim=384).setup("fit")


def test_truncated_shard_and_damaged_sample_are_skipped_with_a_warning(tmp_path, caplog):
    root = write_synthetic_shards(tmp_path, {"train": 4, "val": 2}, frames=24)
    shard = root / "train-000-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    dm = A2EDataModule(str(root), window=8, num_history=4, audio_features=AUDIO_NAME, audio_dim=16, batch_size=2, num_workers=0,
                       train_batches_per_epoch=6)
    dm.setup("fit")
    with caplog.at_level("WARNING"):
        assert len(list(dm.train_dataloader())) == 6  # the other shard keeps training going
    assert "train-000-000000.tar" in caplog.text and "rewrite that shard" in caplog.text
    assert dm.decode({"__key__": "k", "__url__": "u", "meta.json": b"{"}) is None
