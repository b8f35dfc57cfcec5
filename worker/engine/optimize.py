"""Algorithm 1: transformation-invariant visualization by gradient ascent, batched.

Each image of the batch has its own target, its own early stop inside a round, its own Adam state
and its own step budget, so a batched run gives the same images as running them one by one: only
the images still being optimized are sent through the model at each step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from specs import OptimizerSettings, OptimizeSpec, StepAugment
from worker.engine import augment as A
from worker.engine import param as P
from worker.engine import transforms as T
from worker.engine.images import check_images, to_uint8
from worker.engine.models import LoadedModel

Progress = Callable[[int, int, int, float], None]
"""Called as ``progress(round, rounds, step, q_C)`` after every step; may raise to cancel."""


@dataclass(frozen=True)
class Runtime:
    """How to run, not what to compute: mixed precision (CUDA only), memory layout, micro-batches.

    ``channels_last`` (default on) runs the model in NHWC order, faster on GPUs and CPUs alike.

    ``micro_batch`` is how many images go through the model together (each with all its views).
    The default, 0, means 1 on the CPU -- where it is as fast per image as larger batches and
    makes a batched run give exactly the bytes of one-by-one runs -- and 32 on a GPU, where
    large batches are what make it fast (results then agree up to float noise).
    """

    amp: bool = False
    channels_last: bool = True
    micro_batch: int = 0

    def chunk(self, device: torch.device) -> int:
        """Images per forward pass on ``device``."""
        if self.micro_batch > 0:
            return self.micro_batch
        return 1 if device.type == "cpu" else 32


@dataclass
class RoundRecord:
    """One round of one image: steps taken, q_C before and after, the test results after."""

    round: int
    operation: str | None
    steps: int
    q_before: float
    q_after: float
    test_min: float | None = None
    test_mean: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class VisResult:
    """The outcome for one image: the 8-bit image as float (3, H, W), its trace and tests."""

    image: torch.Tensor
    target: int
    initial_gray: float
    trace: list[RoundRecord] = field(default_factory=list)
    tests: dict[str, float] = field(default_factory=dict)
    total_steps: int = 0
    stopped_by: str = "schedule"
    q_final: float = 0.0
    transparency: torch.Tensor | None = None
    """(H, W) when asked: the sum over steps of |d objective / d image| (channels summed), >= 0."""


def _forward(model: LoadedModel, x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    model.use_channels_last(runtime.channels_last)
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if runtime.amp and x.device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(x).float()
    return model(x)


@torch.no_grad()
def target_probs(
    model: LoadedModel, x: torch.Tensor, targets: torch.Tensor, runtime: Runtime | None = None
) -> torch.Tensor:
    """Softmax probability of each image's target: x (N, 3, H, W), targets (N,) -> (N,)."""
    rt = runtime or Runtime()
    n = rt.chunk(x.device)
    out = []
    for i in range(0, x.shape[0], n):
        logits = _forward(model, x[i : i + n], rt).float()
        p = logits.softmax(dim=1)
        out.append(p.gather(1, targets[i : i + n, None].to(p.device))[:, 0])
    return torch.cat(out) if out else torch.zeros(0, device=x.device)


@torch.no_grad()
def view_probs(
    model: LoadedModel,
    x: torch.Tensor,
    targets: torch.Tensor,
    angles: torch.Tensor,
    scales: torch.Tensor,
    runtime: Runtime | None = None,
) -> torch.Tensor:
    """Target probability of every image under every view: (B, 3, H, W) -> (B, V).

    Each micro-batch of images goes through the model with all its views in one pass.
    """
    rt = runtime or Runtime()
    b, v = x.shape[0], angles.shape[0]
    n = rt.chunk(x.device)
    out = []
    for i in range(0, b, n):
        views = T.expand_views(x[i : i + n], angles, scales)
        logits = _forward(model, views, rt).float()
        tg = targets[i : i + n].repeat_interleave(v)[:, None].to(logits.device)
        out.append(logits.softmax(dim=1).gather(1, tg)[:, 0].view(-1, v))
    return torch.cat(out) if out else torch.zeros(0, v, device=x.device)


