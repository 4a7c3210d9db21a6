"""Dataset adapters: keys, speakers, splits and paths from each real on-disk layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from preprocess.datasets import SpeakerMapConfig, SplitConfig, list_clips, read_speaker_map, speaker_split
from preprocess.errors import ConfigError


def _touch(root: Path, *rels: str) -> None:
    for r in rels:
        (root / r).parent.mkdir(parents=True, exist_ok=True)
        (root / r).write_bytes(b"x")


def test_voxceleb1_keys_and_official_split(tmp_path: Path) -> None:
    _touch(tmp_path, "id10001/1zcIwhmdeo4/00001.mp4", "id10001/1zcIwhmdeo4/00002.mp4", "id10270/5r0dWxy17C8/00001.mp4")
    meta = tmp_path / "vox1_meta.csv"
    meta.write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\nid10001\tA.J._Buckley\tm\tIreland\tdev\nid10270\tX\tm\tUSA\ttest\n")
    clips = list_clips("voxceleb1", tmp_path, SplitConfig(val_fraction=0.0), meta_csv=meta)
    assert [c.key for c in clips] == ["vox1_id10001_1zcIwhmdeo4_00001", "vox1_id10001_1zcIwhmdeo4_00002", "vox1_id10270_5r0dWxy17C8_00001"]
    assert [c.split for c in clips] == ["train", "train", "test"]
    assert clips[0].speaker == "id10001" and clips[0].clip == 1 and clips[0].audio_path is None
    with_audio = list_clips("voxceleb1", tmp_path, SplitConfig(), audio_root=tmp_path / "wav")
    assert with_audio[0].audio_path == str(tmp_path / "wav/id10001/1zcIwhmdeo4/00001.wav")


def test_mead_view_and_audio_path(tmp_path: Path) -> None:
    _touch(tmp_path, "M003/video/front/angry/level_1/001.mp4", "M003/video/left_30/angry/level_1/001.mp4", "W009/video/front/happy/level_3/012.mp4")
    clips = list_clips("mead", tmp_path, SplitConfig(test_speakers=["W009"]))
    assert [c.key for c in clips] == ["mead_M003_front_angry_l1_001", "mead_W009_front_happy_l3_012"]
    assert clips[0].audio_path == str(tmp_path / "M003/audio/angry/level_1/001.m4a")
    assert clips[1].split == "test"
    assert len(list_clips("mead", tmp_path, SplitConfig(), mead_view="left_30")) == 1


def test_hdtf_cut_clips_and_annotations(tmp_path: Path) -> None:
    cut = tmp_path / "cut"
    _touch(cut, "RD_Radio7_000.mp4", "WDA_BarackObama_001.mp4")
    clips = list_clips("hdtf", cut, SplitConfig(force="test"))
    assert [c.key for c in clips] == ["hdtf_RD_Radio7_000_c00", "hdtf_WDA_BarackObama_001_c00"]
    assert {c.split for c in clips} == {"test"}
    assert clips[0].speaker == "RD_Radio7"
    full = tmp_path / "full"
    _touch(full, "RD/Radio11_0.mp4")
    (full / "RD_annotion_time.txt").write_text("Radio11_0.mp4 00:10-01:22 01:35-2:03:30\n\n")
    clips = list_clips("hdtf", full, SplitConfig())
    assert [(c.key, c.start, c.end) for c in clips] == [("hdtf_RD_Radio11_0_c00", 10.0, 82.0), ("hdtf_RD_Radio11_0_c01", 95.0, 7410.0)]
    assert clips[0].path == str(full / "RD/Radio11_0.mp4") and clips[0].speaker == "RD_Radio11"


def test_folder_speakers_and_keys(tmp_path: Path) -> None:
    _touch(tmp_path, "alice/talk one.mp4", "alice/b.MOV", "bob/deep/c.webm", "loose.mpg", "notes.txt")
    clips = list_clips("folder", tmp_path, SplitConfig())
    by_key = {c.key: c for c in clips}
    assert set(by_key) == {"folder_alice_talk-one", "folder_alice_b", "folder_deep_c", "folder_loose"}
    assert by_key["folder_loose"].speaker == "loose" and by_key["folder_deep_c"].speaker == "deep"
    assert all("." not in k for k in by_key)
    fixed = list_clips("folder", tmp_path, SplitConfig(), speaker="one")
    assert {c.speaker for c in fixed} == {"one"}


def test_folder_offers_every_container_and_skips_only_documents(tmp_path: Path) -> None:
    """.flv, .ts, .m2ts or no extension at all go to the decoder (what it cannot read is a ledger line); tables and notes do not."""
    _touch(tmp_path, "a/one.flv", "a/two.ts", "a/three", "a/four.m2ts", "MANIFEST.tsv", "README.md", "SHA256SUMS", "a/still.png", ".hidden/x.mp4")
    keys = {c.key for c in list_clips("folder", tmp_path, SplitConfig())}
    assert keys == {"folder_a_one", "folder_a_two", "folder_a_three", "folder_a_four"}


def test_speakers_from_a_manifest_table(tmp_path: Path) -> None:
    _touch(tmp_path, "x1.mp4", "x2.flv", "y1.mov", "loose.mp4")
    table = tmp_path / "MANIFEST.tsv"
    table.write_text("file\tidentity_guess\tnotes\nx1.mp4\tanna\t\nx2.flv\tanna\t\ny1.mov\tben\t3/4 view\n")
    speakers = read_speaker_map(SpeakerMapConfig(table, "file", "identity_guess"))
    clips = {c.path.rsplit("/", 1)[-1]: c for c in list_clips("folder", tmp_path, SplitConfig(), speakers=speakers)}
    assert clips["x1.mp4"].speaker == clips["x2.flv"].speaker == "anna" and clips["y1.mov"].speaker == "ben"
    assert clips["loose.mp4"].speaker == "loose"  # not in the table: the folder rule
    assert clips["x1.mp4"].split == clips["x2.flv"].split
    with pytest.raises(ConfigError, match="needs columns 'file' and 'speaker'"):
        read_speaker_map(SpeakerMapConfig(table))


def test_min_val_speakers_moves_whole_speakers_by_a_fixed_rule(tmp_path: Path) -> None:
    _touch(tmp_path, *(f"spk{i:02d}/clip{j}.mp4" for i in range(30) for j in range(2)))
    cfg = SplitConfig(val_fraction=0.0, test_fraction=0.0, min_val_speakers=8)
    clips = list_clips("folder", tmp_path, cfg)
    val = {c.speaker for c in clips if c.split == "val"}
    assert len(val) == 8
    assert all(c.split == "val" for c in clips if c.speaker in val)  # both clips of a val speaker
    assert val == {c.speaker for c in list_clips("folder", tmp_path, cfg) if c.split == "val"}


def test_speaker_split_is_deterministic_and_speaker_level() -> None:
    cfg = SplitConfig(val_fraction=0.2, test_fraction=0.2)
    splits = [speaker_split(f"id{i:05d}", cfg) for i in range(2000)]
    assert splits == [speaker_split(f"id{i:05d}", cfg) for i in range(2000)]
    frac = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(frac["val"] - 0.2) < 0.04 and abs(frac["test"] - 0.2) < 0.04
    assert speaker_split("x", SplitConfig(force="val")) == "val"


def test_missing_root_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        list_clips("folder", tmp_path / "nope", SplitConfig())
    with pytest.raises(ConfigError, match="no dataset root"):
        list_clips("folder", None, SplitConfig())


def test_split_by_video_keeps_one_speaker_and_splits_sentences(tmp_path: Path) -> None:
    """grid_s1: one speaker, 1,000 sentences; by: video puts ~10% of the sentences in val by a fixed rule of their names."""
    names = [f"s{i:04d}.mp4" for i in range(400)]
    _touch(tmp_path, *names)
    table = tmp_path / "MANIFEST.tsv"
    table.write_text("file\tspeaker\n" + "".join(f"{n}\ts1\n" for n in names))
    speakers = read_speaker_map(SpeakerMapConfig(table, "file", "speaker"))
    cfg = SplitConfig(val_fraction=0.1, test_fraction=0.0, by="video", min_val_speakers=3)
    clips = list_clips("folder", tmp_path, cfg, speakers=speakers)
    assert {c.speaker for c in clips} == {"s1"}
    val = {c.video for c in clips if c.split == "val"}
    assert 0.06 < len(val) / len(clips) < 0.14 and {c.split for c in clips} == {"train", "val"}
    assert val == {c.video for c in list_clips("folder", tmp_path, cfg, speakers=speakers) if c.split == "val"}
    by_speaker = list_clips("folder", tmp_path, SplitConfig(val_fraction=0.1, test_fraction=0.0), speakers=speakers)
    assert len({c.split for c in by_speaker}) == 1  # the default: one speaker, one split


def test_holdout_cuts_one_video_into_a_training_start_and_a_val_end() -> None:
    """adapt's split: one file as the root, its last 20% in val, the two parts meeting without a gap."""
    video = Path("sharded_data/samples/bbaf2n.mpg")
    head, tail = list_clips("folder", video, SplitConfig(val_fraction=0.0, test_fraction=0.0, holdout=0.2))
    assert (head.split, tail.split) == ("train", "val") and head.key.endswith("_head") and tail.key.endswith("_tail")
    assert head.start == 0.0 and head.end == tail.start and abs(tail.end - 3.0) < 0.1
    assert abs((tail.end - tail.start) / tail.end - 0.2) < 1e-6
    with pytest.raises(ConfigError, match="split.holdout"):
        list_clips("folder", video, SplitConfig(holdout=1.5))
