"""The diffusers adapter against diffusers' own scheduler math, on tiny random models (no downloads)."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel  # noqa: E402

from carv_adapt.teachers.diffusers_teacher import DiffusersTeacher  # noqa: E402


def _unet(class_conditional=True):
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=11 if class_conditional else None,
    )


def _cond_unet():
    torch.manual_seed(1)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=4,
        cross_attention_dim=8,
        attention_head_dim=2,
    )


def _vae():
    torch.manual_seed(2)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=4,
        sample_size=32,
        norm_num_groups=4,
        block_out_channels=(4, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_noising_and_v_conversion_match_diffusers(prediction_type):
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    teacher = DiffusersTeacher(_unet(), sched)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    t = torch.tensor([0, 10, 200, 600, 999])
    x_t = teacher.add_noise(x0, eps, t)
    assert torch.allclose(x_t, sched.add_noise(x0, eps, t), atol=1e-5)
    if prediction_type == "v_prediction":
        v = sched.get_velocity(x0, eps, t)
        teacher.prediction_type = "v_prediction"
        assert torch.allclose(teacher._eps_from_output(v, x_t, t), eps, atol=1e-4)


def test_cfg_and_chunking():
    sched = DDPMScheduler(num_train_timesteps=1000)
    unet = _unet()
    g = torch.Generator().manual_seed(3)
    x, t, y = torch.randn(7, 4, 8, 8, generator=g), torch.randint(0, 1000, (7,), generator=g), torch.arange(7)
    plain = DiffusersTeacher(unet, sched, guidance_scale=1.0, null_class=10)
    cond = unet(x, t, class_labels=y).sample
    assert torch.allclose(plain.predict_eps(x, t, y), cond, atol=1e-5)
    uncond = unet(x, t, class_labels=torch.full_like(y, 10)).sample
    for max_batch in (None, 3, 1):
        cfg = DiffusersTeacher(unet, sched, guidance_scale=4.0, null_class=10, max_batch=max_batch)
        assert torch.allclose(cfg.predict_eps(x, t, y), uncond + 4.0 * (cond - uncond), atol=1e-4)


def test_eps_draws_chunked_and_without_graph():
    teacher = DiffusersTeacher(_unet(), DDPMScheduler(num_train_timesteps=1000), guidance_scale=2.0, null_class=10)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(3, 4, 8, 8, generator=g, requires_grad=True)
    t = torch.randint(0, 1000, (3, 5), generator=g)
    eps = torch.randn(3, 5, 4, 8, 8, generator=g)
    labels = torch.tensor([1, 2, 3])
    full = teacher.eps_draws(x0, t, eps, cond=labels)
    chunked = teacher.eps_draws(x0, t, eps, cond=labels, chunk_size=4)
    assert full.shape == (3, 5, 4, 8, 8) and not full.requires_grad
    assert torch.allclose(full, chunked, atol=1e-5)


def test_from_pretrained_round_trip(tmp_path):
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    unet, vae = _unet(), _vae()
    unet.save_pretrained(tmp_path / "a" / "unet")
    sched.save_pretrained(tmp_path / "a" / "scheduler")
    vae.save_pretrained(tmp_path / "a" / "vae")
    loaded = DiffusersTeacher.from_pretrained(tmp_path / "a", guidance_scale=3.0, null_class=10)
    ref = DiffusersTeacher(unet, sched, vae, guidance_scale=3.0, null_class=10)
    assert loaded.prediction_type == "v_prediction" and loaded.vae is not None
    g = torch.Generator().manual_seed(5)
    x, t, y = torch.randn(4, 4, 8, 8, generator=g), torch.randint(0, 1000, (4,), generator=g), torch.arange(4)
    assert torch.allclose(loaded.predict_eps(x, t, y), ref.predict_eps(x, t, y), atol=1e-6)

    cunet = _cond_unet()
    cunet.save_pretrained(tmp_path / "b" / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "b" / "scheduler")
    null = torch.zeros(1, 3, 8)
    cl = DiffusersTeacher.from_pretrained(tmp_path / "b", guidance_scale=2.0, null_embedding=null)
    cr = DiffusersTeacher(cunet, DDPMScheduler(num_train_timesteps=1000), guidance_scale=2.0, null_embedding=null)
    emb = torch.randn(4, 3, 8, generator=g)
    assert torch.allclose(cl.predict_eps(x, t, emb), cr.predict_eps(x, t, emb), atol=1e-5)


def test_vae_encode_is_differentiable():
    teacher = DiffusersTeacher(_unet(), DDPMScheduler(num_train_timesteps=1000), _vae())
    img = torch.randn(2, 1, 32, 32, requires_grad=True)
    z = teacher.encode(img)
    assert z.shape == (2, 4, 8, 8)
    z.sum().backward()
    assert img.grad is not None and float(img.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.vae.parameters())
