"""A small differentiable volume renderer: the expensive upstream stage of the SDS-3D workload.

A density and colour voxel grid in ``[-1, 1]^3``, pinhole cameras in a cone around the front view (on the
``+z`` axis, looking at the origin), uniform samples along each ray, trilinear lookups with
``grid_sample`` and emission-absorption compositing over a background. Cost grows with
``resolution^2 * samples_per_ray``: the knobs that vary the upstream cost honestly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carv_adapt.errors import ConfigError

__all__ = ["VoxelScene", "Cameras", "sample_cameras", "front_cameras", "render", "num_sample_points"]


class VoxelScene(nn.Module):
    """Density (softplus) and colour (sigmoid) grids of ``grid_size^3`` cells, initialised to a faint blob."""

    def __init__(self, grid_size: int = 24, channels: int = 1) -> None:
        super().__init__()
        if grid_size < 2 or channels < 1:
            raise ConfigError(f"need grid_size >= 2 and channels >= 1, got {grid_size!r}, {channels!r}")
        c = torch.linspace(-1, 1, grid_size)
        zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
        blob = 2.0 * torch.exp(-(xx**2 + yy**2 + zz**2) / 0.3)
        self.density_raw = nn.Parameter(torch.log(torch.expm1(blob.clamp_min(1e-3))))  # softplus^-1
        self.color_raw = nn.Parameter(torch.zeros(channels, grid_size, grid_size, grid_size))

    @property
    def channels(self) -> int:
        return self.color_raw.shape[0]

    def fields(self) -> Tensor:
        """``1 x (1 + C) x G x G x G``: density then colour, ready for ``grid_sample``."""
        return torch.cat([F.softplus(self.density_raw)[None], torch.sigmoid(self.color_raw)])[None]


@dataclass(frozen=True)
class Cameras:
    """``n`` pinhole cameras: ``origins`` ``n x 3``, camera-to-world ``rotations`` ``n x 3 x 3`` (columns right,
    up, forward) and the vertical field of view."""

    origins: Tensor
    rotations: Tensor
    fov_deg: float = 40.0

    def __len__(self) -> int:
        return self.origins.shape[0]


def _look_at(origins: Tensor) -> Tensor:
    forward = -origins / origins.norm(dim=1, keepdim=True)
    up0 = torch.tensor([0.0, 1.0, 0.0]).expand_as(forward)
    right = torch.linalg.cross(forward, up0)  # right-handed: right = forward x up
    right = right / right.norm(dim=1, keepdim=True)
    up = torch.linalg.cross(right, forward)
    return torch.stack([right, up, forward], dim=2)


def sample_cameras(
    n: int, generator: torch.Generator, max_angle_deg: float = 30.0, radius: float = 3.0, fov_deg: float = 40.0
) -> Cameras:
    """``n`` cameras uniform on the spherical cap within ``max_angle_deg`` of ``+z``, looking at the origin."""
    cos_max = math.cos(math.radians(max_angle_deg))
    cos_t = 1 - torch.rand(n, generator=generator) * (1 - cos_max)
    sin_t = (1 - cos_t**2).clamp_min(0).sqrt()
    phi = torch.rand(n, generator=generator) * 2 * math.pi
    origins = radius * torch.stack([sin_t * torch.cos(phi), sin_t * torch.sin(phi), cos_t], dim=1)
    return Cameras(origins, _look_at(origins), fov_deg)


def front_cameras(n: int = 1, radius: float = 3.0, fov_deg: float = 40.0) -> Cameras:
    """``n`` copies of the front view (for evaluation)."""
    origins = torch.tensor([[0.0, 0.0, radius]]).expand(n, 3).clone()
    return Cameras(origins, _look_at(origins), fov_deg)


def num_sample_points(n: int, resolution: int, samples_per_ray: int) -> int:
    """Grid lookups one :func:`render` call makes: ``n * resolution^2 * samples_per_ray``."""
    return n * resolution * resolution * samples_per_ray


def render(
    scene: VoxelScene, cameras: Cameras, resolution: int = 32, samples_per_ray: int = 32, background: float = -1.0
) -> Tensor:
    """Render ``n x C x resolution x resolution`` images in ``[-1, 1]``, differentiable in the scene."""
    if resolution < 1 or samples_per_ray < 2:
        raise ConfigError(f"need resolution >= 1 and samples_per_ray >= 2, got {resolution!r}, {samples_per_ray!r}")
    n = len(cameras)
    half = math.tan(math.radians(cameras.fov_deg) / 2)
    lin = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    v, u = torch.meshgrid(-lin * half, lin * half, indexing="ij")  # image rows go down
    dirs_cam = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)
    dirs = torch.einsum("nij,pj->npi", cameras.rotations, dirs_cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)  # n x P x 3
    dist = cameras.origins.norm(dim=1)  # the cube [-1, 1]^3 lies within sqrt(3) of the origin
    s = torch.linspace(0, 1, samples_per_ray)
    near, far = (dist - math.sqrt(3)).clamp_min(0.0), dist + math.sqrt(3)
    depth = near[:, None] + (far - near)[:, None] * s[None]  # n x S
    pts = cameras.origins[:, None, None, :] + dirs[:, :, None, :] * depth[:, None, :, None]  # n x P x S x 3
    # grid_sample's (x, y, z) index (W, H, D); the grids are laid out [z, y, x].
    vals = F.grid_sample(
        scene.fields(), pts.reshape(1, 1, -1, samples_per_ray, 3), align_corners=True, padding_mode="zeros"
    )  # 1 x (1+C) x 1 x nP x S
    vals = vals[0, :, 0].reshape(1 + scene.channels, n, -1, samples_per_ray)
    sigma, color = vals[0], vals[1:]
    delta = ((far - near) / (samples_per_ray - 1))[:, None, None] * 2.0  # world units; grid spans 2
    alpha = 1 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1] + 1e-10], -1), -1)
    w = alpha * trans  # n x P x S
    rgb = (w[None] * color).sum(-1)  # C x n x P
    acc = w.sum(-1)
    bg01 = (background + 1) / 2
    img = rgb + (1 - acc)[None] * bg01
    return (img * 2 - 1).permute(1, 0, 2).reshape(n, scene.channels, resolution, resolution)
