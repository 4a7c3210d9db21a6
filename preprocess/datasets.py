"""Dataset adapters: real on-disk layouts -> a deterministic list of clips with their split.

- ``voxceleb1``: ``<root>/<id10001>/<youtube id>/<00001>.mp4``; splits from ``vox1_meta.csv``
  (tab-separated, column ``Set``: dev -> train, test -> test) when given.
- ``mead``: ``<root>/M003/video/<view>/<emotion>/level_<k>/001.mp4`` with audio at
  ``<root>/M003/audio/<emotion>/level_<k>/001.m4a``.
- ``hdtf``: cut clips ``{RD,WDA,WRA}_<Name>_<k>.mp4``, or full videos plus
  ``<SRC>_annotion_time.txt`` lines ``Name.mp4 mm:ss-mm:ss ...`` to cut them.
- ``folder``: any tree of media files; speaker = parent folder name, one fixed name, or a column
  of a table (``speakers.path``, e.g. a corpus manifest). Every file is offered to PyAV (no fixed
  list of video extensions): one it cannot open becomes a line of ``failures.jsonl``.

Speakers not assigned by the dataset are split by a hash of their name, so every rank and
every rerun agrees on the split without coordination. A one-speaker dataset (``split.by: video``)
is split the same way by a hash of each video's name (e.g. GRID's sentence names).
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from preprocess.errors import ClipError, ConfigError
from preprocess.schema import make_key

VIDEO_EXTS = (".mp4", ".mpg", ".mpeg", ".mov", ".mkv", ".webm", ".avi")
NOT_MEDIA_EXTS = frozenset(
    ".txt .tsv .csv .json .jsonl .md .rst .yaml .yml .toml .ini .py .sh .html .pdf .npz .npy .pkl .pt .ckpt .safetensors .log "
    ".zip .tar .gz .tgz .bz2 .xz .7z .png .jpg .jpeg .gif .bmp .webp .srt .vtt .ass .lab .textgrid .sha256 .md5".split()
)
# checksum lists and licence files that corpora ship without an extension
NOT_MEDIA_NAMES = frozenset("SHA256SUMS SHA1SUMS MD5SUMS LICENSE LICENCE COPYING README ATTRIBUTION".split())
"""What a ``folder`` dataset does not offer to the decoder: documents, tables, archives, stills, subtitles, checksums."""
HDTF_SOURCES = ("RD", "WDA", "WRA")


@dataclass(frozen=True)
class Clip:
    """One unit of work: a stretch of one video (and its audio) that becomes one sample."""

    key: str
    dataset: str
    speaker: str
    video: str
    clip: int
    split: str
    path: str
    audio_path: str | None = None
    start: float = 0.0
    end: float | None = None


@dataclass
class SplitConfig:
    """Train/val/test split by a hash of the speaker's name (or of each video's, ``by: video``)."""

    val_fraction: float = 0.05
    """Share of speakers (by hash) in val, where the dataset does not say."""
    test_fraction: float = 0.05
    """Share of speakers (by hash) in test, where the dataset does not say."""
    val_speakers: list[str] = field(default_factory=list)
    """Speakers always in val."""
    test_speakers: list[str] = field(default_factory=list)
    """Speakers always in test."""
    min_val_speakers: int = 0
    """At least this many speakers in val: train speakers with the highest hash move there (still a fixed rule of the names)."""
    force: Literal["train", "val", "test"] | None = None
    """Put every clip in this split (e.g. HDTF, an evaluation set)."""
    seed: int = 0
    """Salt of the speaker hash."""
    holdout: float = 0.0
    """Cut every video in two at this fraction from its end: the start keeps the video's split, the end goes to val
    (one person's video for adaptation: train on the first part, check on the last)."""
    by: Literal["speaker", "video"] = "speaker"
    """``speaker``: every clip of a speaker in one split. ``video``: each video on its own, by a hash of its name (one
    speaker's sentences: no sentence in two splits); ``val_speakers``/``test_speakers`` then name videos."""


def _speaker_hash(speaker: str, cfg: SplitConfig) -> float:
    return int(hashlib.sha1(f"{cfg.seed}:{speaker}".encode()).hexdigest()[:8], 16) / 2**32


def speaker_split(speaker: str, cfg: SplitConfig, given: str | None = None) -> str:
    if cfg.force:
        return cfg.force
    if speaker in cfg.test_speakers:
        return "test"
    if speaker in cfg.val_speakers:
        return "val"
    if given in ("test", "val"):
        return given
    u = _speaker_hash(speaker, cfg)
    if given is None and u < cfg.test_fraction:
        return "test"
    if u >= 1.0 - cfg.val_fraction:
        return "val"
    return given or "train"


@dataclass
class SpeakerMapConfig:
    """``folder``: speakers read from a table (e.g. a corpus manifest) instead of parent folder names."""

    path: Path | None = None
    """Tab- or comma-separated file with a header row (None = speakers from folders)."""
    file_column: str = "file"
    """Column holding the file name (or the path relative to the root)."""
    speaker_column: str = "speaker"
    """Column holding the speaker (identity) label; files of one person share it."""


def read_speaker_map(cfg: SpeakerMapConfig) -> dict[str, str] | None:
    """File name (or relative path) -> speaker, from ``cfg.path``; None when no table is given."""
    if cfg.path is None:
        return None
    if not Path(cfg.path).is_file():
        raise ConfigError(f"speakers.path: no such file {cfg.path}")
    with open(cfg.path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t" if Path(cfg.path).suffix.lower() in (".tsv", ".tab") else ","))
    if not rows or cfg.file_column not in rows[0] or cfg.speaker_column not in rows[0]:
        header = list(rows[0]) if rows else []
        raise ConfigError(f"{cfg.path}: needs columns {cfg.file_column!r} and {cfg.speaker_column!r} (set speakers.file_column / "
                          f"speakers.speaker_column); its header is {header}")
    return {r[cfg.file_column].strip(): r[cfg.speaker_column].strip() for r in rows if r[cfg.file_column] and r[cfg.speaker_column]}


def _videos(root: Path) -> list[Path]:
    """Video files by extension (the fixed layouts name their videos .mp4 anyway)."""
    # broken symlinks are kept: they become "unreadable path" failures, not silent gaps
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTS and (p.is_file() or p.is_symlink()))


def _media_files(root: Path) -> list[Path]:
    """Every file that might be media: what PyAV cannot open becomes a ledger line, never silence. A file is a folder of one."""
    if root.is_file():
        return [root]
    return sorted(
        p for p in root.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.suffix.lower() not in NOT_MEDIA_EXTS and p.name not in NOT_MEDIA_NAMES and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def folder_clips(root: Path, split: SplitConfig, speaker: str | None = None, name: str = "folder", speakers: dict[str, str] | None = None) -> list[Clip]:
    """Speaker = ``speakers[file]`` when a table is given, else the parent folder; a file lying directly in ``root`` is its own speaker."""
    out = []
    base = root if root.is_dir() else root.parent
    for p in _media_files(root):
        rel = p.relative_to(base).with_suffix("")
        mapped = speakers.get(str(p.relative_to(base)), speakers.get(p.name)) if speakers else None
        if mapped:
            spk = mapped
            key = make_key(name, spk, "-".join(rel.parts))
            out.append(Clip(key, name, spk, "-".join(rel.parts), 0, speaker_split(spk, split), str(p)))
            continue
        spk = speaker or (rel.parts[-2] if len(rel.parts) > 1 else rel.parts[-1])
        video = "-".join(rel.parts)
        key = make_key(name, video) if video == spk else make_key(name, spk, "-".join(rel.parts[-1:]) if speaker is None else video)
        out.append(Clip(key, name, spk, video, 0, speaker_split(spk, split), str(p)))
    return out


def _read_vox_meta(meta_csv: Path) -> dict[str, str]:
    with open(meta_csv, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header = [h.strip() for h in rows[0]]
    if "Set" not in header:
        raise ConfigError(f"{meta_csv}: no 'Set' column in the tab-separated header {header}")
    id_col, set_col = 0, header.index("Set")
    return {r[id_col].strip(): {"dev": "train", "test": "test"}.get(r[set_col].strip(), r[set_col].strip()) for r in rows[1:] if r}


def voxceleb1_clips(root: Path, split: SplitConfig, meta_csv: Path | None = None, audio_root: Path | None = None) -> list[Clip]:
    sets = _read_vox_meta(meta_csv) if meta_csv else {}
    out = []
    for p in sorted(root.glob("id*/*/*.mp4")):
        spk, yt, utt = p.parts[-3], p.parts[-2], p.stem
        audio = audio_root / spk / yt / f"{utt}.wav" if audio_root else None
        out.append(Clip(make_key("vox1", spk, yt, utt), "voxceleb1", spk, yt, int(utt) if utt.isdigit() else 0,
                        speaker_split(spk, split, sets.get(spk)), str(p), str(audio) if audio else None))
    return out


def mead_clips(root: Path, split: SplitConfig, view: str = "front") -> list[Clip]:
    out = []
    for p in sorted(root.glob(f"*/video/{view}/*/*/*.mp4")):
        spk, emotion, level, utt = p.parts[-6], p.parts[-3], p.parts[-2], p.stem
        audio = root / spk / "audio" / emotion / level / f"{utt}.m4a"
        lv = "l" + level.rsplit("_", 1)[-1]
        out.append(Clip(make_key("mead", spk, view, emotion, lv, utt), "mead", spk, f"{view}_{emotion}_{lv}_{utt}",
                        int(utt) if utt.isdigit() else 0, speaker_split(spk, split), str(p), str(audio)))
    return out


_HDTF_CLIP = re.compile(rf"^({'|'.join(HDTF_SOURCES)})_(.+?)(?:_(\d+))?$")


def _seconds(t: str) -> float:
    parts = [float(x) for x in t.strip().split(":")]
    return sum(v * 60**i for i, v in enumerate(reversed(parts)))


def hdtf_clips(root: Path, split: SplitConfig) -> list[Clip]:
    out = []
    annotations = sorted(root.rglob("*_annotion_time.txt"))
    if annotations:
        for ann in annotations:
            src = ann.name.split("_", 1)[0]
            for line in ann.read_text().splitlines():
                fields = line.split()
                if not fields:
                    continue
                name = Path(fields[0]).stem
                candidates = [root / f"{name}.mp4", root / src / f"{name}.mp4", root / f"{src}_{name}.mp4", ann.parent / f"{name}.mp4"]
                video = next((c for c in candidates if c.exists()), candidates[0])
                spk = src + "_" + re.sub(r"_\d+$", "", name)
                for i, span in enumerate(fields[1:]):
                    a, _, b = span.partition("-")
                    out.append(Clip(make_key("hdtf", src, name, f"c{i:02d}"), "hdtf", spk, f"{src}_{name}", i,
                                    speaker_split(spk, split), str(video), None, _seconds(a), _seconds(b)))
        return out
    for p in _videos(root):
        m = _HDTF_CLIP.match(p.stem)
        spk = f"{m[1]}_{m[2]}" if m else p.stem
        out.append(Clip(make_key("hdtf", p.stem, "c00"), "hdtf", spk, p.stem, 0, speaker_split(spk, split), str(p)))
    return out


def _held_out_end(clip: Clip, fraction: float) -> list[Clip]:
    """``clip`` as its first part (its own split, key ``..._head``) and its last ``fraction`` (val, ``..._tail``)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"split.holdout must be between 0 and 1 (the share of each video held out at its end), got {fraction}")
    try:
        from preprocess.media import probe

        end = clip.end if clip.end is not None else probe(Path(clip.path)).duration
    except ClipError:  # unreadable: kept whole, so that shard records it in the ledger like any other broken file
        return [clip]
    cut = clip.start + (1 - fraction) * (end - clip.start)
    return [replace(clip, key=make_key(clip.key, "head"), end=cut), replace(clip, key=make_key(clip.key, "tail"), split="val", start=cut, end=end)]


def _ensure_val_speakers(clips: list[Clip], cfg: SplitConfig) -> list[Clip]:
    """Move whole train speakers (highest hash first) to val until ``cfg.min_val_speakers`` speakers are there."""
    val = {c.speaker for c in clips if c.split == "val"}
    if cfg.force or len(val) >= cfg.min_val_speakers:
        return clips
    train = sorted({c.speaker for c in clips if c.split == "train"}, key=lambda s: -_speaker_hash(s, cfg))
    moved = set(train[: cfg.min_val_speakers - len(val)])
    return [replace(c, split="val") if c.speaker in moved else c for c in clips]


def list_clips(dataset: str, root: Path | None, split: SplitConfig, meta_csv: Path | None = None, audio_root: Path | None = None,
               mead_view: str = "front", speaker: str | None = None, speakers: dict[str, str] | None = None) -> list[Clip]:
    """Every clip of a dataset root, sorted by key (the same list on every rank and rerun)."""
    if root is None:
        raise ConfigError("no dataset root given: pass --root DIR (or set root: in the --config YAML)")
    if not (root.is_dir() or dataset == "folder" and root.is_file()):
        raise ConfigError(f"dataset root not found or not a folder: {root}")
    if dataset == "voxceleb1":
        clips = voxceleb1_clips(root, split, meta_csv, audio_root)
    elif dataset == "mead":
        clips = mead_clips(root, split, mead_view)
    elif dataset == "hdtf":
        clips = hdtf_clips(root, split)
    elif dataset == "folder":
        clips = folder_clips(root, split, speaker, speakers=speakers)
    else:
        raise ConfigError(f"unknown dataset {dataset!r}: choose voxceleb1, mead, hdtf or folder")
    if split.by == "video":
        clips = [replace(c, split=speaker_split(c.video, split)) for c in clips]
    else:
        clips = _ensure_val_speakers(clips, split)
    if split.holdout > 0:
        clips = [part for c in clips for part in _held_out_end(c, split.holdout)]
    dupes = {k for k, n in Counter(c.key for c in clips).items() if n > 1}
    if dupes:
        raise ConfigError(f"{len(dupes)} clips map to the same key (e.g. {sorted(dupes)[0]}): file names differ only in characters keys drop")
    return sorted(clips, key=lambda c: c.key)
