"""The two trained networks of the diffusion-head workload (docs/theory.md §16): a condition transformer over masked
2 x 2 patches of an 8 x 8 digit and its class, and an MLP denoising head ``eps_hat(x_t, t, z)``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from carv_adapt.errors import ConfigError

__all__ = ["ConditionNet", "DenoisingHead", "Models", "to_patches", "PATCHES", "PATCH_DIM", "X_DIM"]

PATCHES, PATCH_DIM, X_DIM = 16, 4, 64


def to_patches(x: Tensor) -> Tensor:
    """``N x 64`` images -> ``N x 16 x 4`` 2 x 2 patches (row-major)."""
    return x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, PATCHES, PATCH_DIM)


class _Block(nn.Module):
    """Pre-norm transformer block with plain-op attention (every op has a vmap rule: the probe batches its VJPs)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.n1(x)).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // self.heads), dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.n2(x))


class ConditionNet(nn.Module):
    """``z = net(patches, mask, class)``: a transformer over a class token and 16 (masked) patch tokens."""

    def __init__(self, dim: int = 64, depth: int = 3, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.embed = nn.Linear(PATCH_DIM, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.cls = nn.Embedding(10, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(PATCHES + 1, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm, self.out = nn.LayerNorm(dim), nn.Linear(dim, dim)

    def forward(self, patches: Tensor, mask: Tensor, y: Tensor) -> Tensor:
        """``N x 16 x 4`` patches, ``N x 16`` bool mask (True = hidden), ``N`` labels -> ``N x dim``."""
        tok = torch.where(mask.unsqueeze(-1), self.mask_token, self.embed(patches))
        x = torch.cat([self.cls(y).unsqueeze(1), tok], dim=1) + self.pos
        for b in self.blocks:
            x = b(x)
        return self.out(self.norm(x[:, 0]))


def _time_embedding(t: Tensor, dim: int = 32) -> Tensor:
    half = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    a = t.float().unsqueeze(-1) * half
    return torch.cat([a.sin(), a.cos()], dim=-1)


class DenoisingHead(nn.Module):
    """``eps_hat(x_t, t, z)``: an MLP on ``[x_t, emb(t), z]`` (MAR's head conditions on ``z`` the same way, through
    adaptive norms; a concatenation keeps this one small)."""

    def __init__(self, z_dim: int = 64, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        sizes = [X_DIM + 32 + z_dim] + [width] * (depth - 1) + [X_DIM]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x_t: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """``B x 64`` noised images, ``B`` timesteps, ``B x z_dim`` conditions -> ``B x 64`` predicted noise."""
        return self.net(torch.cat([x_t, _time_embedding(t), z], dim=-1))


@dataclass
class Models:
    """The two trained networks."""

    cond: ConditionNet
    head: DenoisingHead

    def params(self) -> list[Tensor]:
        """Condition-network parameters first, then the head's: the order of every flattened gradient."""
        return list(self.cond.parameters()) + list(self.head.parameters())
