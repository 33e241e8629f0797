"""The differentiable voxel renderer."""

import math

import pytest
import torch

from carv_adapt.errors import ConfigError
from carv_adapt.workloads.render import (
    Cameras,
    VoxelScene,
    _look_at,
    front_cameras,
    num_sample_points,
    ray_samples,
    render,
    sample_cameras,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("channels", [1, 3])
def test_shape_and_range(channels):
    scene = VoxelScene(10, channels=channels)
    with torch.no_grad():
        scene.color_raw.normal_(0.0, 3.0, generator=_gen(0))
    with torch.no_grad():
        img = render(scene, sample_cameras(3, _gen(0)), resolution=12, samples_per_ray=10)
    assert img.shape == (3, channels, 12, 12)
    assert float(img.min()) >= -1.0 and float(img.max()) <= 1.0
    assert float(img.std()) > 0.01  # the initial blob is visible, not an empty frame


def test_gradients_reach_both_grids():
    scene = VoxelScene(12)
    img = render(scene, sample_cameras(3, _gen(0)), resolution=16, samples_per_ray=12)
    img.square().mean().backward()
    for p in (scene.density_raw, scene.color_raw):
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0


def test_cameras_are_seeded_and_inside_the_cone():
    a = sample_cameras(5, _gen(1), max_angle_deg=20.0)
    b = sample_cameras(5, _gen(1), max_angle_deg=20.0)
    c = sample_cameras(5, _gen(2), max_angle_deg=20.0)
    assert torch.equal(a.origins, b.origins) and torch.equal(a.rotations, b.rotations)
    assert not torch.equal(a.origins, c.origins)
    assert torch.allclose(a.origins.norm(dim=1), torch.full((5,), 3.0))
    cos = a.origins[:, 2] / a.origins.norm(dim=1)
    assert float(cos.min()) >= math.cos(math.radians(20.0)) - 1e-6
    # Camera-to-world rotations are orthonormal and look at the origin.
    eye = a.rotations.transpose(1, 2) @ a.rotations
    assert torch.allclose(eye, torch.eye(3).expand(5, 3, 3), atol=1e-5)
    assert torch.allclose(a.rotations[:, :, 2], -a.origins / a.origins.norm(dim=1, keepdim=True), atol=1e-6)
    # A zero-width cone is the front view.
    front = sample_cameras(2, _gen(3), max_angle_deg=0.0)
    assert torch.allclose(front.origins, front_cameras(2).origins)
    assert torch.allclose(front.rotations, front_cameras(2).rotations)


def test_look_at_is_defined_on_the_up_axis():
    rot = _look_at(torch.tensor([[0.0, 3.0, 0.0], [0.0, -2.0, 0.0]]))
    assert bool(torch.isfinite(rot).all())
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3).expand(2, 3, 3), atol=1e-6)


def test_dense_region_renders_where_expected():
    scene = VoxelScene(16)
    with torch.no_grad():
        scene.density_raw.fill_(-20.0)
        scene.color_raw.fill_(10.0)  # white wherever there is density
        scene.density_raw[:, 8:, 8:] = 5.0  # z any, y > 0, x > 0: the upper-right quadrant from the front
    img = render(scene, front_cameras(), resolution=16, samples_per_ray=24)[0, 0].detach()
    assert float(img[:6, 10:].mean()) > 0.5  # upper right is bright
    assert float(img[10:, :6].mean()) < -0.9  # lower left is background


@torch.no_grad()
def test_empty_scene_and_clipped_depth_render_the_background():
    scene = VoxelScene(8)
    cams = sample_cameras(2, _gen(4))
    # The default depth range covers the blob; one that ends before the cube sees only background.
    assert float(render(scene, cams, 8, 8, background=0.5).min()) < 0.4
    clipped = render(scene, cams, 8, 8, near=0.1, far=1.0, background=0.5)
    assert torch.allclose(clipped, torch.full_like(clipped, 0.5))
    scene.density_raw.fill_(-30.0)
    empty = render(scene, cams, 8, 8, background=-0.25)
    assert torch.allclose(empty, torch.full_like(empty, -0.25), atol=1e-5)


def test_deterministic():
    scene = VoxelScene(8)
    cams = sample_cameras(2, _gen(3))
    assert torch.equal(render(scene, cams, 8, 8), render(scene, cams, 8, 8))


@pytest.mark.parametrize(("resolution", "samples"), [(4, 3), (8, 3), (8, 6)])
def test_sample_points_grow_with_resolution_squared_times_samples(resolution, samples):
    cams = sample_cameras(2, _gen(5))
    rays = ray_samples(cams, resolution, samples)
    assert rays.points.shape == (2, resolution**2, samples, 3)
    assert rays.points[..., 0].numel() == num_sample_points(2, resolution, samples)
    assert num_sample_points(2, 2 * resolution, samples) == 4 * num_sample_points(2, resolution, samples)
    # Samples are ordered near to far and together span the default depth range around the cube.
    depth = (rays.points - cams.origins[:, None, None]).norm(dim=-1)
    assert bool((depth.diff(dim=-1) > 0).all())
    assert torch.allclose(rays.delta * samples, torch.full((2,), 2 * math.sqrt(3.0)), atol=1e-5)


def test_bad_arguments_name_the_value():
    scene = VoxelScene(4)
    with pytest.raises(ConfigError, match="resolution"):
        render(scene, front_cameras(), resolution=0)
    with pytest.raises(ConfigError, match="near"):
        render(scene, front_cameras(), 4, 4, near=2.0, far=1.0)
    with pytest.raises(ConfigError, match="background"):
        render(scene, front_cameras(), 4, 4, background=2.0)
    with pytest.raises(ConfigError, match="max_angle_deg"):
        sample_cameras(1, _gen(0), max_angle_deg=-1.0)
    with pytest.raises(ConfigError, match="grid_size"):
        VoxelScene(1)
    with pytest.raises(ConfigError, match="origins"):
        Cameras(torch.zeros(2, 3), torch.zeros(3, 3, 3))