@torch.no_grad()
def topk(model: LoadedModel, x: torch.Tensor, k: int = 5) -> list[list[tuple[int, str, float]]]:
    """Top-k (index, label, probability) of each image (B, 3, H, W)."""
    p = _forward(model, x, Runtime()).float().softmax(dim=1)
    vals, idx = p.topk(min(k, p.shape[1]), dim=1)
    labels = model.info.labels
    return [
        [(int(i), labels[int(i)], float(v)) for v, i in zip(vr, ir, strict=True)]
        for vr, ir in zip(vals.cpu(), idx.cpu(), strict=True)
    ]


class _Adam:
    """Adam in pixel units with per-image state, so a finished image stops changing.

    ``lr`` overrides ``cfg.lr`` (a parameterization's own step size); ``clip`` clips the updated
    tensor to 0..255 (the pixel parameterization).
    """

    def __init__(
        self, x: torch.Tensor, cfg: OptimizerSettings, *, lr: float | None = None, clip: bool = True
    ) -> None:
        self.cfg = cfg
        self.lr = cfg.lr if lr is None else lr
        self.clip = clip
        self.m = torch.zeros_like(x)
        self.v = torch.zeros_like(x)
        self.t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)

    def step(self, x: torch.Tensor, idx: torch.Tensor, grad: torch.Tensor) -> None:
        """Ascend along ``grad`` for the images ``idx`` of ``x`` (in place), then clip."""
        c = self.cfg
        self.t[idx] += 1
        t = self.t[idx].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))  # (n, 1, ...)
        full = idx.numel() == x.shape[0]  # everyone steps: update the state in place, no copies
        m = self.m if full else self.m[idx]
        v = self.v if full else self.v[idx]
        m.mul_(c.beta1).add_(grad, alpha=1 - c.beta1)
        v.mul_(c.beta2).addcmul_(grad, grad, value=1 - c.beta2)
        m_hat = m / (1 - c.beta1**t)
        v_hat = v / (1 - c.beta2**t)
        update = (x if full else x[idx]) + self.lr * m_hat / (v_hat.sqrt() + 1e-8)
        if self.clip:
            update.clamp_(0.0, 255.0)
        if full:
            x.copy_(update)
        else:
            self.m[idx], self.v[idx] = m, v
            x[idx] = update


