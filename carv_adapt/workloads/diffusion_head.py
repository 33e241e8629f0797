"""Workload: a condition network with a diffusion-loss head (MAR-style), both trained (docs/theory.md §16).

A small transformer reads a digit (8 x 8, as sixteen 2 x 2 patches) with a random fraction of its patches masked,
plus its class, and emits a condition ``z``; a small MLP head learns ``eps_hat(x_t, t, z)`` for the whole image
``x_0`` with the DDPM loss ``||eps_hat - eps||^2``. Outer draw ``xi`` = one example, its mask and the condition
network's forward/backward; inner draw = one ``(t, eps)`` evaluation of the head, whose parameters are trained too.
MAR reuses each ``z`` for a fixed number of inner draws (``diffusion_batch_mul = 4``); here ``K`` and the
timestep proposal come from a plan, with the training's timestep distribution (uniform) as the target ``pi`` and
the loss weighted by ``rho = pi / p``, so the objective is the same under every policy. Samples: ``z`` from a fully
masked input and the class, then a few-step DDIM sampler through the head.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from carv_adapt.errors import ConfigError
from carv_adapt.plan import Plan
from carv_adapt.probe import flat_gradient
from carv_adapt.teachers.schedules import ddpm_alphas_cumprod
from carv_adapt.workloads.base import ComputeRun, RunResult, StepRecord, drive, drive_to_compute
from carv_adapt.workloads.head_nets import PATCH_DIM, PATCHES, X_DIM, ConditionNet, DenoisingHead, Models, to_patches

__all__ = ["DiffusionHeadConfig", "DiffusionHeadWorkload", "Models", "NoiseSchedule", "X_DIM", "to_patches"]


class DiffusionHeadConfig(BaseModel):
    """Settings of the diffusion-head workload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    batch_size: int = Field(16, ge=1, description="examples (outer draws) N per step")
    dim: int = Field(64, ge=8, description="width of the condition transformer and of z")
    depth: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)
    head_width: int = Field(256, ge=8)
    head_depth: int = Field(3, ge=2, description="linear layers of the denoising head")
    mask_min: float = Field(0.5, ge=0.0, le=1.0, description="smallest fraction of patches masked")
    lr: float = Field(1e-3, gt=0.0)
    num_timesteps: int = Field(1000, ge=2)
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    t_min: int = Field(0, ge=0)
    t_max: int = Field(999, ge=0)
    num_val: int = Field(297, ge=1, description="held-out digits for the validation loss")
    val_draws: int = Field(4, ge=1, description="fixed (t, eps) draws per held-out digit")
    sample_steps: int = Field(10, ge=1, description="DDIM steps of the sampler")
    seed: int = 0


@dataclass(frozen=True)
class NoiseSchedule:
    """The training's DDPM table; the workload adapters read ``num_timesteps`` and ``alphas_cumprod`` from it."""

    alphas_cumprod: Tensor

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``; ``t`` broadcasts over ``x0``'s leading dims."""
        a = self.alphas_cumprod.to(x0.dtype)[t].unsqueeze(-1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def _digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 digits at their native 8 x 8: ``(n x 64 in [-1, 1], n labels)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32).reshape(-1, X_DIM) / 8.0 - 1.0, torch.tensor(d.target)


@dataclass(frozen=True)
class Draws:
    """One step's forward: the per-draw losses and the tensors their gradients pass through.

    ``z``: ``N x dim`` conditions (on the condition network's graph); ``z_rep``: ``N x K x dim``, the view of ``z``
    the head read; ``pred``: ``N x K x 64`` head outputs; ``loss``: ``N x K`` per-draw losses ``l_nk`` (rho-free)."""

    z: Tensor
    z_rep: Tensor
    pred: Tensor
    loss: Tensor


