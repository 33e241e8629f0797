"""Cameras at given angles, the whole sphere of training cameras, and the SDS-3D fixed-view quality metrics."""

import math

import pytest
import torch

from carv_adapt.errors import ConfigError
from carv_adapt.workloads.render import VoxelScene, camera_at, cameras_at, front_cameras, render, sample_cameras


def test_camera_at_uses_the_sampler_parametrization():
    front = camera_at(0.0, 0.0)
    ref = front_cameras()
    assert torch.allclose(front.origins, ref.origins) and torch.allclose(front.rotations, ref.rotations)
    side = camera_at(90.0, 0.0, radius=2.0)
    assert torch.allclose(side.origins, torch.tensor([[2.0, 0.0, 0.0]]), atol=1e-6)
    up = camera_at(90.0, 90.0)
    assert torch.allclose(up.origins, torch.tensor([[0.0, 3.0, 0.0]]), atol=1e-6)
    back = camera_at(180.0, 0.0)
    assert torch.allclose(back.origins, torch.tensor([[0.0, 0.0, -3.0]]), atol=1e-6)
    # Every camera looks at the origin with an orthonormal frame.
    cams = cameras_at([(0, 0), (30, 72), (85, 288), (180, 10)])
    fwd = cams.rotations[:, :, 2]
    assert torch.allclose(fwd, -cams.origins / cams.origins.norm(dim=1, keepdim=True), atol=1e-6)
    eye = cams.rotations.transpose(1, 2) @ cams.rotations
    assert torch.allclose(eye, torch.eye(3).expand(4, 3, 3), atol=1e-5)


def test_cameras_at_rejects_bad_poses():
    with pytest.raises(ConfigError, match="polar_deg"):
        camera_at(181.0)
    with pytest.raises(ConfigError, match="at least one"):
        cameras_at([])


def test_whole_sphere_sampling_covers_both_hemispheres_uniformly():
    cams = sample_cameras(4000, torch.Generator().manual_seed(0), max_angle_deg=180.0)
    z = cams.origins[:, 2] / 3.0
    assert z.min() < -0.99 and z.max() > 0.99
    # Uniform on the sphere: z is uniform on [-1, 1] (mean 0, variance 1/3).
    assert abs(float(z.mean())) < 4 * math.sqrt(1 / 3 / 4000)
    assert abs(float(z.var()) - 1 / 3) < 0.03
    img = render(VoxelScene(6), cameras_at([(120.0, 0.0), (150.0, 200.0), (180.0, 0.0)]), 8, 4)
    assert torch.isfinite(img).all()


def test_back_view_renders_the_mirror_of_the_front_view():
    scene = VoxelScene(8)
    with torch.no_grad():
        scene.color_raw[0, :, :, :4] = 3.0  # bright on the -x half
    front = render(scene, camera_at(0.0), 16, 16)
    back = render(scene, camera_at(180.0), 16, 16)
    assert torch.allclose(front, back.flip(-1), atol=1e-4)


@pytest.mark.slow
def test_sds3d_fixed_view_quality_metrics():
    pytest.importorskip("diffusers")
    from carv_adapt.workloads.sds3d import EVAL_POSES, SDS3DConfig, SDS3DWorkload, eval_cameras

    assert len(EVAL_POSES) == 16 and EVAL_POSES[0] == (0.0, 0.0)
    assert sorted({p for p, _ in EVAL_POSES}) == [0.0, 30.0, 60.0, 85.0]
    assert len(eval_cameras()) == 16
    assert SDS3DConfig(max_angle_deg=180.0).max_angle_deg == 180.0
    wl = SDS3DWorkload(SDS3DConfig(grid_size=8, samples_per_ray=8, seed=0))
    scene = wl.new_scene()
    imgs = wl.view_images(scene)
    assert imgs.shape == (16, 1, 32, 32)
    lp = wl.log_prob(scene)
    assert math.isfinite(lp) and lp <= 0
    assert wl.pixel_distance(scene, imgs) == 0.0
    assert wl.pixel_distance(scene, imgs + 0.5) == pytest.approx(0.25)
    # init_noise makes the seed change the initial scene; 0 keeps the deterministic blob.
    a = SDS3DWorkload(SDS3DConfig(grid_size=8, init_noise=0.1, seed=1), teacher=wl.teacher).new_scene()
    b = SDS3DWorkload(SDS3DConfig(grid_size=8, init_noise=0.1, seed=2), teacher=wl.teacher).new_scene()
    c = SDS3DWorkload(SDS3DConfig(grid_size=8, seed=2), teacher=wl.teacher).new_scene()
    assert not torch.equal(a.color_raw, b.color_raw)
    assert torch.equal(c.color_raw, torch.zeros_like(c.color_raw))
