"""The differentiable voxel renderer."""

import torch

from carv_adapt.workloads.render import VoxelScene, front_cameras, num_sample_points, render, sample_cameras


def test_shape_range_and_gradients():
    scene = VoxelScene(12)
    img = render(scene, sample_cameras(3, torch.Generator().manual_seed(0)), resolution=16, samples_per_ray=12)
    assert img.shape == (3, 1, 16, 16)
    assert float(img.min()) >= -1.0 and float(img.max()) <= 1.0
    img.square().mean().backward()
    for p in (scene.density_raw, scene.color_raw):
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0


def test_cameras_are_seeded_and_inside_the_cone():
    a = sample_cameras(5, torch.Generator().manual_seed(1), max_angle_deg=20.0)
    b = sample_cameras(5, torch.Generator().manual_seed(1), max_angle_deg=20.0)
    c = sample_cameras(5, torch.Generator().manual_seed(2), max_angle_deg=20.0)
    assert torch.equal(a.origins, b.origins) and not torch.equal(a.origins, c.origins)
    cos = a.origins[:, 2] / a.origins.norm(dim=1)
    assert float(cos.min()) >= torch.cos(torch.deg2rad(torch.tensor(20.0))) - 1e-6
    # Camera-to-world rotations are orthonormal and look at the origin.
    eye = a.rotations.transpose(1, 2) @ a.rotations
    assert torch.allclose(eye, torch.eye(3).expand(5, 3, 3), atol=1e-5)
    assert torch.allclose(a.rotations[:, :, 2], -a.origins / a.origins.norm(dim=1, keepdim=True), atol=1e-6)


def test_dense_region_renders_where_expected():
    scene = VoxelScene(16)
    with torch.no_grad():
        scene.density_raw.fill_(-20.0)
        scene.color_raw.fill_(10.0)  # white wherever there is density
        scene.density_raw[:, 8:, 8:] = 5.0  # z any, y > 0, x > 0: the upper-right quadrant from the front
    img = render(scene, front_cameras(), resolution=16, samples_per_ray=24)[0, 0].detach()
    assert float(img[:6, 10:].mean()) > 0.5  # upper right is bright
    assert float(img[10:, :6].mean()) < -0.9  # lower left is background


def test_deterministic_and_cost_scales_with_resolution():
    scene = VoxelScene(8)
    cams = sample_cameras(2, torch.Generator().manual_seed(3))
    assert torch.equal(render(scene, cams, 8, 8), render(scene, cams, 8, 8))
    assert num_sample_points(1, 64, 32) == 4 * num_sample_points(1, 32, 32)
    assert num_sample_points(1, 32, 64) == 2 * num_sample_points(1, 32, 32)
