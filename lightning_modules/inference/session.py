"""Audio in, lip-synced frames out: the one engine behind ``dub`` (whole file) and ``stream`` (live).

    audio ─► features ─► A2E windows (β̂) ─► masks ─► renderer (reference encoded once) ─► paste ─► frames

``features="whole"`` encodes the whole audio at once when it ends, as the shards were made (what
the A2E was trained on; ``dub``'s default). ``features="streaming"`` encodes fixed blocks as the
audio arrives (:class:`~preprocess.audio_features.StreamingFeatures`), so frames come out while
the voice is still speaking. Either way the output does not depend on how the audio was cut into
:meth:`RealtimeSession.push_audio` calls.

Algorithmic latency (``streaming``): a frame needs the audio of up to ``block − 1 + lookahead``
feature rows after it (features) and then up to ``window + hop − 1`` frames after it (A2E windows);
:attr:`RealtimeSession.latency_seconds` gives the sum. Compute latency comes on top; ``stream``
measures both.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from lightning_modules.a2e.inference import ExpressionStream
from lightning_modules.inference.avatar import Avatar
from lightning_modules.inference.compose import CropRenderer, paste
from lightning_modules.inference.networks import A2ENetwork, CheckpointError, RendererNetwork
from preprocess.audio_features import FEATURE_RATE, ROWS_PER_FRAME, AudioFeatureConfig, StreamingFeatures, build_audio_features
from preprocess.errors import ConfigError
from preprocess.media import SAMPLES_PER_FRAME, VIDEO_FPS

Loop = Literal["ping-pong", "repeat", "none"]
FeatureMode = Literal["whole", "streaming"]


def source_frame(i: int, count: int, loop: Loop) -> int | None:
    """The avatar frame shown at output frame ``i``; None once a ``none`` loop has run out of video.

    ``ping-pong`` runs forward and back without repeating the turning frames (0 1 2 1 0 1 …), so the
    motion never jumps; ``repeat`` starts over (0 1 2 0 1 …).
    """
    if i < count:
        return i
    if loop == "none":
        return None
    if loop == "repeat" or count == 1:
        return i % count
    p = i % (2 * count - 2)
    return p if p < count else 2 * count - 2 - p


@dataclass
class Frame:
    """One output frame: the image, the avatar frame it was drawn from, and whether its face was redrawn."""

    index: int
    image: np.ndarray
    source: int
    redrawn: bool
    box: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) of the pasted area
    weight: np.ndarray | None = None  # blend weight over ``box`` (0 = the source pixel, unchanged)


class RealtimeSession:
    """Drive an avatar with audio pushed in pieces of any size; pull frames as they become computable.

    Args:
        a2e, renderer: networks from :func:`~lightning_modules.inference.networks.load_pair`.
        avatar: from :func:`~lightning_modules.inference.avatar.prepare_avatar`, fitted with their face model.
        device: where the networks run.
        loop: what happens when the audio outlasts the video (see :func:`source_frame`).
        features: ``whole`` (offline, as trained) or ``streaming`` (fixed blocks, frames while audio arrives).
        block, left, lookahead: the streaming feature schedule, in 50 Hz rows.
        batch: frames per renderer call (frames are also rendered as soon as fewer are ready).
        cache_reference: encode the reference frame once (False: with every batch, as training does).
        history_seed: seed of the history expressions drawn from the avatar.
    """

    def __init__(self, a2e: A2ENetwork, renderer: RendererNetwork, avatar: Avatar, device: str | torch.device = "cpu", loop: Loop = "ping-pong",
                 features: FeatureMode = "streaming", block: int = 20, left: int = 200, lookahead: int = 25, batch: int = 8,
                 cache_reference: bool = True, history_seed: int = 0) -> None:
        if avatar.face_model != a2e.face_model.full_name:
            raise CheckpointError(f"the avatar of {avatar.source} was fitted with face model {avatar.face_model}, the networks use {a2e.face_model.full_name}")
        self.device = torch.device(device)
        self.a2e, self.avatar, self.loop, self.mode, self.batch = a2e, avatar, loop, features, batch
        try:
            extractor = build_audio_features(AudioFeatureConfig(name=a2e.audio_features))
        except (ConfigError, ValueError) as e:
            raise CheckpointError(f"the A2E {a2e.path} was trained on audio features {a2e.audio_features!r}, which cannot be built here: {e}") from None
        if extractor.dim != a2e.net.audio_embed.in_features:
            raise CheckpointError(f"audio features {a2e.audio_features!r} are {extractor.dim}-d here but the A2E {a2e.path} takes {a2e.net.audio_embed.in_features}")
        self.extractor = extractor
        self.stream_features = StreamingFeatures(extractor, block, left, lookahead) if features == "streaming" else None
        a2e.net.to(self.device)
        as_t = lambda a: torch.from_numpy(np.asarray(a, np.float32)).to(self.device)  # noqa: E731
        self.expressions = ExpressionStream(a2e.net, as_t(avatar.shape_ref), as_t(avatar.history(a2e.num_history, history_seed)), a2e.window, a2e.overlap)
        t = time.perf_counter()
        self.renderer = CropRenderer(renderer.net, renderer.image_size, renderer.mask, str(renderer.face_model.path), avatar.crops(np.array([avatar.reference_index]))[0],
                                     self.device, cache_reference)
        self.seconds: dict[str, float] = defaultdict(float)
        self.seconds["reference"] = time.perf_counter() - t
        self.audio: list[np.ndarray] = []
        self.samples = 0
        self.pending = torch.zeros(0, a2e.net.head.out_features)  # β̂ not yet drawn
        self.next_frame = 0
        self.ended = False
        self.faces_lost = 0

    @property
    def latency_seconds(self) -> float:
        """Algorithmic latency: audio that must arrive after a frame's own audio before the frame can be computed."""
        if self.mode == "whole":
            return float("inf")
        rows = self.stream_features.latency_rows
        return rows / FEATURE_RATE + self.expressions.lookahead_frames / VIDEO_FPS

    def push_audio(self, pcm: np.ndarray) -> None:
        """Append 16 kHz mono float samples (any length)."""
        if self.ended:
            raise RuntimeError("push_audio after end()")
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        if self.stream_features is None:  # whole-file features need it all at the end; streaming keeps only its window
            self.audio.append(pcm)
        self.samples += len(pcm)
        if self.stream_features is not None:
            t = time.perf_counter()
            rows = self.stream_features.push(pcm)
            self._expressions(rows, t)

    def _expressions(self, rows: np.ndarray, started: float) -> None:
        t = time.perf_counter()
        self.seconds["audio_features"] += t - started
        if len(rows):
            self._queue(self.expressions.push(torch.from_numpy(rows.astype(np.float32)).to(self.device)))
        self.seconds["a2e"] += time.perf_counter() - t

    def _queue(self, exp: torch.Tensor) -> None:
        self.pending = torch.cat([self.pending, exp.cpu()])

    @property
    def num_frames(self) -> int:
        """Output frames of the audio so far: every started 40 ms."""
        return -(-self.samples // SAMPLES_PER_FRAME)

    def end(self) -> None:
        """The audio is over: the remaining frames become computable."""
        if self.ended:
            return
        self.ended = True
        frames = self.num_frames
        t = time.perf_counter()
        if self.stream_features is not None:
            rows = self.stream_features.finish(ROWS_PER_FRAME * frames)
        else:
            audio = np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)
            rows = self.extractor(audio, frames)
        self._expressions(rows, t)
        t = time.perf_counter()
        self._queue(self.expressions.finish(frames))
        self.seconds["a2e"] += time.perf_counter() - t

    def frames(self, flush: bool = False) -> Iterator[Frame]:
        """Frames that can be computed now, in order (every one of them once the session has ended).

        Before the end, frames are drawn in full batches unless ``flush`` (a live caller that wants each
        frame as soon as possible passes it).
        """
        while len(self.pending) and (self.ended or flush or len(self.pending) >= self.batch):
            take = min(self.batch, len(self.pending))
            exp, self.pending = self.pending[:take], self.pending[take:]
            yield from self._draw(exp)

    def _draw(self, exp: torch.Tensor) -> Iterator[Frame]:
        av = self.avatar
        first = self.next_frame
        self.next_frame += len(exp)
        sources = [source_frame(i, av.num_frames, self.loop) for i in range(first, first + len(exp))]
        drawn = [k for k, s in enumerate(sources) if s is not None and av.has_face[s]]
        rgb = weight = None
        if drawn:
            t = time.perf_counter()
            idx = np.array([sources[k] for k in drawn])
            crops = av.crops(idx)
            coeffs = {k: v[idx] for k, v in av.coeffs.items()}
            self.seconds["crop"] += time.perf_counter() - t
            rgb, weight = self.renderer(crops, coeffs, exp[drawn], self.seconds)
        row = {k: j for j, k in enumerate(drawn)}
        for k, s in enumerate(sources):
            if s is None:  # loop "none": the video has run out
                continue
            if k not in row:
                self.faces_lost += 1
                yield Frame(first + k, np.asarray(av.frames[s]), s, False)
                continue
            t = time.perf_counter()
            image, box, alpha = paste(np.asarray(av.frames[s]), rgb[row[k]], weight[row[k]], av.crop_matrix[s])
            self.seconds["paste"] += time.perf_counter() - t
            yield Frame(first + k, image, s, True, box, alpha)

