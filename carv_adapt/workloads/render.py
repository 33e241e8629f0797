"""A small differentiable volume renderer: the expensive upstream stage of the SDS-3D workload.

A density and colour voxel grid in ``[-1, 1]^3``, pinhole cameras in a cone around the front view (on the
``+z`` axis, looking at the origin; up to the whole sphere) or at given ``(polar, azimuth)`` angles, uniform
samples along each ray, trilinear lookups with ``grid_sample`` and emission-absorption compositing over a
background. Each call makes exactly ``n * resolution^2 * samples_per_ray`` grid lookups
(:func:`num_sample_points`), so the two knobs vary the upstream cost honestly (docs/theory.md §11 measures it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carv_adapt.errors import ConfigError

__all__ = [
    "VoxelScene",
    "Cameras",
    "RaySamples",
    "sample_cameras",
    "front_cameras",
    "camera_at",
    "cameras_at",
    "ray_samples",
    "num_sample_points",
    "render",
]

_HALF_DIAGONAL = math.sqrt(3.0)  # the cube [-1, 1]^3 lies within this distance of the origin


class VoxelScene(nn.Module):
    """Density and colour grids of ``G x G x G`` cells spanning ``[-1, 1]^3``, laid out ``[z, y, x]``.

    Args:
        grid_size: ``G``, cells per side.
        channels: ``C``, colour channels (1: the teacher sees single-channel digits).

    ``density_raw`` (``G x G x G``) maps through softplus to a density per world unit; ``color_raw``
    (``C x G x G x G``) maps through a sigmoid to ``[0, 1]``. The scene starts as a soft grey blob, so the
    first renders already have something for the teacher's score to push on.
    """

    def __init__(self, grid_size: int = 32, channels: int = 1) -> None:
        super().__init__()
        if grid_size < 2:
            raise ConfigError(f"grid_size must be >= 2, got {grid_size!r}")
        if channels < 1:
            raise ConfigError(f"channels must be >= 1, got {channels!r}")
        c = torch.linspace(-1, 1, grid_size)
        zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
        # Peak density 4 with width ~0.55: the central ray's optical depth is ~3.9, the rim fades to clear.
        blob = 4.0 * torch.exp(-(xx**2 + yy**2 + zz**2) / 0.3)
        self.density_raw = nn.Parameter(torch.log(torch.expm1(blob.clamp_min(2e-3))))  # softplus^-1
        self.color_raw = nn.Parameter(torch.zeros(channels, grid_size, grid_size, grid_size))  # grey 0.5

    @property
    def grid_size(self) -> int:
        return self.density_raw.shape[0]

    @property
    def channels(self) -> int:
        return self.color_raw.shape[0]

    def density(self) -> Tensor:
        """``G x G x G`` non-negative density per world unit."""
        return F.softplus(self.density_raw)

    def color(self) -> Tensor:
        """``C x G x G x G`` colour in ``[0, 1]``."""
        return torch.sigmoid(self.color_raw)

    def fields(self) -> Tensor:
        """``1 x (1 + C) x G x G x G``: density then colour, stacked so one ``grid_sample`` reads both."""
        return torch.cat([self.density()[None], self.color()])[None]


@dataclass(frozen=True)
class Cameras:
    """``n`` pinhole cameras sharing one field of view.

    Attributes:
        origins: ``n x 3`` camera centres in world space.
        rotations: ``n x 3 x 3`` camera-to-world rotations; columns are right, up, forward.
        fov_deg: vertical (= horizontal; images are square) field of view in degrees.
    """

    origins: Tensor
    rotations: Tensor
    fov_deg: float = 40.0

    def __post_init__(self) -> None:
        n = self.origins.shape[0]
        if self.origins.shape != (n, 3) or self.rotations.shape != (n, 3, 3):
            raise ConfigError(
                f"Cameras need origins n x 3 and rotations n x 3 x 3, got {tuple(self.origins.shape)} and "
                f"{tuple(self.rotations.shape)}"
            )
        if not 0.0 < self.fov_deg < 180.0:
            raise ConfigError(f"fov_deg must lie in (0, 180), got {self.fov_deg!r}")

    @property
    def focal(self) -> float:
        """Focal length in units of the image half-width: ``1 / tan(fov / 2)``."""
        return 1.0 / math.tan(math.radians(self.fov_deg) / 2)

    def __len__(self) -> int:
        return self.origins.shape[0]

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(self.origins.to(device), self.rotations.to(device), self.fov_deg)


def _look_at(origins: Tensor) -> Tensor:
    """``n x 3 x 3`` camera-to-world rotations for cameras at ``origins`` (``n x 3``) facing the origin."""
    forward = -origins / origins.norm(dim=1, keepdim=True)
    # World +y is "up" except for a camera on the y axis, where the cross product would vanish.
    y, z = origins.new_tensor([0.0, 1.0, 0.0]), origins.new_tensor([0.0, 0.0, 1.0])
    up0 = torch.where((forward[:, 1:2].abs() > 1 - 1e-6), z, y)
    right = torch.linalg.cross(forward, up0)  # forward x up: +x for the front camera, as on screen
    right = right / right.norm(dim=1, keepdim=True)
    up = torch.linalg.cross(right, forward)
    return torch.stack([right, up, forward], dim=2)


def _check_pose(radius: float, fov_deg: float) -> None:
    if radius <= 0:
        raise ConfigError(f"radius must be > 0, got {radius!r}")
    if not 0.0 < fov_deg < 180.0:
        raise ConfigError(f"fov_deg must lie in (0, 180), got {fov_deg!r}")


def sample_cameras(
    n: int,
    generator: torch.Generator | None,
    max_angle_deg: float = 30.0,
    radius: float = 3.0,
    fov_deg: float = 40.0,
    *,
    u: Tensor | None = None,
    min_angle_deg: float = 0.0,
    axis: Literal["front", "up"] = "front",
) -> Cameras:
    """``n`` cameras uniform on the spherical zone between ``min_angle_deg`` and ``max_angle_deg`` of the axis,
    looking at the origin.

    Args:
        n: number of cameras.
        generator: the source of randomness when ``u`` is not given; tensors land on its device.
        max_angle_deg: half-angle of the cone of viewpoints around the axis, in ``[0, 180]`` (180: whole sphere).
        radius: distance of every camera from the origin.
        fov_deg: field of view of every camera.
        u: optional ``n x 2`` uniforms in ``[0, 1)`` (e.g. a plan's ``outer_u``, docs/theory.md §15): the azimuth
            is ``2 pi u[:, 0]``, the polar angle's cosine ``cos_min - u[:, 1] (cos_min - cos_max)`` (uniform in
            area), so an antithetic pair ``(u_0 + 1/2, 1 - u_1)`` is the antipodal view on a zone symmetric about
            the equator (and on the whole sphere).
        min_angle_deg: the zone's inner polar angle (0: a cone).
        axis: ``"front"``: polar angles from the front view ``+z``, the azimuth turning about it; ``"up"``: polar
            angles from ``+y`` (up), the azimuth turning about the vertical from the front view, so
            ``min_angle_deg=60, max_angle_deg=120`` is a 360 degree orbit within 30 degrees of the horizon.
    """
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n!r}")
    if not 0.0 <= min_angle_deg <= max_angle_deg <= 180.0:
        raise ConfigError(f"need 0 <= min_angle_deg <= max_angle_deg <= 180, got {min_angle_deg!r}, {max_angle_deg!r}")
    if axis not in ("front", "up"):
        raise ConfigError(f"axis must be 'front' or 'up', got {axis!r}")
    _check_pose(radius, fov_deg)
    cos_min, cos_max = math.cos(math.radians(min_angle_deg)), math.cos(math.radians(max_angle_deg))
    if u is None:
        if generator is None:
            raise ConfigError("sample_cameras needs a generator or outer uniforms u")
        v = torch.rand(n, generator=generator, device=generator.device)
        phi = torch.rand(n, generator=generator, device=generator.device) * (2 * math.pi)
    else:
        if u.dim() != 2 or u.shape[0] != n or u.shape[1] < 2:
            raise ConfigError(f"u must be n x 2 (n={n}) outer uniforms, got shape {tuple(u.shape)}")
        u = u.to(torch.float32)
        v, phi = u[:, 1], u[:, 0] * (2 * math.pi)
    # cos(theta) uniform on [cos_max, cos_min] is uniform in area on the zone.
    cos_t = cos_min - v * (cos_min - cos_max)
    sin_t = (1 - cos_t**2).clamp_min(0).sqrt()
    a, b = sin_t * torch.cos(phi), sin_t * torch.sin(phi)
    # "up": the local pole is +y and azimuth 0 at the horizon is the front view +z.
    local = torch.stack([a, b, cos_t], dim=1) if axis == "front" else torch.stack([b, cos_t, a], dim=1)
    origins = radius * local
    return Cameras(origins, _look_at(origins), fov_deg)


def front_cameras(n: int = 1, radius: float = 3.0, fov_deg: float = 40.0) -> Cameras:
    """``n`` copies of the front view (on ``+z``, looking at the origin), for evaluation."""
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n!r}")
    _check_pose(radius, fov_deg)
    origins = torch.tensor([[0.0, 0.0, radius]]).expand(n, 3).clone()
    return Cameras(origins, _look_at(origins), fov_deg)


def cameras_at(poses: Sequence[tuple[float, float]], radius: float = 3.0, fov_deg: float = 40.0) -> Cameras:
    """Cameras at given ``(polar_deg, azimuth_deg)`` angles, looking at the origin, for fixed evaluation views.

    ``polar_deg`` is the angle from the front view (``+z``), in ``[0, 180]`` (180: the back view);
    ``azimuth_deg`` turns about ``z`` from ``+x`` (0) towards ``+y`` (90). The parametrization is
    :func:`sample_cameras`' own: ``origin = radius (sin p cos a, sin p sin a, cos p)``.
    """
    if len(poses) < 1:
        raise ConfigError("cameras_at needs at least one (polar_deg, azimuth_deg) pose")
    _check_pose(radius, fov_deg)
    for polar, _ in poses:
        if not 0.0 <= polar <= 180.0:
            raise ConfigError(f"polar_deg must lie in [0, 180], got {polar!r}")
    ang = torch.tensor([[math.radians(p), math.radians(a)] for p, a in poses], dtype=torch.float64)
    pol, az = ang[:, 0], ang[:, 1]
    origins = radius * torch.stack([pol.sin() * az.cos(), pol.sin() * az.sin(), pol.cos()], dim=1)
    origins = origins.float()
    return Cameras(origins, _look_at(origins), fov_deg)


def camera_at(polar_deg: float, azimuth_deg: float = 0.0, radius: float = 3.0, fov_deg: float = 40.0) -> Cameras:
    """One camera at ``(polar_deg, azimuth_deg)``; see :func:`cameras_at`."""
    return cameras_at([(polar_deg, azimuth_deg)], radius, fov_deg)


@dataclass(frozen=True)
class RaySamples:
    """Where :func:`render` reads the grids.

    Attributes:
        points: ``n x P x S x 3`` world positions, ``P = resolution^2`` pixels in row-major order (row 0 at
            the top), ``S`` samples per ray ordered near to far.
        delta: ``n`` world-length of the ray segment each sample stands for.
    """

    points: Tensor
    delta: Tensor


def ray_samples(
    cameras: Cameras,
    resolution: int,
    samples_per_ray: int,
    near: float | None = None,
    far: float | None = None,
) -> RaySamples:
    """Pinhole rays through pixel centres, ``samples_per_ray`` midpoints of equal segments of ``[near, far]``.

    ``near`` / ``far`` are distances along each (unit) ray; by default each camera's depth range is the
    sphere around the cube, ``|origin| -+ sqrt(3)``, so no sample is wasted far outside the grid.
    Uniform spacing makes the cost deterministic: every ray reads exactly ``samples_per_ray`` points.
    """
    if resolution < 1:
        raise ConfigError(f"resolution must be >= 1, got {resolution!r}")
    if samples_per_ray < 1:
        raise ConfigError(f"samples_per_ray must be >= 1, got {samples_per_ray!r}")
    origins, rotations = cameras.origins, cameras.rotations
    dtype, device = origins.dtype, origins.device
    # Pixel centres on the image plane at distance `focal`, as +-1 at the image edges.
    lin = (torch.arange(resolution, dtype=dtype, device=device) + 0.5) / resolution * 2 - 1
    v, u = torch.meshgrid(-lin, lin, indexing="ij")  # image rows run downwards, so v decreases
    dirs_cam = torch.stack([u, v, torch.full_like(u, cameras.focal)], dim=-1).reshape(-1, 3)
    dirs = torch.einsum("nij,pj->npi", rotations, dirs_cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)  # n x P x 3
    dist = origins.norm(dim=1)
    lo = (dist - _HALF_DIAGONAL).clamp_min(0.0) if near is None else torch.full_like(dist, near)
    hi = dist + _HALF_DIAGONAL if far is None else torch.full_like(dist, far)
    if near is not None or far is not None:
        if bool((lo < 0).any()) or bool((hi <= lo).any()):
            raise ConfigError(f"need 0 <= near < far, got near={near!r}, far={far!r}")
    delta = (hi - lo) / samples_per_ray  # n
    mid = (torch.arange(samples_per_ray, dtype=dtype, device=device) + 0.5)[None]  # 1 x S
    depth = lo[:, None] + delta[:, None] * mid  # n x S
    points = origins[:, None, None, :] + dirs[:, :, None, :] * depth[:, None, :, None]
    return RaySamples(points, delta)


def num_sample_points(n: int, resolution: int, samples_per_ray: int) -> int:
    """Grid lookups one :func:`render` call makes: ``n * resolution^2 * samples_per_ray``."""
    return n * resolution * resolution * samples_per_ray


def render(
    scene: VoxelScene,
    cameras: Cameras,
    resolution: int = 32,
    samples_per_ray: int = 32,
    near: float | None = None,
    far: float | None = None,
    background: float = -1.0,
) -> Tensor:
    """Emission-absorption render of ``scene`` from ``cameras``, differentiable in the scene's parameters.

    Args:
        scene: the voxel grids (their device decides where the work runs).
        cameras: ``n`` cameras.
        resolution: ``H = W`` in pixels.
        samples_per_ray: ``S``, uniform samples per ray.
        near, far: depth range along each ray; see :func:`ray_samples`.
        background: value in ``[-1, 1]`` composited behind the scene.

    Returns:
        ``n x C x H x W`` images in ``[-1, 1]`` (the teacher's range).
    """
    if not -1.0 <= background <= 1.0:
        raise ConfigError(f"background must lie in [-1, 1], got {background!r}")
    fields = scene.fields()
    rays = ray_samples(cameras.to(fields.device), resolution, samples_per_ray, near, far)
    n, P, S, _ = rays.points.shape
    # grid_sample's last axis is (x, y, z) indexing (W, H, D), matching the [z, y, x] layout; outside the
    # cube it reads zeros, i.e. empty space.
    pts = rays.points.reshape(1, 1, n * P, S, 3)
    vals = F.grid_sample(fields, pts, align_corners=True, padding_mode="zeros")  # 1 x (1+C) x 1 x nP x S
    vals = vals[0, :, 0].reshape(1 + scene.channels, n, P, S)
    sigma, color = vals[0], vals[1:]
    # T[s] = exp(-optical depth up to and through sample s): the light that gets past it. Sample s absorbs
    # w[s] = T[s-1] - T[s] (T[-1] = 1). Summing optical depth is stabler than multiplying (1 - alpha), and
    # the weights telescope, so exactly T[S-1] reaches the background, with no extra sum.
    T = torch.exp(-torch.cumsum(sigma * rays.delta[:, None, None], dim=-1))  # n x P x S
    w = torch.cat([1 - T[..., :1], T[..., :-1] - T[..., 1:]], dim=-1)  # n x P x S, w >= 0, sums to 1 - T[S-1]
    img01 = (w[None] * color).sum(-1) + T[None, ..., -1] * ((background + 1) / 2)  # C x n x P
    img = (img01 * 2 - 1).clamp(-1.0, 1.0)  # only rounding can leave [-1, 1]; clamp keeps the contract exact
    return img.permute(1, 0, 2).reshape(n, scene.channels, resolution, resolution)
