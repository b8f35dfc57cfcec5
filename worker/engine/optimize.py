"""Algorithm 1: transformation-invariant visualization by gradient ascent, batched.

Each image of the batch has its own target, its own early stop inside a round, its own Adam state
and its own step budget, so a batched run gives the same images as running them one by one: only
the images still being optimized are sent through the model at each step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from specs import OptimizerSettings, OptimizeSpec, StepAugment
from worker.engine import augment as A
from worker.engine import bnprior as BP
from worker.engine import cossim as CS
from worker.engine import param as P
from worker.engine import skipgrad as SG
from worker.engine import transforms as T
from worker.engine.images import check_images, to_device, to_uint8
from worker.engine.models import LoadedModel, bucket, pad_to_bucket

Progress = Callable[[int, int, int, float], None]
"""Called as ``progress(round, rounds, step, q_C)`` after every step; may raise to cancel."""


DEFAULT_CPU_PASS_MB = 2048
"""Memory one pass through the model may take on the CPU when ``Runtime.pass_memory_mb`` is 0."""

SHRINK = 4
"""Padded passes (``Runtime.pads``) keep the size they had at a round's first step while the
images still in them fill more than a ``SHRINK``-th of it: images that stop then leave padding
behind instead of a new shape (on an H100 each new pass shape cost about 4 s, the same shape
again 10 ms; a row of padding about 0.2-0.5 ms). Below that the pass shrinks to its own bucket,
so padding never costs more than ``SHRINK`` times the work and a round meets few shapes."""

TEST_EVERY = 9
"""Rounds between the per-round transformation tests kept in the trace when no criterion reads
them (every 9th round: every 90° of the default schedule, and the last round of the loop)."""


class TimeLimitExceeded(TimeoutError):
    """Raised between passes through the model once ``Runtime.deadline`` has passed."""


@dataclass(frozen=True)
class Runtime:
    """How to run, not what to compute: precision, memory layout, compilation, pass sizes.

    ``amp``: bfloat16 autocast (CUDA only). ``channels_last`` (default on): the model runs in NHWC
    order, faster on GPUs and CPUs alike. ``compile``: ``torch.compile`` the model (CUDA only).

    Pass sizes come from a memory budget: ``pass_memory_mb`` if set, else on CUDA the free device
    memory (plus what PyTorch holds cached) times ``memory_fraction``, on the CPU
    ``DEFAULT_CPU_PASS_MB``. What one image view costs in a pass is measured once per model,
    size and precision (``sample_bytes``). On a GPU the images of a job and their views go
    through the model in as few passes as the budget allows; on the CPU one image goes at a time
    (as fast per image as larger batches, and a batched run then gives exactly the bytes of
    one-by-one runs), its views in as few passes as the budget allows. ``micro_batch`` > 0 fixes
    the images per pass instead (the views per pass stay bounded by the budget).

    ``buckets``: pad each pass to one of a few sizes (``bucket``), so that cuDNN meets few
    shapes; None (default): on a GPU only.

    ``lookahead``: the host reads which images went on a step late, so the device always has the
    next step queued (the images that stopped take one more pass, masked, and give back the
    random draws of it); the same bytes. None (default): on a GPU only.

    ``deadline`` (``time.monotonic()`` seconds): between passes through the model, a run past it
    raises ``TimeLimitExceeded``, so a long step can be stopped.
    """

    amp: bool = False
    channels_last: bool = True
    compile: bool = False
    micro_batch: int = 0
    pass_memory_mb: int = 0
    memory_fraction: float = 0.5
    deadline: float | None = None
    buckets: bool | None = None
    lookahead: bool | None = None

    def pads(self, device: torch.device) -> bool:
        """Whether passes on ``device`` are padded to ``bucket`` sizes."""
        return device.type == "cuda" if self.buckets is None else self.buckets

    def looks_ahead(self, device: torch.device) -> bool:
        """Whether the host reads a step's decisions on ``device`` a step late."""
        return device.type == "cuda" if self.lookahead is None else self.lookahead

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeLimitExceeded("the job's time limit passed")

    def budget_bytes(self, device: torch.device) -> int:
        """Memory one pass may take on ``device``, in bytes."""
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            budget = int((free + cached) * self.memory_fraction)
            if self.pass_memory_mb > 0:
                budget = min(budget, self.pass_memory_mb * 2**20)
            return budget
        return (self.pass_memory_mb or DEFAULT_CPU_PASS_MB) * 2**20


