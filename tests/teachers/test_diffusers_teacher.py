"""The diffusers adapter against diffusers' own scheduler math, on tiny random models (no downloads)."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)

from carv_adapt.errors import ConfigError, ShapeError  # noqa: E402
from carv_adapt.teachers.diffusers_teacher import (  # noqa: E402
    DiffusersTeacher,
    diffusers_alphas_cumprod,
    eps_from_model_output,
)

NULL = 10


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
        scaling_factor=0.5,
    )


def _batch_sizes(unet):
    """Record the batch size of every UNet call."""
    sizes = []
    unet.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    return sizes


def _inputs(seed, b=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 8, 8, generator=g), torch.randint(0, 1000, (b,), generator=g), g


@pytest.mark.parametrize("sched_cls", [DDPMScheduler, DDIMScheduler])
def test_noising_matches_scheduler_add_noise(sched_cls):
    sched = sched_cls(num_train_timesteps=1000, beta_schedule="scaled_linear")
    teacher = DiffusersTeacher(_unet(), sched)
    ac = diffusers_alphas_cumprod(sched)
    assert ac.dtype == torch.float64 and torch.allclose(ac, sched.alphas_cumprod.double())
    x0, _, g = _inputs(0)
    eps, t = torch.randn(5, 4, 8, 8, generator=g), torch.tensor([0, 10, 200, 600, 999])
    assert torch.allclose(teacher.add_noise(x0, eps, t), sched.add_noise(x0, eps, t), atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_type_conversion(prediction_type):
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    unet = _unet()
    teacher = DiffusersTeacher(unet, sched)
    assert teacher.prediction_type == prediction_type
    x0, _, g = _inputs(1)
    eps, t = torch.randn(5, 4, 8, 8, generator=g), torch.tensor([1, 10, 200, 600, 999])
    x_t = sched.add_noise(x0, eps, t)
    target = {"epsilon": eps, "v_prediction": sched.get_velocity(x0, eps, t), "sample": x0}[prediction_type]
    back = eps_from_model_output(target, x_t, t, teacher.alphas_cumprod, prediction_type)
    assert torch.allclose(back, eps, atol=2e-3 if prediction_type == "sample" else 1e-4)
    # the teacher applies the same conversion to the raw UNet output
    raw = unet(x_t, t, class_labels=torch.arange(5)).sample
    want = eps_from_model_output(raw, x_t, t, teacher.alphas_cumprod, prediction_type)
    assert torch.allclose(teacher.predict_eps(x_t, t, torch.arange(5)), want, atol=1e-5)


def test_cfg_class_conditional_batched_and_capped():
    sched = DDPMScheduler(num_train_timesteps=1000)
    unet = _unet()
    x, t, _ = _inputs(3, b=7)
    y = torch.arange(7)
    cond = unet(x, t, class_labels=y).sample
    uncond = unet(x, t, class_labels=torch.full_like(y, NULL)).sample
    sizes = _batch_sizes(unet)
    plain = DiffusersTeacher(unet, sched, guidance_scale=1.0, null_class=NULL)
    assert torch.allclose(plain.predict_eps(x, t, y), cond, atol=1e-5)
    assert sizes == [7]  # scale 1: no unconditional pass
    assert torch.allclose(plain.predict_eps(x, t), uncond, atol=1e-5)  # cond=None -> null class
    for max_batch in (None, 4, 3, 1):
        sizes.clear()
        cfg = DiffusersTeacher(unet, sched, guidance_scale=4.0, null_class=NULL, max_batch=max_batch)
        assert torch.allclose(cfg.predict_eps(x, t, y), uncond + 4.0 * (cond - uncond), atol=1e-4)
        assert sum(sizes) == 14 and max(sizes) == (14 if max_batch is None else max_batch)


def test_cfg_cross_attention():
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    unet = _cond_unet()
    x, t, g = _inputs(4, b=3)
    emb, null = torch.randn(3, 5, 8, generator=g), torch.randn(5, 8, generator=g)
    teacher = DiffusersTeacher(unet, sched, guidance_scale=3.0, null_embedding=null, max_batch=4)
    ac = teacher.alphas_cumprod
    eps_c = eps_from_model_output(unet(x, t, encoder_hidden_states=emb).sample, x, t, ac, "v_prediction")
    raw_u = unet(x, t, encoder_hidden_states=null.expand(3, 5, 8)).sample
    eps_u = eps_from_model_output(raw_u, x, t, ac, "v_prediction")
    assert torch.allclose(teacher.predict_eps(x, t, emb), eps_u + 3.0 * (eps_c - eps_u), atol=1e-4)
    assert torch.allclose(teacher.predict_eps(x, t), eps_u, atol=1e-5)


def test_eps_draws_chunked_and_without_graph():
    teacher = DiffusersTeacher(_unet(), DDPMScheduler(num_train_timesteps=1000), guidance_scale=2.0, null_class=NULL)
    assert not any(p.requires_grad for p in teacher.unet.parameters()) and not teacher.unet.training
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(3, 4, 8, 8, generator=g, requires_grad=True)
    t = torch.randint(0, 1000, (3, 5), generator=g)
    eps = torch.randn(3, 5, 4, 8, 8, generator=g)
    labels = torch.tensor([1, 2, 3])
    full = teacher.eps_draws(x0, t, eps, cond=labels)
    chunked = teacher.eps_draws(x0, t, eps, cond=labels, chunk_size=4)
    teacher.max_batch = 3
    capped = teacher.eps_draws(x0, t, eps, cond=labels)
    assert full.shape == (3, 5, 4, 8, 8) and not full.requires_grad and full.grad_fn is None
    assert torch.allclose(full, chunked, atol=1e-4) and torch.allclose(full, capped, atol=1e-4)
    x_t = (x0 * 2)[:, None].expand(3, 5, 4, 8, 8).reshape(15, 4, 8, 8)
    assert x_t.requires_grad and not teacher.predict_eps(x_t, t.reshape(-1), labels.repeat(5)).requires_grad


def test_dtype_respected():
    unet = _unet().double()
    teacher = DiffusersTeacher(unet, DDPMScheduler(num_train_timesteps=1000), guidance_scale=2.0, null_class=NULL)
    x, t, _ = _inputs(6, b=2)
    out = teacher.predict_eps(x, t, torch.tensor([0, 1]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_from_pretrained_round_trip(tmp_path):
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    unet, vae = _unet(), _vae()
    unet.save_pretrained(tmp_path / "a" / "unet")
    sched.save_pretrained(tmp_path / "a" / "scheduler")
    vae.save_pretrained(tmp_path / "a" / "vae")
    loaded = DiffusersTeacher.from_pretrained(tmp_path / "a", guidance_scale=3.0, null_class=NULL)
    ref = DiffusersTeacher(unet, sched, vae, guidance_scale=3.0, null_class=NULL)
    assert loaded.prediction_type == "v_prediction" and isinstance(loaded.vae, AutoencoderKL)
    x, t, g = _inputs(5, b=4)
    y = torch.arange(4)
    assert torch.allclose(loaded.predict_eps(x, t, y), ref.predict_eps(x, t, y), atol=1e-6)
    img = torch.randn(2, 1, 32, 32, generator=g)
    assert torch.allclose(loaded.encode(img), ref.encode(img), atol=1e-6)
    no_vae = DiffusersTeacher.from_pretrained(tmp_path / "a", subfolders=("unet", "scheduler"), null_class=NULL)
    assert no_vae.vae is None

    cunet, csched = _cond_unet(), DDIMScheduler(num_train_timesteps=1000)
    cunet.save_pretrained(tmp_path / "b" / "denoiser")
    csched.save_pretrained(tmp_path / "b" / "scheduler")
    null = torch.zeros(1, 3, 8)
    cl = DiffusersTeacher.from_pretrained(
        tmp_path / "b", subfolders=("denoiser", "scheduler", "vae"), guidance_scale=2.0, null_embedding=null
    )
    cr = DiffusersTeacher(cunet, csched, guidance_scale=2.0, null_embedding=null)
    assert isinstance(cl.scheduler, DDIMScheduler) and isinstance(cl.unet, UNet2DConditionModel) and cl.vae is None
    emb = torch.randn(4, 3, 8, generator=g)
    assert torch.allclose(cl.predict_eps(x, t, emb), cr.predict_eps(x, t, emb), atol=1e-5)
    with pytest.raises(FileNotFoundError):
        DiffusersTeacher.from_pretrained(tmp_path / "missing")


def test_vae_encode_is_differentiable_and_decode_inverts_scaling():
    vae = _vae()
    teacher = DiffusersTeacher(_unet(), DDPMScheduler(num_train_timesteps=1000), vae)
    img = torch.randn(2, 1, 32, 32, requires_grad=True)
    z = teacher.encode(img)
    assert z.shape == (2, 4, 8, 8) and z.requires_grad
    assert torch.allclose(z, 0.5 * vae.encode(img).latent_dist.mean, atol=1e-6)
    z.square().sum().backward()
    assert img.grad is not None and float(img.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.vae.parameters())
    draw = lambda s: teacher.encode(img, mode="sample", generator=torch.Generator().manual_seed(s))  # noqa: E731
    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))
    with pytest.raises(ConfigError):
        teacher.encode(img, mode="sample")
    with torch.no_grad():
        assert torch.allclose(teacher.decode(z), vae.decode(z / 0.5).sample, atol=1e-6)


def test_config_errors():
    sched = DDPMScheduler(num_train_timesteps=1000)
    with pytest.raises(ConfigError, match="null_class"):
        DiffusersTeacher(_unet(), sched, guidance_scale=2.0)
    with pytest.raises(ConfigError, match="conditional"):
        DiffusersTeacher(_unet(class_conditional=False), sched, guidance_scale=2.0)
    with pytest.raises(ConfigError, match="max_batch"):
        DiffusersTeacher(_unet(), sched, max_batch=0)
    with pytest.raises(ConfigError, match="null_class=11"):
        DiffusersTeacher(_unet(), sched, null_class=11)
    with pytest.raises(ConfigError, match="no VAE"):
        DiffusersTeacher(_unet(), sched).encode(torch.zeros(1, 1, 32, 32))
    x, t, _ = _inputs(7, b=2)
    with pytest.raises(ConfigError, match="unconditional"):
        DiffusersTeacher(_unet(class_conditional=False), sched).predict_eps(x, t, torch.tensor([0, 1]))
    with pytest.raises(ShapeError):
        DiffusersTeacher(_unet(), sched, null_class=NULL).predict_eps(x, t, torch.tensor([0, 1, 2]))
