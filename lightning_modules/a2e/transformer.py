"""The audio-to-expression transformer (RealTalk A2E, ARCHITECTURE §1)."""

from __future__ import annotations

import math

import torch
from torch import nn


def periodic_positional_encoding(positions: torch.Tensor, d_model: int, period: int) -> torch.Tensor:
    """Sinusoidal encoding [..., d_model] of ``positions mod period``.

    The periodic variant (as in FaceFormer) repeats every ``period`` positions, so windows
    longer than anything seen in training still get encodings the model knows.
    """
    pos = (positions % period).float()[..., None]
    freq = torch.exp(torch.arange(0, d_model, 2, device=positions.device).float() * (-math.log(10000.0) / d_model))
    pe = torch.zeros(*positions.shape, d_model, device=positions.device)
    pe[..., 0::2] = torch.sin(pos * freq)
    pe[..., 1::2] = torch.cos(pos * freq)
    return pe


class A2ETransformer(nn.Module):
    """Audio features + face shape + historical expressions -> T expressions.

    Tokens: l audio rows, one shape token (α of the clip's first frame) and N historical
    expressions, each through its own linear embedding, concatenated (l + 1 + N), given a
    periodic positional encoding and passed through ``cmsa_layers`` cross-modal self-attention
    layers -> memory. T zero queries with the positional encoding of their audio time (frame t
    sits at audio row 2t) pass ``tca_layers`` temporal cross-attention layers (self-attention
    among the queries, cross-attention to the memory); a linear head gives β̂_1..β̂_T.

    Defaults (d_model 256, 4 heads, 3 + 3 layers, 5.5 M parameters) keep a 16-frame window
    well inside the paper's 2.3 ms budget while giving each layer 64-d heads; ``make bench``
    measures it.

    Args:
        audio_dim: width of the audio features (384 for Whisper tiny, 768 for HuBERT base).
        shape_dim: identity coefficients α of the face model.
        exp_dim: expression coefficients β of the face model.
        d_model: token width.
        num_heads: attention heads in every layer.
        cmsa_layers: N1, cross-modal self-attention layers.
        tca_layers: N2, temporal cross-attention layers.
        ff_mult: feed-forward width as a multiple of d_model.
        dropout: dropout inside the attention layers.
        pe_period: period of the positional encoding, in audio rows (50 = one second).
        use_shape: with the shape token (False leaves it out: Table 5 ablation).
        use_history: with the N history tokens (False leaves them out: Table 5 ablation).
        history_residual: predict the offset from the mean of the history expressions rather
            than β itself (only with ``use_history``). Our addition to the paper: a person's
            resting expression is what the history tells best, and a skip connection hands it
            over instead of making the attention layers re-derive it; on small data this is the
            difference between generalising to a new speaker and not.
    """

    def __init__(
        self,
        audio_dim: int = 384,
        shape_dim: int = 9,
        exp_dim: int = 64,
        d_model: int = 256,
        num_heads: int = 4,
        cmsa_layers: int = 3,
        tca_layers: int = 3,
        ff_mult: int = 4,
        dropout: float = 0.1,
        pe_period: int = 50,
        use_shape: bool = True,
        use_history: bool = True,
        history_residual: bool = True,
    ) -> None:
        super().__init__()
        self.audio_dim, self.shape_dim, self.exp_dim = audio_dim, shape_dim, exp_dim  # linked from the data: kept in checkpoints
        self.d_model, self.pe_period = d_model, pe_period
        self.use_shape, self.use_history = use_shape, use_history
        self.history_residual = history_residual and use_history
        # plain linear embeddings: a LayerNorm over the inputs would erase their loudness/magnitude;
        # the pre-norm attention layers normalise what they read anyway
        self.audio_embed = nn.Linear(audio_dim, d_model)
        self.shape_embed = nn.Linear(shape_dim, d_model) if use_shape else None
        self.history_embed = nn.Linear(exp_dim, d_model) if use_history else None
        ff = ff_mult * d_model
        self.cmsa = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model, num_heads, ff, dropout, batch_first=True, norm_first=True), cmsa_layers, enable_nested_tensor=False
        )
        self.tca = nn.TransformerDecoder(nn.TransformerDecoderLayer(d_model, num_heads, ff, dropout, batch_first=True, norm_first=True), tca_layers)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, exp_dim)

    def tokens(self, audio: torch.Tensor, shape: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """The memory's input [B, l (+1) (+N), d_model], positional encoding included.

        Switched-off priors are left out of the sequence, not zeroed, so attention never sees them.
        """
        parts = [self.audio_embed(audio)]
        if self.shape_embed is not None:
            parts.append(self.shape_embed(shape)[:, None])
        if self.history_embed is not None:
            parts.append(self.history_embed(history))
        x = torch.cat(parts, 1)
        return x + periodic_positional_encoding(torch.arange(x.shape[1], device=x.device), self.d_model, self.pe_period).to(x.dtype)

    def forward(self, audio: torch.Tensor, shape: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """β̂ [B, T, exp_dim] from audio [B, 2T, audio_dim], shape α_1 [B, shape_dim], history β [B, N, exp_dim]."""
        memory = self.cmsa(self.tokens(audio, shape, history))
        t = audio.shape[1] // 2
        query_pos = 2 * torch.arange(t, device=audio.device)  # frame t's audio rows are 2t, 2t + 1
        queries = periodic_positional_encoding(query_pos, self.d_model, self.pe_period).to(memory.dtype).expand(audio.shape[0], -1, -1)
        out = self.head(self.norm(self.tca(queries, memory)))
        return out + history.mean(1, keepdim=True) if self.history_residual else out


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