@dataclass(frozen=True)
class PassPlan:
    """How a set of images goes through the model: ``images`` per pass, each with up to
    ``views`` of its views (the rest in further passes)."""

    images: int
    views: int


_SAMPLE_BYTES: dict[tuple[Any, ...], int] = {}


def _probe_input(model: LoadedModel, n: int, size: int, grad: bool) -> torch.Tensor:
    x = torch.full((n, 3, size, size), 127.0, device=model.device)
    return x.requires_grad_(grad)


def sample_bytes(model: LoadedModel, size: int, runtime: Runtime, *, grad: bool) -> int:
    """Memory one image view of side ``size`` takes in a pass (with backward if ``grad``).

    CUDA: the peak allocation of a pass of 4 views, measured once and cached (times 1.25).
    CPU: twice the bytes autograd saves for the backward of one view (a pass without gradient:
    half of them), measured once and cached.
    """
    dev = model.device
    key = (id(model.net), dev.type, dev.index, size, grad, runtime.amp, runtime.channels_last)
    if key in _SAMPLE_BYTES:
        return _SAMPLE_BYTES[key]
    input_bytes = 3 * size * size * 4
    if dev.type == "cuda":
        n = 4
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        x = _probe_input(model, n, size, grad)
        with torch.set_grad_enabled(grad):
            logits = _forward(model, x, runtime)
            if grad:
                torch.autograd.grad(logits[:, 0].sum(), x)
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
        del x, logits
        value = int(1.25 * peak / n)
    else:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[t.data_ptr()] = t.numel() * t.element_size()
            return t

        x = _probe_input(model, 1, size, True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _forward(model, x, runtime)
        saved = sum(seen.values())
        saved = max(saved, 32 * input_bytes)  # models whose saved tensors autograd cannot see
        value = 2 * saved if grad else saved // 2
    value = max(value, input_bytes)
    _SAMPLE_BYTES[key] = value
    return value


def plan_passes(
    model: LoadedModel, runtime: Runtime, size: int, images: int, views: int, *, grad: bool
) -> PassPlan:
    """Images per pass and views per pass for ``images`` images of ``views`` views each."""
    dev = model.device
    per = sample_bytes(model, size, runtime, grad=grad)
    cap = max(1, runtime.budget_bytes(dev) // per)  # image views per pass
    pad = runtime.pads(dev)
    if runtime.micro_batch > 0:
        return PassPlan(runtime.micro_batch, fit_plan(1, views, cap, pad=pad).views)
    if dev.type == "cpu":
        return fit_plan(1, views, cap, pad=pad)
    return fit_plan(images, views, cap, pad=pad)


def fit_plan(images: int, views: int, cap: int, *, pad: bool) -> PassPlan:
    """Images per pass (up to ``images``; more than one only when all of an image's views fit in
    a pass) and views per pass (up to ``views``), so that a pass holds at most ``cap`` image
    views, its padding to the ``bucket`` size counted when ``pad``."""

    def rows(n: int) -> int:
        return bucket(n) if pad else n

    vpp = min(views, cap)
    while vpp > 1 and rows(vpp) > cap:
        vpp -= 1
    n = max(1, min(images, cap // views))
    while n > 1 and rows(n * vpp) > cap:
        n -= 1
    return PassPlan(n, vpp)


def _net(model: LoadedModel, runtime: Runtime) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model, or its ``torch.compile``d form (CUDA, ``runtime.compile``; compiled once)."""
    if not (runtime.compile and model.device.type == "cuda"):
        return model
    compiled = getattr(model, "_tivis_compiled", None)
    if compiled is None:
        compiled = torch.compile(model.__call__)
        model._tivis_compiled = compiled  # type: ignore[attr-defined]
    return compiled


def _index(idx: list[int], n: int, device: torch.device) -> slice | torch.Tensor:
    """``idx`` (sorted host ints) as a slice when it is a contiguous range, else a device index."""
    if idx and idx[-1] - idx[0] + 1 == len(idx):
        return slice(idx[0], idx[-1] + 1)
    return to_device(torch.tensor(idx, dtype=torch.long), device)


class _Read:
    """The decisions of one step (which images went on, their q_C) for ``images``, copied to
    the host without a wait on a GPU; ``values`` waits for them."""

    def __init__(self, images: list[int], values: torch.Tensor) -> None:
        self.images = images
        self._event: torch.cuda.Event | None = None
        if values.is_cuda:
            self._host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self._host.copy_(values, non_blocking=True)
            self._event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self._event.record()
        else:
            self._host = values

    def values(self) -> list[list[float]]:
        if self._event is not None:
            self._event.synchronize()
        values: list[list[float]] = self._host.tolist()
        return values


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


def _forward(model: LoadedModel, x: torch.Tensor, runtime: Runtime, rows: int = 0) -> torch.Tensor:
    """Logits of pixel-space images; with ``runtime.buckets`` (default: on a GPU) the batch goes
    through the model padded with black images to the ``bucket`` size of its length, or of
    ``rows`` where that is more, and their rows are dropped."""
    model.use_channels_last(runtime.channels_last)
    n = x.shape[0]
    if runtime.pads(x.device):
        x = pad_to_bucket(x, rows)
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    net = _net(model, runtime)
    if runtime.amp and x.device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = net(x).float()
    else:
        out = net(x)
    return out[:n]


@torch.no_grad()
def target_probs(
    model: LoadedModel, x: torch.Tensor, targets: torch.Tensor, runtime: Runtime | None = None
) -> torch.Tensor:
    """Softmax probability of each image's target: x (N, 3, H, W), targets (N,) -> (N,)."""
    rt = runtime or Runtime()
    n = plan_passes(model, rt, x.shape[-1], x.shape[0], 1, grad=False).images
    out = []
    for i in range(0, x.shape[0], n):
        rt.check_deadline()
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

    The images and their views go through the model in as few passes as the memory budget allows
    (``plan_passes``; on the CPU one image per pass).
    """
    rt = runtime or Runtime()
    b, v = x.shape[0], angles.shape[0]
    plan = plan_passes(model, rt, x.shape[-1], b, v, grad=False)
    out = []
    for i in range(0, b, plan.images):
        xs = x[i : i + plan.images]
        tg_img = targets[i : i + plan.images].to(x.device)
        parts = []
        for a in range(0, v, plan.views):
            rt.check_deadline()
            va, vs = angles[a : a + plan.views], scales[a : a + plan.views]
            views = T.expand_views(xs, va, vs)
            logits = _forward(model, views, rt).float()
            tg = tg_img.repeat_interleave(va.shape[0])[:, None]
            parts.append(logits.softmax(dim=1).gather(1, tg)[:, 0].view(-1, va.shape[0]))
        out.append(torch.cat(parts, dim=1))
    return torch.cat(out) if out else torch.zeros(0, v, device=x.device)


@torch.no_grad()
def topk(model: LoadedModel, x: torch.Tensor, k: int = 5) -> list[list[tuple[int, str, float]]]:
    """Top-k (index, label, probability) of each image (B, 3, H, W)."""
    rt = Runtime()
    n = plan_passes(model, rt, x.shape[-1], x.shape[0], 1, grad=False).images
    if x.shape[0] == 0:
        return []
    p = torch.cat([_forward(model, x[i : i + n], rt).float() for i in range(0, x.shape[0], n)])
    p = p.softmax(dim=1)
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
        self._num: torch.Tensor | None = None  # buffers of the in-place update
        self._den: torch.Tensor | None = None

    def step(
        self,
        x: torch.Tensor,
        idx: slice | torch.Tensor,
        grad: torch.Tensor,
        go: torch.Tensor | None = None,
    ) -> None:
        """Ascend along ``grad`` for the images ``idx`` of ``x`` (in place), then clip.

        ``go`` (bool, one per image of ``idx``): only those step; the others keep their pixels
        and state (a mask, so the host never waits for the device). None: all of them step;
        with ``idx`` a slice, the update is then made in place on views (no copies), with the
        same arithmetic, so the same bytes.
        """
        if isinstance(idx, slice) and go is None:
            self._step_slice(x, idx, grad)
            return
        c = self.cfg
        self.t[idx] += 1 if go is None else go.long()
        t = self.t[idx].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))  # (n, 1, ...)
        m = torch.mul(self.m[idx], c.beta1).add_(grad, alpha=1 - c.beta1)  # copies
        v = torch.mul(self.v[idx], c.beta2).addcmul_(grad, grad, value=1 - c.beta2)
        m_hat = m / (1 - c.beta1**t)
        v_hat = v / (1 - c.beta2**t)
        update = x[idx] + self.lr * m_hat / (v_hat.sqrt() + 1e-8)
        if self.clip:
            update.clamp_(0.0, 255.0)
        if go is not None:
            keep = go.view(-1, *([1] * (x.ndim - 1)))
            m = torch.where(keep, m, self.m[idx])
            v = torch.where(keep, v, self.v[idx])
            update = torch.where(keep, update, x[idx])
        self.m[idx], self.v[idx] = m, v
        x[idx] = update

    def _step_slice(self, x: torch.Tensor, idx: slice, grad: torch.Tensor) -> None:
        """``step`` for the images ``idx`` (a slice), all stepping: in place, in reused buffers."""
        c = self.cfg
        if self._num is None or self._den is None:
            self._num, self._den = torch.empty_like(x), torch.empty_like(x)
        self.t[idx] += 1
        t = self.t[idx].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        m, v, xs = self.m[idx], self.v[idx], x[idx]  # views
        m.mul_(c.beta1).add_(grad, alpha=1 - c.beta1)
        v.mul_(c.beta2).addcmul_(grad, grad, value=1 - c.beta2)
        den = torch.div(v, 1 - c.beta2**t, out=self._den[idx]).sqrt_().add_(1e-8)
        xs.add_(torch.div(m, 1 - c.beta1**t, out=self._num[idx]).mul_(self.lr).div_(den))
        if self.clip:
            xs.clamp_(0.0, 255.0)


def _runs(images: list[int], go: list[bool]) -> list[tuple[int, int, int]]:
    """The stepping images as runs of consecutive indices: (first row in ``images``, first
    image, length) for every maximal run of ``images[k]`` with ``go[k]`` that are consecutive."""
    out: list[tuple[int, int, int]] = []
    for k, (i, g) in enumerate(zip(images, go, strict=True)):
        if not g:
            continue
        if out and go[k - 1] and images[k - 1] == i - 1:  # out: k > 0
            row, first, n = out[-1]
            out[-1] = (row, first, n + 1)
        else:
            out.append((k, i, 1))
    return out


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


def _views(d: A.Draw, a: int, k: int) -> A.Draw:
    """Views ``a .. a + k`` of one image's draw."""
    return A.Draw(
        d.angles[a : a + k],
        d.scales[a : a + k],
        d.shifts[a : a + k],
        None if d.offsets is None else d.offsets[a : a + k],
        None if d.noise_seeds is None else d.noise_seeds[a : a + k],
        d.noise,
        d.view_scale,
    )


def _grad(
    obj: torch.Tensor, sub: torch.Tensor, rendered: torch.Tensor, image: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """d obj / d sub and, with ``image``, d obj / d rendered (the picture in pixel space, for
    the transparency map): the same backward pass, no extra one."""
    if not image:
        (grad,) = torch.autograd.grad(obj, sub)
        return grad, None
    if rendered is sub:  # the pixel parameterization: the same gradient
        (grad,) = torch.autograd.grad(obj, sub)
        return grad, grad
    grad, g_img = torch.autograd.grad(obj, [sub, rendered])
    return grad, g_img


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
    on_pass: Callable[[int, float], None] | None = None,
    plan: PassPlan | None = None,
    saliency: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``optimize_round`` on any parameterization, optionally under random views at every step.

    With ``augment``, each image draws its views from its own generator ``gens[i]`` at every step
    it takes part in; the objective is the mean over its views and ``q_C`` (early stop, trace) is
    the mean target probability over them. Without, the image itself is seen, as in the paper.
    ``saliency`` (B, H, W), when given, accumulates each stepping image's |gradient| of its
    objective with respect to its rendered pixel-space image (channels summed), at the steps it
    takes: from the backward passes the step makes anyway, and the same however its views are
    split into passes.

    The images still being optimized go through the model in the passes of ``plan`` (default:
    ``plan_passes`` for this batch). Between two passes of one step, ``on_pass(step, q_C)`` is
    called with the last finished step and its lowest q_C (it may raise to cancel), and the
    runtime's deadline is checked. The host reads the device once per step (which images go on;
    with ``runtime.lookahead``, the default on a GPU, a step late, see ``Runtime``).

    Returns:
        steps (B,) long, q_before (B,), q_after (B,) -- zeros for inactive images.
    """
    rt = runtime or Runtime()
    data = param.data
    b, dev = data.shape[0], data.device
    steps = torch.zeros(b, dtype=torch.long, device=dev)
    q_before = torch.zeros(b, dtype=torch.float64, device=dev)
    q_after = torch.zeros(b, dtype=torch.float64, device=dev)
    adam = _Adam(data, cfg, lr=lr, clip=param.clip)
    nv = augment.views if augment is not None else 1
    fill = None  # black; else made once, on the device, for every pass of the round
    if augment is not None and augment.fill == "zero":
        fill = torch.tensor(model.info.zero, dtype=torch.float32, device=dev)
    q_target = cfg.q_target
    if augment is not None and augment.q_target is not None:
        q_target = augment.q_target
    ahead = rt.looks_ahead(dev)
    head = torch.stack([active.long(), max_steps.to(active.device).long()]).tolist()  # one read
    running = [i for i, a in enumerate(head[0]) if a]  # host: the images still being optimized
    most: list[int] = head[1]
    taken = [0] * b  # ahead: the steps each image is known to have taken
    alive = active.clone()  # device: which images have not stopped (read by the host a step late)
    pending: _Read | None = None  # ahead: the last step's decisions, on their way to the host
    if plan is None:
        with torch.no_grad():
            size = int(param.render(data[:1]).shape[-1]) if b else 0
        if augment is not None:
            size = round(size * augment.view_scale)
        plan = plan_passes(model, rt, size, len(running), nv, grad=True)
    split = plan.views < nv  # an image's views take several passes
    want_map = saliency is not None
    step, q_last, first = 0, 0.0, True
    sizes: dict[tuple[int, int], int] = {}  # (chunk, first view) -> rows its passes are padded to
    with (
        SG.skip_gradients(model.net, cfg.skip_gradient),  # forward unchanged
        SG.stochastic_depth(model.net, cfg.stochastic_depth if augment else 0.0) as sd,
        BP.collect(model.net, cfg.bn_prior > 0, cfg.bn_prior_every) as prior,  # same passes
        CS.head(model.net, cfg.cos_power > 0 and cfg.objective == "logit") as hd,
    ):
        while running:
            q_parts, go_parts, grad_parts = [], [], []
            snaps: dict[int, torch.Tensor] = {}
            chunks = [running[i : i + plan.images] for i in range(0, len(running), plan.images)]
            passes = 0
            for c, chunk in enumerate(chunks):
                sel = _index(chunk, b, dev)
                tg_img = targets[sel]
                sub = data[sel].detach().requires_grad_(True)
                if ahead and (augment is not None or sd is not None):  # draws to give back
                    snaps.update((i, gens[i].get_state()) for i in chunk)
                draws = [A.draw(gens[i], augment) for i in chunk] if augment is not None else []
                keeps = []  # (branches, views) per image: which branches it keeps this step
                if sd is not None:
                    drop = cfg.stochastic_depth
                    keeps = [SG.draw_keep(gens[i], nv, sd.branches, drop) for i in chunk]
                q_sum = torch.zeros(len(chunk), dtype=torch.float64, device=dev)
                grad: torch.Tensor | None = None
                g_img: torch.Tensor | None = None  # d objective / d picture, for the map
                go_c: torch.Tensor | None = None
                for a in range(0, nv, plan.views):
                    if passes > 0:
                        rt.check_deadline()
                        if on_pass is not None:
                            on_pass(step, q_last)
                    passes += 1
                    k = min(plan.views, nv - a)
                    img = param.render(sub)  # (n, 3, H, W), pixel space
                    rendered = img
                    if augment is not None:
                        img = A.apply(img, [_views(d, a, k) for d in draws], fill)  # (n*k,3,H,W)
                    if sd is not None:  # image-major, as A.apply orders the views
                        keep = torch.cat([kp[:, a : a + k] for kp in keeps], dim=1)
                        sd.keep = to_device(keep, dev)
                    rows = sizes.setdefault((c, a), img.shape[0])
                    if img.shape[0] * SHRINK <= rows:
                        rows = sizes[(c, a)] = img.shape[0]
                    logits = _forward(model, img, rt, rows).float()
                    if sd is not None:
                        sd.keep = None
                    logp = logits.log_softmax(dim=1)
                    tg = tg_img.repeat_interleave(k)[:, None]
                    if hd.fc is not None:
                        chosen = hd.objective(logits, tg[:, 0], cfg.cos_power)
                    else:
                        chosen = (logits if cfg.objective == "logit" else logp).gather(1, tg)[:, 0]
                    if prior.layers:  # each view's BatchNorm distance, from this forward pass
                        chosen = chosen - cfg.bn_prior * prior.take(chosen.shape[0], dev)
                    p = logp.gather(1, tg)[:, 0].exp().detach().double().view(-1, k)
                    if not split:  # all views in this pass: decide first, skip needless backward
                        qc = p.mean(dim=1)
                        go_c = alive[sel] & ~((qc > q_target) | (steps[sel] >= max_steps[sel]))
                        obj = chosen.view(-1, k).mean(dim=1)  # mean over views
                        # CPU: no wait, skip the backward
                        if dev.type == "cuda" or bool(go_c.any()):
                            grad, g_img = _grad((obj * go_c).sum(), sub, rendered, want_map)
                        q_sum = qc
                    else:  # a share of the views: their part of the mean, go decided after all
                        obj = chosen.view(-1, k).sum(dim=1) / nv
                        g, gi = _grad(obj.sum(), sub, rendered, want_map)
                        grad = g if grad is None else grad + g
                        if gi is not None:  # signed, so the map is |gradient of the mean|
                            g_img = gi if g_img is None else g_img + gi
                        q_sum = q_sum + p.sum(dim=1)
                qc = q_sum if not split else q_sum / nv
                if go_c is None or split:
                    go_c = alive[sel] & ~((qc > q_target) | (steps[sel] >= max_steps[sel]))
                if saliency is not None and g_img is not None:  # stepping images only
                    mask = go_c.to(saliency)[:, None, None]
                    saliency[sel] += g_img.abs().sum(dim=1).to(saliency) * mask
                q_parts.append(qc)
                go_parts.append(go_c)
                grad_parts.append(grad if grad is not None else torch.zeros_like(sub))
            q, go = torch.cat(q_parts), torch.cat(go_parts)
            sel = _index(running, b, dev)
            was = alive[sel]  # stopped images (ahead) keep their q_C, steps and pixels
            q_after[sel] = torch.where(was, q, q_after[sel]) if ahead else q
            if first:
                q_before[sel] = q
                first = False
            alive[sel] = go
            steps[sel] += go.long()
            grads = grad_parts[0] if len(grad_parts) == 1 else torch.cat(grad_parts)
            grads = grads.to(data.dtype)
            if dev.type != "cpu" or ahead:  # queue the masked update before the host waits
                adam.step(data, sel, grads, go)
            decided = _Read(running, torch.stack([go.double(), q]))
            if ahead:  # read the step before, while this one runs on the device
                previous, pending = pending, decided
                if previous is None:
                    continue
                decided = previous
            host = decided.values()  # the one read of the device per step
            go_host = [g > 0.5 for g in host[0]]
            seen = decided.images
            stopped = {i for i, g in zip(seen, go_host, strict=True) if not g}
            for i in stopped.intersection(snaps):  # ahead: drew for a step it did not take
                gens[i].set_state(snaps[i])
            if ahead:  # one that took its last step had it judged by the pass queued since
                for i, went in zip(seen, go_host, strict=True):
                    taken[i] += int(went)
                stopped.update(i for i in seen if taken[i] >= most[i])
            if any(go_host):
                if dev.type == "cpu" and not ahead:  # in place on runs of stepping images
                    for row, start, n in _runs(running, go_host):
                        adam.step(data, slice(start, start + n), grads[row : row + n])
                step += 1
                q_last = min(qv for qv, g in zip(host[1], go_host, strict=True) if g)
                rt.check_deadline()
                if on_step is not None:
                    on_step(step, q_last)
            running = [i for i in running if i not in stopped]
    return steps, q_before, q_after


def visualize(
    model: LoadedModel,
    initial: torch.Tensor,
    targets: torch.Tensor,
    spec: OptimizeSpec,
    *,
    runtime: Runtime | None = None,
    progress: Progress | None = None,
    test_every: int = TEST_EVERY,
    transparency: bool = False,
) -> list[VisResult]:
    """Algorithm 1 for a batch: optimize, transform, evaluate, round after round, then a last round.

    The image lives in ``spec.param`` (the paper's pixels by default, or a Fourier spectrum);
    after each round's transformation it is encoded back into that parameterization. With
    ``spec.augment``, every step sees seeded random views of each image. An empty test set skips
    the per-round evaluation (and with it the criterion).

    The per-round transformation tests cost a pass of every test view, so they run only where
    something reads them: every round when a criterion is on, else every ``test_every``-th round
    and the last round of the loop (the trace's ``test_min``/``test_mean`` are None in the other
    rounds); the final table always. They never change the images.

    Args:
        model: the classifier.
        initial: starting images (B, 3, H, W) in pixel space (flat gray for the paper's method).
        targets: (B,) class indices.
        spec: schedule, optimizer, tests, criterion (``spec.rounds()`` is empty for vanilla,
            which then runs one long round of up to ``max_total_steps`` steps).
        runtime: precision and memory layout.
        progress: called as ``progress(round, rounds, step, q_C)`` after every step and
            between the passes of a step that takes several; may raise to cancel.
        test_every: rounds between trace tests when the criterion is off (1: every round).
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
    size = int(x0.shape[-1])
    final_aug = aug if (aug is not None and spec.augment.final_round) else None

    def step_plan(a: StepAugment | None) -> PassPlan:
        if a is None:
            return plan_passes(model, rt, size, b, 1, grad=True)
        return plan_passes(model, rt, round(size * a.view_scale), b, a.views, grad=True)

    loop_plan, final_plan = step_plan(aug), step_plan(final_aug)
    crit = spec.criterion

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
            on_pass=reporter(r),
            plan=loop_plan,
            saliency=sal,
        )
        total += steps
        idx = in_loop.nonzero()[:, 0]
        with torch.no_grad():
            moved = T.apply(param.render(param.data[idx]), op)
            param.data[idx] = param.encode(moved, margin=P.KEEP_MARGIN)
            if sal is not None:  # the map follows the image (T.apply: 3 channels, 0..255)
                top = sal[idx].amax(dim=(1, 2)).clamp(min=1e-30)[:, None, None]
                m = (sal[idx] / top * 255.0)[:, None].expand(-1, 3, -1, -1)
                sal[idx] = T.apply(m, op)[:, 0] * top / 255.0
        probs = None
        tested = crit.kind != "off" or (r + 1) % test_every == 0 or r == len(rounds) - 1
        if names and tested:
            probs = view_probs(model, param.images()[idx], targets[idx], t_angles, t_scales, rt)
        for k, i in enumerate(idx.tolist()):
            pmin = float(probs[k].min()) if probs is not None else None
            pmean = float(probs[k].mean()) if probs is not None else None
            results[i].trace.append(
                RoundRecord(
                    r, T.describe(op), int(steps[i]), float(qb[i]), float(qa[i]), pmin, pmean
                )
            )
            value = pmin if crit.kind == "min" else pmean
            if crit.kind != "off" and value is not None and value >= crit.threshold:
                in_loop[i] = False
                results[i].stopped_by = "criterion"

    if spec.final_round or not rounds:
        per_round = cfg.max_total_steps if not rounds else cfg.max_steps_per_round
        limit = torch.full((b,), per_round, dtype=torch.long, device=dev)
        everyone = torch.ones(b, dtype=torch.bool, device=dev)
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
            on_pass=reporter(n_rounds - 1),
            plan=final_plan,
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
