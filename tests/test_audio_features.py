"""The three audio extractors: real weights, shapes, 50 Hz alignment, long-audio chunking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from preprocess.audio_features import (
    AudioFeatureConfig,
    MelFeatures,
    build_audio_features,
    default_whisper_path,
    log_mel,
)
from preprocess.errors import ConfigError
from preprocess.weights import weight_file, weights_available
from preprocess.whisper_encoder import WhisperEncoder, read_ct2


def _burst(num_frames: int, frame: int) -> np.ndarray:
    """Silence with a loud white-noise burst exactly over video frame ``frame`` (broadband: every mel bin sees it)."""
    a = np.zeros(num_frames * 640, np.float32)
    a[frame * 640 : (frame + 1) * 640] = np.random.default_rng(frame).normal(0, 0.3, 640)
    return a


def test_mel_rows_align_with_video_frames() -> None:
    feats = MelFeatures()(_burst(40, 17), 40)
    assert feats.shape == (80, 80) and feats.dtype == np.float16
    energy = feats.astype(np.float32).mean(1)
    assert int(np.argmax(energy)) == 35  # the 40 ms window centred on the burst: row 2t + 1
    loud = np.flatnonzero(energy > energy.min() + 0.5 * (energy.max() - energy.min()))
    assert set(loud) <= {34, 35, 36}  # half-covering windows on either side, nothing further


@pytest.mark.parametrize(("name", "dim"), [("whisper-tiny", 384), ("whisper-base", 512)])
def test_whisper_real_weights_shape_and_alignment(grid_audio, name: str, dim: int) -> None:
    if name == "whisper-base" and not weights_available("whisper-base"):
        pytest.skip("Whisper-base is not in the weights store: run make weights")
    ext = build_audio_features(AudioFeatureConfig(name=name))
    assert ext.name == name and ext.dim == dim
    a = grid_audio["bbaf2n"]
    feats = ext(a, 75)
    assert feats.shape == (150, dim) and feats.dtype == np.float16
    assert np.isfinite(feats.astype(np.float32)).all()
    # speech vs silence: a loud burst at frame 30 changes the features around rows 60-61 most
    quiet = ext(np.zeros(40 * 640, np.float32), 40).astype(np.float32)
    burst = ext(_burst(40, 30), 40).astype(np.float32)
    diff = np.linalg.norm(burst - quiet, axis=1)
    assert abs(int(np.argmax(diff)) - 61) <= 2


def _whisper(size: str) -> WhisperEncoder:
    if size == "tiny":
        return WhisperEncoder.from_file(default_whisper_path())
    if not weights_available("whisper-base"):
        pytest.skip("Whisper-base is not in the weights store: run make weights")
    return WhisperEncoder.from_file(weight_file("whisper-base"))


@pytest.mark.parametrize(("size", "dims"), [("tiny", (384, 4, 6)), ("base", (512, 6, 8))])
def test_whisper_encoder_matches_transformers(size: str, dims: tuple[int, int, int]) -> None:
    """Our encoder and transformers' WhisperEncoder, same weights (tiny: CTranslate2 file; base: converted store file), same 30 s input."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFEncoder

    ours = _whisper(size)
    d, layers, heads = dims
    assert (ours.conv1.out_channels, len(ours.blocks), ours.blocks[0].heads) == dims
    cfg = WhisperConfig(d_model=d, encoder_layers=layers, encoder_attention_heads=heads, encoder_ffn_dim=4 * d, num_mel_bins=80, max_source_positions=1500)
    hf = HFEncoder(cfg).eval()
    m = ours.state_dict()
    sd = {"conv1.weight": m["conv1.weight"], "conv1.bias": m["conv1.bias"], "conv2.weight": m["conv2.weight"], "conv2.bias": m["conv2.bias"],
          "embed_positions.weight": m["positions"], "layer_norm.weight": m["ln_post.weight"], "layer_norm.bias": m["ln_post.bias"]}
    for i in range(layers):
        q, k, v = m[f"blocks.{i}.qkv.weight"].chunk(3)
        qb, kb, vb = m[f"blocks.{i}.qkv.bias"].chunk(3)
        assert kb.abs().max() == 0  # Whisper's key projection has no bias
        p, b = f"layers.{i}.", f"blocks.{i}."
        sd.update({p + "self_attn.q_proj.weight": q, p + "self_attn.q_proj.bias": qb, p + "self_attn.k_proj.weight": k,
                   p + "self_attn.v_proj.weight": v, p + "self_attn.v_proj.bias": vb,
                   p + "self_attn.out_proj.weight": m[b + "out.weight"], p + "self_attn.out_proj.bias": m[b + "out.bias"],
                   p + "self_attn_layer_norm.weight": m[b + "attn_ln.weight"], p + "self_attn_layer_norm.bias": m[b + "attn_ln.bias"],
                   p + "final_layer_norm.weight": m[b + "mlp_ln.weight"], p + "final_layer_norm.bias": m[b + "mlp_ln.bias"],
                   p + "fc1.weight": m[b + "fc1.weight"], p + "fc1.bias": m[b + "fc1.bias"], p + "fc2.weight": m[b + "fc2.weight"], p + "fc2.bias": m[b + "fc2.bias"]})
    hf.load_state_dict(sd, strict=True)
    audio = np.random.default_rng(0).normal(0, 0.1, 30 * 16000).astype(np.float32)
    mel = log_mel(audio, hop=160, n_fft=400)[None]
    assert mel.shape == (1, 80, 3000)
    with torch.no_grad():
        np.testing.assert_allclose(ours(mel).numpy(), hf(mel).last_hidden_state.numpy(), atol=1e-4)


