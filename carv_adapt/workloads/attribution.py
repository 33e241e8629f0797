"""Workload: diffusion data attribution (D-TRAK-style, docs/theory.md §1).

Each training example gets a feature: the expectation over ``(t, eps)`` of the gradient of the diffusion loss
``||eps_hat(x_t, t, y) - eps||^2`` with respect to a parameter subset of the frozen teacher (here its output
convolution, the usual last-layer choice), randomly projected to ``proj_dim`` dimensions with a fixed
projection seed (TRAK). Attribution scores of a query are cosine similarities of features. Outer draw = one
augmentation of the example and its VAE encode; inner draw = one teacher forward at ``(t, eps)`` and the
projection of that draw's per-sample gradient (computed in closed form from the output layer's input, so no
backward pass is needed). Quality: Spearman rank correlation of the scores with a high-compute reference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from carv_adapt.controller import AdaptiveController
from carv_adapt.crn import CRNGroup
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.plan import Plan
from carv_adapt.proposals import TargetMeasure, UniformProposal
from carv_adapt.workloads.base import ComputeRun, StepRecord, drive_to_compute

__all__ = ["AttributionConfig", "AttributionWorkload", "AttributionResult", "cosine_scores", "mean_spearman"]


class AttributionConfig(BaseModel):
    """Settings of the attribution workload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    num_train: int = Field(48, ge=2)
    num_queries: int = Field(6, ge=1)
    proj_dim: int = Field(32, ge=1)
    projection_seed: int = 0
    shift: float = Field(0.08, ge=0.0, le=0.5, description="max random translation (augmentation)")
    batch_size: int = Field(2, ge=1, description="outer draws (augmentations) N per example")
    t_min: int = Field(20, ge=0)
    t_max: int = Field(980, le=999)
    reference_outer: int = Field(16, ge=1)
    reference_inner: int = Field(32, ge=1)
    common_random_numbers: bool = Field(
        False, description="every example of a round replays the same draws (docs/theory.md §18)"
    )
    seed: int = 0


@dataclass
class AttributionResult:
    """Features of the training examples and queries, scores, per-example records and measured compute."""

    train_features: Tensor
    query_features: Tensor
    scores: Tensor
    records: list[StepRecord]
    history: list[Any]
    compute_seconds: float


def cosine_scores(queries: Tensor, train: Tensor) -> Tensor:
    """``Q x M`` cosine similarities of query and training features, both centred on the training mean
    (the gradient direction every example shares would otherwise dominate every score)."""
    mu = train.mean(dim=0, keepdim=True)
    return F.normalize(queries - mu, dim=1) @ F.normalize(train - mu, dim=1).T


def mean_spearman(scores: Tensor, reference: Tensor) -> float:
    """Mean over queries of the Spearman rank correlation of two ``Q x M`` score matrices."""
    from scipy.stats import spearmanr

    return float(sum(spearmanr(a.numpy(), b.numpy()).statistic for a, b in zip(scores, reference)) / len(scores))