class DiffusionHeadWorkload:
    """Condition network + diffusion-loss head on the digits, trained jointly under a plan's ``N x K`` draws."""

    def __init__(self, config: DiffusionHeadConfig | None = None) -> None:
        self.config = c = config or DiffusionHeadConfig()
        if not c.t_min <= c.t_max < c.num_timesteps:
            raise ConfigError(f"need t_min <= t_max < num_timesteps, got {c.t_min}, {c.t_max}, {c.num_timesteps}")
        # Named ``teacher`` for the adapter protocol (num_timesteps, alphas_cumprod); nothing here is frozen.
        self.teacher = NoiseSchedule(ddpm_alphas_cumprod(c.num_timesteps, beta_schedule=c.beta_schedule))
        x, y = _digits()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(12345))
        if c.num_val >= len(x):
            raise ConfigError(f"num_val must be < {len(x)}, got {c.num_val}")
        val, train = perm[: c.num_val], perm[c.num_val :]
        self.x, self.y = x[train], y[train]
        self.x_val, self.y_val = x[val], y[val]
        self._metric: Any = None

    # ------------------------------------------------------------------ the pipeline
    def new_models(self) -> Models:
        """Both networks, initialised from the config's seed (torch's global random state is left as it was)."""
        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            return Models(ConditionNet(c.dim, c.depth, c.heads), DenoisingHead(c.dim, c.head_width, c.head_depth))

    def outer_batch(self, N: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``N`` training examples and masks: ``(x0 N x 64, mask N x 16, labels N)``."""
        idx = torch.randint(0, len(self.x), (N,), generator=g)
        frac = self.config.mask_min + (1 - self.config.mask_min) * torch.rand(N, 1, generator=g)
        hidden = torch.ceil(frac * PATCHES)
        mask = torch.rand(N, PATCHES, generator=g).argsort(dim=1) < hidden
        return self.x[idx], mask, self.y[idx]

    def forward(self, m: Models, x0: Tensor, mask: Tensor, y: Tensor, t: Tensor, eps: Tensor) -> Draws:
        """The per-draw losses ``l_nk = mean (eps_hat(x_t, t_nk, z_n) - eps_nk)^2`` of ``N`` examples for ``N x K``
        timesteps ``t`` and ``N x K x 64`` noises ``eps``."""
        return self.head_losses(m, x0, m.cond(to_patches(x0), mask, y), t, eps)

    def head_losses(self, m: Models, x0: Tensor, z: Tensor, t: Tensor, eps: Tensor) -> Draws:
        """The head's per-draw losses for conditions ``z`` already computed (the inner stage of a step)."""
        N, K = t.shape
        z_rep = z.unsqueeze(1).expand(N, K, z.shape[-1])
        x_t = self.teacher.add_noise(x0.unsqueeze(1).expand_as(eps), eps, t)
        pred = m.head(x_t.reshape(N * K, X_DIM), t.reshape(-1), z_rep.reshape(N * K, -1)).reshape(N, K, X_DIM)
        return Draws(z, z_rep, pred, ((pred - eps) ** 2).mean(dim=-1))

    def gradient(self, m: Models, plan: Plan, g: torch.Generator) -> Tensor:
        """One hierarchical estimate ``grad (1/(N K)) sum_nk rho_nk l_nk`` over both networks, flattened."""
        x0, mask, y = self.outer_batch(plan.N, g)
        d = self.forward(m, x0, mask, y, plan.t, plan.noise((X_DIM,)))
        params = m.params()
        grads = torch.autograd.grad((plan.weights_like(d.loss) * d.loss).mean(), params, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if q is None else q).reshape(-1) for p, q in zip(params, grads)])

    def per_draw_gradients(self, m: Models, plan: Plan, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """``N x K x P`` rho-free per-draw gradients ``grad l_nk`` (both networks, one batched backward) and the
        ``N x K`` losses: the final-space draws of a pilot (docs/theory.md §16)."""
        x0, mask, y = self.outer_batch(plan.N, g)
        d = self.forward(m, x0, mask, y, plan.t, plan.noise((X_DIM,)))
        N, K = plan.N, plan.K
        params = m.params()
        eye = torch.eye(N * K, dtype=d.loss.dtype).reshape(N * K, N, K)
        grads = torch.autograd.grad(d.loss, params, grad_outputs=eye, is_grads_batched=True, allow_unused=True)
        flat = torch.cat(
            [(torch.zeros(N * K, p.numel()) if q is None else q.reshape(N * K, -1)) for p, q in zip(params, grads)], 1
        )
        return flat.reshape(N, K, -1), d.loss.detach()

    def probe(self, m: Models, x0: Tensor, mask: Tensor, y: Tensor, plan: Plan, eps: Tensor,
              generator: torch.Generator) -> tuple[Tensor, Tensor]:  # fmt: skip
        """The split-half probe over both networks (docs/theory.md §7.5, §16): ``(g_A, g_B)``, each ``N x P``,
        ``g_h[n] = grad sum_k c^h_nk rho_nk l_nk`` with ``c^h`` the half-mean coefficients of
        :func:`~carv_adapt.probe.split_half_halves`. Per-example gradients (``torch.func``: ``vmap`` over examples
        of a two-row Jacobian) cost about two batched backwards, where ``2 N`` full-batch VJPs cost ``O(N^2)``."""
        from torch.func import functional_call, jacrev, vmap

        from carv_adapt.probe import split_half_halves

        c_a, c_b = split_half_halves(torch.diag_embed(plan.rho.float()), generator)
        coef = torch.stack([c_a, c_b], dim=1)  # N x 2 x K
        pc = {k: v.detach() for k, v in m.cond.named_parameters()}
        ph = {k: v.detach() for k, v in m.head.named_parameters()}
        abar = self.teacher.alphas_cumprod.float()

        def halves(pc: dict, ph: dict, x: Tensor, mk: Tensor, yy: Tensor, t: Tensor, e: Tensor, cf: Tensor) -> Tensor:
            z = functional_call(m.cond, pc, (to_patches(x[None]), mk[None], yy[None]))
            a = abar[t].unsqueeze(-1)
            x_t = a.sqrt() * x + (1 - a).sqrt() * e
            pred = functional_call(m.head, ph, (x_t, t, z.expand(t.shape[0], -1)))
            return cf @ ((pred - e) ** 2).mean(dim=-1)

        jac = vmap(jacrev(halves, argnums=(0, 1)), in_dims=(None, None, 0, 0, 0, 0, 0, 0))(
            pc, ph, x0, mask, y, plan.t, eps, coef
        )
        flat = torch.cat([g.reshape(plan.N, 2, -1) for part in jac for g in part.values()], dim=-1)
        return flat[:, 0], flat[:, 1]

    # ------------------------------------------------------------------ quality
    @torch.no_grad()
    def val_loss(self, m: Models) -> float:
        """The diffusion loss on the held-out digits (fully masked condition input, uniform ``t``, fixed draws):
        the training objective on data the run never saw, with the same draws for every run and checkpoint."""
        c = self.config
        g = torch.Generator().manual_seed(999)
        n, K = len(self.x_val), c.val_draws
        t = torch.randint(c.t_min, c.t_max + 1, (n, K), generator=g)
        eps = torch.randn((n, K, X_DIM), generator=g)
        mask = torch.ones(n, PATCHES, dtype=torch.bool)
        return float(self.forward(m, self.x_val, mask, self.y_val, t, eps).loss.mean())

    @torch.no_grad()
    def sample(self, m: Models, y: Tensor, g: torch.Generator) -> Tensor:
        """Class-conditional ``len(y) x 64`` samples: ``z`` from a fully masked input, then ``sample_steps`` DDIM
        (eta = 0) steps of the head from pure noise."""
        c = self.config
        n = len(y)
        z = m.cond(torch.zeros(n, PATCHES, PATCH_DIM), torch.ones(n, PATCHES, dtype=torch.bool), y)
        abar = self.teacher.alphas_cumprod.float()
        ts = torch.linspace(c.num_timesteps - 1, 0, c.sample_steps).round().long().tolist()
        x = torch.randn((n, X_DIM), generator=g)
        for i, t in enumerate(ts):
            a = abar[t]
            eps = m.head(x, torch.full((n,), t), z)
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            a_next = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        return x.clamp(-1, 1)

    def quality(self, m: Models, n_per_class: int = 20, seed: int = 1234) -> dict[str, float]:
        """Frechet distance to the real digits in the digits classifier's logit space and its accuracy on
        class-conditional samples (upsampled to the classifier's 32 x 32 as the real digits are), and the
        validation loss."""
        from carv_adapt.teachers.tiny import IMAGE_SIZE
        from carv_adapt.workloads.digits_metrics import DigitsFeatureNet

        if self._metric is None:
            self._metric = DigitsFeatureNet.train()
        y = torch.arange(10).repeat_interleave(n_per_class)
        x = self.sample(m, y, torch.Generator().manual_seed(seed))
        img = F.interpolate((x.reshape(-1, 1, 8, 8) + 1) / 2, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
        img = img.clamp(0, 1) * 2 - 1
        return {
            "fd": self._metric.fd_to_real(img),
            "accuracy": self._metric.accuracy(img, y),
            "val_loss": self.val_loss(m),
        }

    # ------------------------------------------------------------------ training
    def run(
        self,
        steps: int,
        controller: Any = None,
        policy: Any = None,
        compute_budget: float | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
        snapshot_steps: Sequence[int] = (),
        loss_hook: Callable[[Plan, Tensor], None] | None = None,
    ) -> RunResult:
        """Train both networks for ``steps`` steps under a controller or a fixed policy (default: ``K = 1``,
        uniform, i.i.d.); ``loss_hook(plan, N x K losses)`` sees every step's per-draw losses."""
        m = self.new_models()
        policy = self._baseline() if controller is None and policy is None else policy
        one_step, state = self._stepper(m, controller, loss_hook)
        return drive(
            steps, controller, policy, one_step, compute_budget, on_step, state=state, snapshot_steps=snapshot_steps
        )

    def run_to_compute(
        self,
        step_cost: Callable[[int, int, bool], float] | None,
        budget: float,
        fractions: Sequence[float],
        scores: dict[str, Callable[[Models], float]] | None = None,
        controller: Any = None,
        policy: Any = None,
        max_steps: int = 1_000_000,
        on_step: Callable[[StepRecord], None] | None = None,
        loss_hook: Callable[[Plan, Tensor], None] | None = None,
    ) -> ComputeRun:
        """Train (as :meth:`run`) until ``budget`` compute, scoring the models at each fraction of it
        (:func:`~carv_adapt.workloads.base.drive_to_compute`); ``scores`` are functions of :class:`Models`."""
        m = self.new_models()
        policy = self._baseline() if controller is None and policy is None else policy
        one_step, state = self._stepper(m, controller, loss_hook)
        held: dict[str, Any] = {"state": None, "models": None}

        def models_of(st: dict[str, Tensor]) -> Models:  # every score of one checkpoint sees the same Models
            if held["state"] is not st:
                held.update(state=st, models=self.models_from_state(st))
            return held["models"]

        scorers = {k: (lambda st, fn=fn: fn(models_of(st))) for k, fn in (scores or {}).items()}
        return drive_to_compute(
            controller, policy, one_step, step_cost, budget, fractions, state=state, scores=scorers,
            max_steps=max_steps, on_step=on_step,
        )  # fmt: skip

    def _baseline(self) -> Any:
        from carv_adapt.workloads.base import default_policy

        return default_policy(self.teacher, self.config)

    def _stepper(self, m: Models, controller: Any, loss_hook: Any) -> tuple[Any, Callable[[], dict[str, Tensor]]]:
        """The training step on ``m`` (one Adam over both networks) and the state snapshot function."""
        c = self.config
        params = m.params()
        head_params = list(m.head.parameters())
        nh = len(head_params)
        opt = torch.optim.Adam(params, lr=c.lr)
        g = torch.Generator().manual_seed(c.seed + 1)
        probing = controller is not None and controller.config.space == "parameter"

        def one_step(plan: Plan, step: int) -> tuple[Tensor, dict[str, float], Any, float]:
            N, K = plan.N, plan.K
            t0 = time.perf_counter()
            x0, mask, y = self.outer_batch(N, g)
            z = m.cond(to_patches(x0), mask, y)
            t1 = time.perf_counter()
            eps = plan.noise((X_DIM,))
            d = self.head_losses(m, x0, z, plan.t, eps)
            w = plan.weights_like(d.loss) / (N * K)
            t2 = time.perf_counter()
            probe = None
            if probing and K >= 2 and controller.probe_due():
                # Half means of the per-draw gradients over BOTH networks, one example at a time (docs/theory.md §16).
                pg = torch.Generator().manual_seed(plan.noise_seed ^ 0x5EED)
                probe = self.probe(m, x0, mask, y, plan, eps, pg)
            t3 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            # The head's backward (inner: it scales with N K) stops at z_rep; the condition network's (outer) follows.
            grads = torch.autograd.grad((w * d.loss).sum(), head_params + [d.z_rep, d.pred])
            for p, q in zip(head_params, grads[:nh]):
                p.grad = q
            gz, gpred = grads[nh], grads[nh + 1]
            t4 = time.perf_counter()
            z.backward(gz.sum(dim=1))
            flat = flat_gradient(params)  # in the probe's parameter order (docs/theory.md §7.8)
            opt.step()
            t5 = time.perf_counter()
            if loss_hook is not None:
                loss_hook(plan, d.loss.detach())
            # Rho-free output-space contributions (dl/dz_n, dl/deps_hat_nk): the proxy of docs/theory.md §16.
            f = (torch.cat([gz, gpred], dim=-1) / w.unsqueeze(-1)).detach()
            sec = {"upstream": t1 - t0, "inner": t2 - t1 + t4 - t3, "backward": t5 - t4}
            if probe is not None:
                sec["probe"] = t3 - t2
            return f, sec, probe, flat

        def state() -> dict[str, Tensor]:
            s = {f"cond.{k}": v.detach().clone() for k, v in m.cond.state_dict().items()}
            s.update({f"head.{k}": v.detach().clone() for k, v in m.head.state_dict().items()})
            return s

        return one_step, state

    def models_from_state(self, state: dict[str, Tensor]) -> Models:
        m = self.new_models()
        m.cond.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("cond.")})
        m.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        return m