def test_whisper_mel_matches_transformers_feature_extractor() -> None:
    from transformers import WhisperFeatureExtractor

    audio = np.random.default_rng(1).normal(0, 0.1, 30 * 16000).astype(np.float32)
    ref = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000, return_tensors="np").input_features[0]
    np.testing.assert_allclose(log_mel(audio, hop=160, n_fft=400).numpy(), ref, atol=1e-4)


def test_long_audio_is_chunked_with_exact_row_count() -> None:
    ext = build_audio_features(AudioFeatureConfig(chunk_seconds=2.0, context_seconds=0.5))
    n = 7 * 25 + 3  # 7.12 s: four chunks, the last partial
    feats = ext(np.random.default_rng(2).normal(0, 0.05, n * 640).astype(np.float32), n)
    assert feats.shape == (2 * n, 384)
    assert np.isfinite(feats.astype(np.float32)).all()


def test_int8_whisper_is_close_to_fp32(grid_audio) -> None:
    a = grid_audio["lbax4n"]
    fp32 = build_audio_features(AudioFeatureConfig())(a, 75).astype(np.float32)
    ext = build_audio_features(AudioFeatureConfig(precision="int8"))
    assert ext.name == "whisper-tiny-int8"
    int8 = ext(a, 75).astype(np.float32)
    cos = (fp32 * int8).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1))
    assert cos.mean() > 0.98


def test_hubert_from_local_folder(tmp_path: Path) -> None:
    """A tiny randomly initialised HubertModel saved locally (tests only: random weights on purpose)."""
    from transformers import HubertConfig, HubertModel

    cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    HubertModel(cfg).save_pretrained(tmp_path / "hubert")
    ext = build_audio_features(AudioFeatureConfig(name="hubert", path=str(tmp_path / "hubert"), layer=1))
    for n in (1, 37, 50):
        feats = ext(np.random.default_rng(n).normal(0, 0.1, n * 640).astype(np.float32), n)
        assert feats.shape == (2 * n, 32) and feats.dtype == np.float16
    with pytest.raises(ConfigError, match="audio.path"):
        build_audio_features(AudioFeatureConfig(name="hubert"))


def test_ct2_reader_lists_encoder_variables() -> None:
    v = read_ct2(default_whisper_path(), "encoder/conv1")
    assert v["encoder/conv1/weight"].shape == (384, 80, 3) and v["encoder/conv1/weight"].dtype == np.float16


def test_streaming_features_equal_blockwise_encoding_for_any_chunking_and_keep_only_their_window(grid_audio):
    """Block k is encoded from rows [kB − L, (k+1)B + R) of the audio, whatever pieces it arrived in; old audio is dropped."""
    from preprocess.audio_features import AudioFeatureConfig, StreamingFeatures, _fit_rows, build_audio_features

    audio = grid_audio["lbax4n"]
    extractor = build_audio_features(AudioFeatureConfig(name="mel"))
    rows = 2 * -(-len(audio) // 640)
    padded = np.pad(audio, (0, rows * 320 - len(audio)))
    block, left, ahead = 20, 30, 10
    expected = []
    for r0 in range(0, rows, block):
        in_push = (r0 + block + ahead) * 320 <= len(audio)  # encoded as soon as its lookahead arrived, else at the end
        a0, a1 = max(0, r0 - left), min(len(audio) // 320 if in_push else rows, r0 + block + ahead)
        with torch.inference_mode():
            encoded = _fit_rows(np.asarray(extractor.encode(padded[a0 * 320 : a1 * 320]), np.float32), a1 - a0)
        expected.append(encoded[r0 - a0 : min(rows, r0 + block) - a0])
    expected = np.concatenate(expected).astype(np.float16)
    for chunk in (160, 640, 16000, len(audio)):
        stream = StreamingFeatures(extractor, block, left, ahead)
        got = np.concatenate([stream.push(audio[s : s + chunk]) for s in range(0, len(audio), chunk)] + [stream.finish(rows)])
        assert np.array_equal(got, expected), chunk
        assert stream.offset > 0 and len(stream.audio) < len(audio)  # history older than `left` rows was dropped
