"""A text-conditioned diffusers teacher whose condition is a prompt (or a class label turned into one).

The workloads condition on class labels (``B``-dim long); a Stable-Diffusion-shaped teacher conditions on
``encoder_hidden_states``. :class:`TextConditionedTeacher` closes the gap: labels go through ``label_prompt``
(e.g. ``3 -> "a photo of the digit three"``), prompts through the tokenizer and text encoder (each distinct prompt
encoded once), and the embeddings to a :class:`~carv_adapt.teachers.diffusers_teacher.DiffusersTeacher`, whose
null embedding is the negative prompt's (docs/theory.md §17).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError
from carv_adapt.teachers.base import Teacher

__all__ = ["TextConditionedTeacher", "encode_text"]


@torch.no_grad()
def encode_text(tokenizer: Any, text_encoder: Any, prompts: Sequence[str]) -> Tensor:
    """``B x L x C`` ``encoder_hidden_states`` of ``prompts``, padded to the tokenizer's ``model_max_length``."""
    ids = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


class TextConditionedTeacher(Teacher):
    """A ``UNet2DConditionModel`` teacher conditioned on text.

    Args:
        unet, scheduler, vae: the pipeline's parts (see :class:`DiffusersTeacher`).
        text_encoder, tokenizer: encode the prompts.
        label_prompt: maps an integer class label to its prompt (``cond`` given as labels).
        negative_prompt: the unconditional prompt of classifier-free guidance.
        guidance_scale, max_batch: as in :class:`DiffusersTeacher`.
    """

    def __init__(
        self,
        unet: Any,
        scheduler: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        *,
        label_prompt: Callable[[int], str] | None = None,
        negative_prompt: str = "",
        guidance_scale: float = 1.0,
        max_batch: int | None = None,
    ) -> None:
        from carv_adapt.teachers.diffusers_teacher import DiffusersTeacher

        if text_encoder is None or tokenizer is None:
            raise ConfigError("a text-conditioned teacher needs text_encoder and tokenizer (got None)")
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.label_prompt = label_prompt
        null = encode_text(tokenizer, self.text_encoder, [negative_prompt])
        self.inner = DiffusersTeacher(
            unet, scheduler, vae, guidance_scale=guidance_scale, null_embedding=null, max_batch=max_batch
        )
        self.alphas_cumprod = self.inner.alphas_cumprod
        self._cache: dict[str, Tensor] = {}

    @property
    def vae(self) -> Any:
        return self.inner.vae

    @property
    def unet(self) -> Any:
        return self.inner.unet

    @property
    def guidance_scale(self) -> float:
        return self.inner.guidance_scale

    def encode(self, images: Tensor, **kwargs: Any) -> Tensor:
        """VAE latents (differentiable), as :meth:`DiffusersTeacher.encode`."""
        return self.inner.encode(images, **kwargs)

    def decode(self, latents: Tensor) -> Tensor:
        return self.inner.decode(latents)

    def embeddings(self, cond: Any) -> Tensor:
        """``B x L x C`` embeddings of ``cond``: ``B`` class labels, ``B`` prompts, or embeddings (passed through)."""
        if isinstance(cond, Tensor) and cond.is_floating_point():
            return cond
        if isinstance(cond, Tensor) or (isinstance(cond, Sequence) and cond and not isinstance(cond[0], str)):
            if self.label_prompt is None:
                raise ConfigError("class labels as cond need label_prompt= (a function from label to prompt)")
            prompts = [self.label_prompt(int(y)) for y in torch.as_tensor(cond).reshape(-1)]
        else:
            prompts = list(cond)
        for p in set(prompts) - self._cache.keys():
            self._cache[p] = encode_text(self.tokenizer, self.text_encoder, [p])[0]
        return torch.stack([self._cache[p] for p in prompts])

    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """Guided epsilon for prompts / labels ``cond`` (``None``: the negative prompt's prediction)."""
        return self.inner.predict_eps(x_t, t, None if cond is None else self.embeddings(cond))
