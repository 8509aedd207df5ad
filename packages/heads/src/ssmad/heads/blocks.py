"""Token encoders for the reconstructor ablations: the ViM encoder's embedding with a pluggable block stack.

:class:`TokenEncoder` takes its stem from :class:`ssmad.ssm.ViMEncoder` built with ``depth=0`` — the very same
patch embedding (conv ``k = s = patch``), learned position embedding and final RMSNorm — and runs its own blocks
between them, so the CNN and Transformer ablations differ from the ViM reconstructor only in the blocks. Every
block is called as ``block(tokens: B×L×d, (h, w)) -> B×L×d`` (row-major tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssmad.core import ConfigError
from ssmad.ssm import DropPath, ViMEncoder, map_to_tokens, tokens_to_map


class ConvBlock(nn.Module):
    """Pre-norm residual conv block on the token grid: ``x + DropPath(conv1×1(GELU(conv k×k(LN(x)))))``.

    ``kernel = 1`` mixes channels only (a per-token MLP); ``kernel = 3`` also mixes each token's 8 neighbours.
    """

    def __init__(self, d_model: int, kernel: int, drop_path: float = 0.0, expand: int = 2) -> None:
        super().__init__()
        inner = expand * d_model
        self.norm = nn.LayerNorm(d_model)
        self.conv = nn.Conv2d(d_model, inner, kernel, padding=kernel // 2)
        self.act = nn.GELU()
        self.proj = nn.Conv2d(inner, d_model, 1)
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        y = tokens_to_map(self.norm(tokens), hw)
        y = self.proj(self.act(self.conv(y)))
        return tokens + self.drop_path(map_to_tokens(y)[0])


class TransformerBlock(nn.Module):
    """Pre-norm Transformer encoder block: multi-head self-attention then a GELU MLP, each residual."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        if d_model % heads:
            raise ConfigError(f"transformer: d_model {d_model} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attn_proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        hidden = int(round(d_model * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        self.drop_path = DropPath(drop_path)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # B×heads×L×dh
        return self.attn_proj(y.transpose(1, 2).reshape(b, n, c))

    def forward(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        tokens = tokens + self.drop_path(self.attention(self.norm1(tokens)))
        return tokens + self.drop_path(self.mlp(self.norm2(tokens)))


class TokenEncoder(nn.Module):
    """``forward(x: B×in_chans×H×W) -> B×d_model×(H/p)×(W/p)``: ViM embedding → ``blocks`` → ViM final RMSNorm."""

    def __init__(self, in_chans: int, img_size: int | tuple[int, int], patch_size: int, d_model: int,
                 blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.stem = ViMEncoder(in_chans, img_size, patch_size, d_model, depth=0)  # embedding + final norm only
        self.in_chans, self.img_size, self.patch_size, self.d_model = in_chans, self.stem.img_size, patch_size, d_model
        self.grid = self.stem.grid
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, hw = self.stem.embed(x)
        for block in self.blocks:
            tokens = block(tokens, hw)
        return tokens_to_map(self.stem.forward_tokens(tokens), hw)