def optimize_round(
    model: LoadedModel,
    x: torch.Tensor,
    targets: torch.Tensor,
    active: torch.Tensor,
    cfg: OptimizerSettings,
    max_steps: torch.Tensor,
    *,
    runtime: Runtime | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient ascent on the target until ``q_C > q_target`` or the image's step limit.

    Args:
        model: the classifier.
        x: images (B, 3, H, W) in pixel space, updated in place; clipped to 0..255 every step.
        targets: (B,) class indices.
        active: (B,) bool, which images take part in this round.
        cfg: optimizer settings (Adam, lr in pixel units, q_target).
        max_steps: (B,) long, the most steps each image may take in this round.
        runtime: precision and memory layout.
        on_step: called as ``on_step(step, q_C)`` with the lowest q_C still being optimized.

    Returns:
        steps (B,) long, q_before (B,), q_after (B,) -- zeros for inactive images.
    """
    param = P.PixelParam(x)
    out = param_round(
        model, param, targets, active, cfg, max_steps,
        lr=cfg.lr, augment=None, gens=[], runtime=runtime, on_step=on_step,
    )  # fmt: skip
    x.copy_(param.data)
    return out


def param_round(
    model: LoadedModel,
    param: P.ImageParam,
    targets: torch.Tensor,
    active: torch.Tensor,
    cfg: OptimizerSettings,
    max_steps: torch.Tensor,
    *,
    lr: float,
    augment: StepAugment | None,
    gens: list[torch.Generator],
    runtime: Runtime | None = None,
    on_step: Callable[[int, float], None] | None = None,
    saliency: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``optimize_round`` on any parameterization, optionally under random views at every step.

    With ``augment``, each image draws its views from its own generator ``gens[i]`` at every step
    it takes part in; the objective is the mean over its views and ``q_C`` (early stop, trace) is
    the mean target probability over them. Without, the image itself is seen, as in the paper.
    ``saliency`` (B, H, W), when given, accumulates each stepping image's |gradient| with respect
    to its rendered pixel-space image (channels summed): no extra forward or backward pass.

    Returns:
        steps (B,) long, q_before (B,), q_after (B,) -- zeros for inactive images.
    """
    rt = runtime or Runtime()
    b = param.data.shape[0]
    dev = param.data.device
    steps = torch.zeros(b, dtype=torch.long, device=dev)
    q_before = torch.zeros(b, dtype=torch.float64, device=dev)
    q_after = torch.zeros(b, dtype=torch.float64, device=dev)
    running = active.clone()
    adam = _Adam(param.data, cfg, lr=lr, clip=param.clip)
    first = active.clone()
    nv = augment.views if augment is not None else 1
    q_target = cfg.q_target
    if augment is not None and augment.q_target is not None:
        q_target = augment.q_target
    mb = rt.chunk(dev)
    step = 0
    while bool(running.any()):
        idx = running.nonzero()[:, 0]
        q_parts, go_parts, grad_parts = [], [], []
        for chunk in torch.split(
            idx, mb
        ):  # micro-batches: a finished image skips its backward pass
            sub = param.data[chunk].detach().requires_grad_(True)
            img = param.render(sub)  # (n, 3, H, W), pixel space
            rendered = img
            if augment is not None:
                img = A.apply(img, [A.draw(gens[i], augment) for i in chunk.tolist()])  # (n*V,…)
            logits = _forward(model, img, rt).float()
            logp = logits.log_softmax(dim=1)
            tg = targets[chunk].repeat_interleave(nv)[:, None]
            qc = logp.gather(1, tg)[:, 0].exp().detach().double().view(-1, nv).mean(dim=1)
            go_c = ~((qc > q_target) | (steps[chunk] >= max_steps[chunk]))
            if bool(go_c.any()):
                chosen = logits if cfg.objective == "logit" else logp
                obj = chosen.gather(1, tg)[:, 0].view(-1, nv).mean(dim=1)  # mean over views
                if saliency is None:
                    (grad,) = torch.autograd.grad(obj[go_c].sum(), sub)
                elif rendered is sub:  # the pixel parameterization: the same gradient
                    (grad,) = torch.autograd.grad(obj[go_c].sum(), sub)
                    saliency[chunk[go_c]] += grad[go_c].abs().sum(dim=1).to(saliency)
                else:
                    grad, g_img = torch.autograd.grad(obj[go_c].sum(), [sub, rendered])
                    saliency[chunk[go_c]] += g_img[go_c].abs().sum(dim=1).to(saliency)
                grad_parts.append(grad[go_c])
            q_parts.append(qc)
            go_parts.append(go_c)
        q, go = torch.cat(q_parts), torch.cat(go_parts)
        q_after[idx] = q
        is_first = first[idx]
        q_before[idx[is_first]] = q[is_first]
        first[idx] = False
        running[idx[~go]] = False
        if grad_parts:
            gidx = idx[go]
            adam.step(param.data, gidx, torch.cat(grad_parts).to(param.data.dtype))
            steps[gidx] += 1
            step += 1
            if on_step is not None:
                on_step(step, float(q[go].min()))
    return steps, q_before, q_after


def visualize(
    model: LoadedModel,
    initial: torch.Tensor,
    targets: torch.Tensor,
    spec: OptimizeSpec,
    *,
    runtime: Runtime | None = None,
    progress: Progress | None = None,
    transparency: bool = False,
) -> list[VisResult]:
    """Algorithm 1 for a batch: optimize, transform, evaluate, round after round, then a last round.

    The image lives in ``spec.param`` (the paper's pixels by default, or a Fourier spectrum);
    after each round's transformation it is encoded back into that parameterization. With
    ``spec.augment``, every step sees seeded random views of each image. An empty test set skips
    the per-round evaluation (and with it the criterion).

    Args:
        model: the classifier.
        initial: starting images (B, 3, H, W) in pixel space (flat gray for the paper's method).
        targets: (B,) class indices.
        spec: schedule, optimizer, tests, criterion (``spec.rounds()`` is empty for vanilla,
            which then runs one long round of up to ``max_total_steps`` steps).
        runtime: precision and memory layout.
        progress: called as ``progress(round, rounds, step, q_C)``; may raise to cancel.
        transparency: also return each image's transparency map (``VisResult.transparency``),
            accumulated from the gradients the optimization computes anyway; each round's
            transformation moves the map with the image.

    Returns:
        One result per image, in batch order; each image quantized to 8 bits (the saved PNG).
    """
    check_images(initial, "initial")
    rt = runtime or Runtime()
    cfg = spec.optimizer
    x0 = initial.detach().clone().float().clamp_(0.0, 255.0)
    b, dev = x0.shape[0], x0.device
    targets = targets.to(dev).long()
    grays = [float(initial[i].mean()) for i in range(b)]
    gens = [A.generator(A.image_seed(spec.seed, int(targets[i]), grays[i])) for i in range(b)]
    param = P.make_param(spec.param, x0, gens)
    lr = spec.param.lr if spec.param.kind != "pixel" else cfg.lr
    sal = torch.zeros(b, *x0.shape[-2:], device=dev) if transparency else None
    aug = spec.augment if spec.augment.enabled else None
    rounds = spec.rounds()
    n_rounds = len(rounds) + 1
    names, t_angles, t_scales = T.test_views(spec.tests)
    results = [
        VisResult(image=x0[i], target=int(targets[i]), initial_gray=grays[i]) for i in range(b)
    ]
    total = torch.zeros(b, dtype=torch.long, device=dev)
    in_loop = torch.ones(b, dtype=torch.bool, device=dev)

    def reporter(r: int) -> Callable[[int, float], None] | None:
        if progress is None:
            return None
        return lambda step, q: progress(r, n_rounds, step, q)

    for r, op in enumerate(rounds):
        budget_left = cfg.max_total_steps - total
        in_loop &= budget_left > 0
        for i in (~in_loop).nonzero()[:, 0].tolist():
            if results[i].stopped_by == "schedule":
                results[i].stopped_by = "budget"
        if not bool(in_loop.any()):
            break
        limit = torch.clamp(budget_left, max=cfg.max_steps_per_round)
        steps, qb, qa = param_round(
            model,
            param,
            targets,
            in_loop,
            cfg,
            limit,
            lr=lr,
            augment=aug,
            gens=gens,
            runtime=rt,
            on_step=reporter(r),
            saliency=sal,
        )
        total += steps
        idx = in_loop.nonzero()[:, 0]
        with torch.no_grad():
            moved = T.apply(param.render(param.data[idx]), op)
            param.data[idx] = param.encode(moved)
            if sal is not None:  # the map follows the image (T.apply: 3 channels, 0..255)
                top = sal[idx].amax(dim=(1, 2)).clamp(min=1e-30)[:, None, None]
                m = (sal[idx] / top * 255.0)[:, None].expand(-1, 3, -1, -1)
                sal[idx] = T.apply(m, op)[:, 0] * top / 255.0
        probs = None
        if len(names) > 0:
            probs = view_probs(model, param.images()[idx], targets[idx], t_angles, t_scales, rt)
        for k, i in enumerate(idx.tolist()):
            pmin = float(probs[k].min()) if probs is not None else None
            pmean = float(probs[k].mean()) if probs is not None else None
            results[i].trace.append(
                RoundRecord(
                    r, T.describe(op), int(steps[i]), float(qb[i]), float(qa[i]), pmin, pmean
                )
            )
            crit = spec.criterion
            value = pmin if crit.kind == "min" else pmean
            if crit.kind != "off" and value is not None and value >= crit.threshold:
                in_loop[i] = False
                results[i].stopped_by = "criterion"

    if spec.final_round or not rounds:
        per_round = cfg.max_total_steps if not rounds else cfg.max_steps_per_round
        limit = torch.full((b,), per_round, dtype=torch.long, device=dev)
        everyone = torch.ones(b, dtype=torch.bool, device=dev)
        final_aug = aug if (aug is not None and spec.augment.final_round) else None
        steps, qb, qa = param_round(
            model,
            param,
            targets,
            everyone,
            cfg,
            limit,
            lr=lr,
            augment=final_aug,
            gens=gens,
            runtime=rt,
            on_step=reporter(n_rounds - 1),
            saliency=sal,
        )
        total += steps
        for i in range(b):
            results[i].trace.append(
                RoundRecord(len(results[i].trace), None, int(steps[i]), float(qb[i]), float(qa[i]))
            )

    final = to_uint8(param.images()).float()
    probs = view_probs(model, final, targets, t_angles, t_scales, rt) if names else None
    q_final = target_probs(model, final, targets, rt)
    for i in range(b):
        res = results[i]
        res.image = final[i]
        if probs is not None:
            res.tests = {n: float(p) for n, p in zip(names, probs[i].tolist(), strict=True)}
        res.total_steps = int(total[i])
        res.q_final = float(q_final[i])
        res.transparency = sal[i] if sal is not None else None
    return results