class AttributionWorkload:
    """TRAK-style attribution features of the shipped tiny teacher's training digits."""

    def __init__(self, config: AttributionConfig | None = None, teacher: Any = None) -> None:
        self.config = c = config or AttributionConfig()
        if teacher is None:
            from carv_adapt.teachers.diffusers_teacher import DiffusersTeacher
            from carv_adapt.teachers.tiny import NULL_CLASS, load_tiny_teacher

            b = load_tiny_teacher()
            teacher = DiffusersTeacher(b.unet, b.scheduler, b.vae, guidance_scale=1.0, null_class=NULL_CLASS)
        self.teacher = teacher
        from carv_adapt.teachers.tiny import digits_dataset

        images, labels = digits_dataset()
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(c.seed))
        self.train_idx = perm[: c.num_train]
        self.query_idx = perm[c.num_train : c.num_train + c.num_queries]
        self.images, self.labels = images, labels
        conv = teacher.unet.conv_out
        self._conv = conv
        n_params = conv.weight.numel() + (conv.bias.numel() if conv.bias is not None else 0)
        g = torch.Generator().manual_seed(c.projection_seed)
        self.projection = torch.randn(c.proj_dim, n_params, generator=g) / math.sqrt(c.proj_dim)
        self.target = TargetMeasure(teacher.num_timesteps, c.t_min, c.t_max)

    # ------------------------------------------------------------------ the pipeline
    def upstream(self, index: int, N: int, g: torch.Generator) -> Tensor:
        """``N`` augmented (randomly shifted) encodes of example ``index``: ``N x C x h x w`` latents."""
        img = self.images[index : index + 1].expand(N, -1, -1, -1)
        theta = torch.zeros(N, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, :, 2] = (torch.rand(N, 2, generator=g) * 2 - 1) * self.config.shift * 2
        grid = F.affine_grid(theta, list(img.shape), align_corners=False)
        aug = F.grid_sample(img + 1, grid, align_corners=False, padding_mode="zeros") - 1
        with torch.no_grad():
            return self.teacher.encode(aug)

    def integrand(self, latents: Tensor, label: int, t: Tensor, eps: Tensor) -> Tensor:
        """``N x K x proj_dim`` projected per-draw gradients of the diffusion loss w.r.t. the output conv."""
        n, k = t.shape
        x_t = self.teacher.add_noise(latents.unsqueeze(1).expand_as(eps), eps, t).reshape(n * k, *latents.shape[1:])
        captured: dict[str, Tensor] = {}
        hook = self._conv.register_forward_hook(lambda m, inp, out: captured.update(h=inp[0].detach()))
        try:
            with torch.no_grad():
                y = torch.full((n * k,), label, dtype=torch.long)
                out = self.teacher.unet(x_t, t.reshape(-1), class_labels=y).sample
        finally:
            hook.remove()
        # d/dout of mean squared error, then the conv's weight/bias gradient per sample (unfold = im2col).
        dout = 2.0 * (out - eps.reshape(n * k, *latents.shape[1:])) / out[0].numel()
        conv = self._conv
        cols = F.unfold(captured["h"], conv.kernel_size, padding=conv.padding, stride=conv.stride)  # B x C*kk x L
        gw = torch.einsum("bol,bcl->boc", dout.flatten(2), cols).reshape(n * k, -1)
        grads = torch.cat([gw, dout.flatten(2).sum(-1)], dim=1) if conv.bias is not None else gw
        return (grads @ self.projection.T).reshape(n, k, -1)

    def feature(self, index: int, plan: Plan, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """One hierarchical estimate of example ``index``'s feature and the contributions it used."""
        lat = self.upstream(index, plan.N, g)
        f = self.integrand(lat, int(self.labels[index]), plan.t, plan.noise(lat.shape[1:]))
        return plan.weighted_mean(f), f

    # ------------------------------------------------------------------ runs
    def reference(self, seed: int | None = None) -> AttributionResult:
        """High-compute reference features (``reference_outer x reference_inner`` i.i.d. uniform draws each, shared
        by every example when ``common_random_numbers``), reproducible from ``seed`` (default: the config's)."""
        c = self.config
        pol = HierarchicalEstimator(
            UniformProposal(self.target),
            N=c.reference_outer,
            K=c.reference_inner,
            stratification="iid",
            seed=(c.seed if seed is None else seed) + 777,
        )
        return self.run(policy=pol, generator_seed=(c.seed if seed is None else seed) + 778)

    def run(
        self,
        controller: AdaptiveController | None = None,
        policy: HierarchicalEstimator | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
        generator_seed: int | None = None,
        passes: int = 1,
        compute_budget: float | None = None,
    ) -> AttributionResult:
        """Compute features of every training example and query (``passes`` rounds, averaging), under a
        controller or a fixed policy (default: the baseline ``K = 1``, uniform, i.i.d.). With
        ``compute_budget`` (measured seconds) rounds continue until the budget is spent; every example keeps
        the average of the estimates it got."""
        c = self.config
        policy, g, order, sums, counts, group = self._start(controller, policy, generator_seed)
        records, compute, step = [], 0.0, 0
        rounds = passes if compute_budget is None else 10**9
        for _ in range(rounds):
            if compute_budget is not None and compute >= compute_budget:
                break
            for j, index in enumerate(order):
                if compute_budget is not None and compute >= compute_budget and bool((counts > 0).all()):
                    break
                plan = controller.plan() if controller is not None else policy.plan()  # type: ignore[union-attr]
                f, sec = self._estimate(j, index, plan, g, sums, counts)
                compute += sum(sec.values())
                if controller is not None:
                    controller.observe(plan, f, costs=sec)
                    controller.step()
                rec = StepRecord(step=step, N=plan.N, K=plan.K, seconds=sec, grad_norm=float(f.norm()))
                records.append(rec)
                step += 1
                if on_step is not None:
                    on_step(rec)
        if group is not None:
            group.close(discard=True)  # a budget may end the run part-way through a round
        feats = (sums / counts.clamp_min(1)).float()
        train, queries = feats[: c.num_train], feats[c.num_train :]
        return AttributionResult(
            train,
            queries,
            cosine_scores(queries, train),
            records,
            list(controller.history) if controller else [],
            compute,
        )

    def run_to_compute(
        self,
        step_cost: Callable[[int, int, bool], float] | None,
        budget: float,
        fractions: Sequence[float],
        scores: dict[str, Callable[[Tensor], float]] | None = None,
        controller: AdaptiveController | None = None,
        policy: HierarchicalEstimator | None = None,
        max_steps: int = 1_000_000,
        on_step: Callable[[StepRecord], None] | None = None,
        generator_seed: int | None = None,
    ) -> ComputeRun:
        """Compute features as :meth:`run` does (a step is one estimate of one example's feature: the training
        examples, then the queries, round after round) until ``budget`` compute, scoring at each fraction of it
        (:func:`~carv_adapt.workloads.base.drive_to_compute`). ``step_cost(N, K, probed)`` charges each step
        (``None``: its measured stage seconds). ``scores`` are functions of the ``Q x M`` attribution scores of
        the features so far (:meth:`scores_from_state`; an example not yet estimated has a zero feature)."""
        policy, g, order, sums, counts, group = self._start(controller, policy, generator_seed)

        def one_step(plan: Plan, step: int) -> tuple[Tensor, dict[str, float], Any, float]:
            j = step % len(order)
            f, sec = self._estimate(j, order[j], plan, g, sums, counts)
            return f, sec, None, float(f.norm())

        scorers = {name: (lambda st, fn=fn: fn(self.scores_from_state(st))) for name, fn in (scores or {}).items()}
        run = drive_to_compute(
            controller,
            policy,
            one_step,
            step_cost,
            budget,
            fractions,
            state=lambda: {"features": (sums / counts.clamp_min(1)).float()},
            scores=scorers,
            max_steps=max_steps,
            on_step=on_step,
        )
        if group is not None:
            group.close(discard=True)
        return run

    def scores_from_state(self, state: dict[str, Tensor]) -> Tensor:
        """The ``Q x M`` cosine attribution scores of a :meth:`run_to_compute` state's features."""
        feats = state["features"]
        return cosine_scores(feats[self.config.num_train :], feats[: self.config.num_train])

    def _baseline(self) -> HierarchicalEstimator:
        """The baseline fixed policy: ``K = 1``, uniform, i.i.d."""
        c = self.config
        return HierarchicalEstimator(
            UniformProposal(self.target), N=c.batch_size, K=1, stratification="iid", seed=c.seed
        )

    def _start(
        self, controller: Any, policy: HierarchicalEstimator | None, generator_seed: int | None
    ) -> tuple[HierarchicalEstimator | None, torch.Generator, list[int], Tensor, Tensor, CRNGroup | None]:
        """What a pass over the examples starts from: the policy (the baseline if neither a controller nor a
        policy is given), the upstream generator, the visiting order, zeroed feature sums and counts, and with
        ``common_random_numbers`` the crn group (one per round of examples) the run closes when it ends."""
        c = self.config
        policy = self._baseline() if controller is None and policy is None else policy
        g = torch.Generator().manual_seed(c.seed + 1 if generator_seed is None else generator_seed)
        order = self._order()
        sums = torch.zeros(len(order), c.proj_dim, dtype=torch.float64)
        sampler: Any = controller if controller is not None else policy
        group = sampler.crn_group(len(order)) if c.common_random_numbers else None
        return policy, g, order, sums, torch.zeros(len(order), 1, dtype=torch.float64), group

    def _order(self) -> list[int]:
        """The examples in the order a round visits them: the training examples, then the queries."""
        return torch.cat([self.train_idx, self.query_idx]).tolist()

    def _estimate(
        self, j: int, index: int, plan: Plan, g: torch.Generator, sums: Tensor, counts: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """One estimate of example ``index``'s feature under ``plan``, added to row ``j`` of the running ``sums``
        and ``counts``; returns its per-draw contributions and stage seconds."""
        if self.config.common_random_numbers:  # the augmentations are shared too: one stream per group's draws
            g = torch.Generator().manual_seed(plan.noise_seed ^ 0x5A17)
        t0 = time.perf_counter()
        lat = self.upstream(index, plan.N, g)
        t1 = time.perf_counter()
        f = self.integrand(lat, int(self.labels[index]), plan.t, plan.noise(lat.shape[1:]))
        t2 = time.perf_counter()
        sums[j] += plan.weighted_mean(f).double()
        counts[j] += 1
        return f, {"upstream": t1 - t0, "teacher": t2 - t1}
