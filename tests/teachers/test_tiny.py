"""The shipped tiny latent teacher: loads offline and generates digits a real-digits classifier recognises."""

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from carv_adapt.teachers.tiny import (  # noqa: E402
    TINY_TEACHER_PATH,
    digits_dataset,
    load_tiny_teacher,
    sample_digits,
    train_digit_classifier,
)


def test_weights_are_small_safetensors():
    files = list(TINY_TEACHER_PATH.rglob("*.safetensors"))
    assert {f.parent.name for f in files} == {"vae", "unet"}
    assert sum(f.stat().st_size for f in files) < 10 * 2**20


@pytest.mark.slow
def test_loads_offline_and_samples_recognisable_digits(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bundle = load_tiny_teacher()
    assert not any(p.requires_grad for p in bundle.unet.parameters())
    clf = train_digit_classifier()
    x, y = digits_dataset()
    assert clf.score(x.reshape(len(x), -1).numpy(), y.numpy()) > 0.95
    labels = torch.arange(10).repeat_interleave(5)
    imgs = sample_digits(
        bundle, labels, guidance_scale=3.0, num_inference_steps=20, generator=torch.Generator().manual_seed(0)
    )
    assert imgs.shape == (50, 1, 32, 32)
    acc = float((torch.tensor(clf.predict(imgs.reshape(50, -1).numpy())) == labels).float().mean())
    assert acc >= 0.8, acc
    # The weights came from the shipped folder (HF_HUB_OFFLINE=1 makes any hub access an error).
    assert Path(bundle.unet.config._name_or_path) == TINY_TEACHER_PATH / "unet"
    assert Path(bundle.vae.config._name_or_path) == TINY_TEACHER_PATH / "vae"
