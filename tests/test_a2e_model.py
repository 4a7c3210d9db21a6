"""The A2E transformer, its ablation switches, and sliding-window inference."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.a2e.inference import blend_weights, predict_expressions, window_starts
from lightning_modules.a2e.transformer import A2ETransformer, parameter_count


def tiny(**kw) -> A2ETransformer:
    torch.manual_seed(0)
    return A2ETransformer(audio_dim=16, shape_dim=9, exp_dim=64, d_model=32, num_heads=2, cmsa_layers=1, tca_layers=1, ff_mult=2, dropout=0.0, **kw).eval()


@pytest.mark.parametrize("use_shape,use_history,expected", [(True, True, 32 + 1 + 16), (False, True, 32 + 16), (True, False, 33), (False, False, 32)])
def test_ablation_switches_leave_tokens_out(use_shape, use_history, expected):
    net = tiny(use_shape=use_shape, use_history=use_history)
    tokens = net.tokens(torch.randn(2, 32, 16), torch.randn(2, 9), torch.randn(2, 16, 64))
    assert tokens.shape == (2, expected, 32)
    assert (net.shape_embed is None) != use_shape and (net.history_embed is None) != use_history
    assert net(torch.randn(2, 32, 16), torch.randn(2, 9), torch.randn(2, 16, 64)).shape == (2, 16, 64)


def test_priors_change_the_prediction_only_when_switched_on():
    audio, shape, hist = torch.randn(1, 32, 16), torch.randn(1, 9), torch.randn(1, 16, 64)
    with torch.no_grad():
        on, off = tiny(), tiny(use_history=False)
        assert not torch.allclose(on(audio, shape, hist), on(audio, shape, hist + 1))
        assert torch.equal(off(audio, shape, hist), off(audio, shape, hist + 1))


def test_default_size_is_the_documented_one():
    assert 5.0e6 < parameter_count(A2ETransformer()) < 6.0e6


def test_window_starts_cover_the_clip_and_end_flush():
    assert window_starts(10, 16, 8) == [0]
    assert window_starts(40, 16, 8) == [0, 8, 16, 24]
    s = window_starts(41, 16, 4)
    assert s[0] == 0 and s[-1] == 41 - 16 and all(b - a <= 12 for a, b in zip(s, s[1:]))
    w = blend_weights(16, 4)
    assert w[0] == 0.2 and w[4:12].eq(1).all() and w[-1] == 0.2


@pytest.mark.parametrize("frames", [1, 7, 16, 17, 63, 200])
def test_sliding_window_gives_one_prediction_per_frame(frames):
    net = tiny()
    out = predict_expressions(net, torch.randn(2 * frames, 16), torch.randn(9), torch.randn(16, 64), window=16, overlap=8)
    assert out.shape == (frames, 64) and torch.isfinite(out).all()


class WindowOffsetNet(torch.nn.Module):
    """Stand-in with the failure blending must fix: smooth inside a window, a per-window offset.

    Output = 0.1 x frame time (audio channel 0, the same in every window) + the window's mean of
    audio channel 1 (differs from window to window, like a real model's context effects).
    """

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(1, 4)

    def forward(self, audio: torch.Tensor, shape: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        smooth = 0.1 * audio[:, 0::2, :1]
        offset = audio[:, :, 1:2].mean(1, keepdim=True)
        return (smooth + offset).expand(-1, -1, 4)


def test_sliding_window_is_continuous_at_the_seams():
    frames = 120
    torch.manual_seed(1)
    audio = torch.stack([torch.arange(2 * frames) / 2.0, torch.randn(2 * frames) * 3], 1)
    net, shape, hist = WindowOffsetNet(), torch.zeros(9), torch.zeros(16, 4)
    step = lambda x: (x[1:, 0] - x[:-1, 0]).abs()  # noqa: E731
    hard = predict_expressions(net, audio, shape, hist, window=16, overlap=0)
    soft = predict_expressions(net, audio, shape, hist, window=16, overlap=8)
    seams = [16 * k - 1 for k in range(1, frames // 16)]
    hard_jumps = step(hard)[seams]
    assert hard_jumps.mean() > 0.5  # hard cuts jump where windows meet (the true step is 0.1)
    assert step(soft).max() < 0.1 + hard_jumps.max() / 4  # blended: every step is the slope plus a fraction of a jump
    assert torch.allclose(soft[:8], hard[:8])  # frames only one window covers are that window's answer
