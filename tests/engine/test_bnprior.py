"""The BatchNorm prior (DeepInversion): the distance is exactly the stated formula per view,
it is collected from the forward pass without changing it, only inside the block and with
gradients, and the engine uses it deterministically, batched equal to one by one."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from efficientnet_lite_pytorch import EfficientNet
from optioncheck import OptionCheck
from pydantic import ValidationError
from torch import nn

from specs import OptimizerSettings
from worker.engine import bnprior as BP
from worker.engine.models import LoadedModel


def test_finds_the_batchnorm_layers() -> None:
    torch.manual_seed(0)
    assert len(BP.bn_layers(EfficientNet.from_name("efficientnet-lite0"))) == 49
    assert len(BP.bn_layers(torchvision.models.resnet18())) == 20
    assert BP.bn_layers(torchvision.models.vgg11()) == []


def test_layer_distance_exact_on_a_hand_made_map() -> None:
    # one view, two channels of 2 x 2: channel 0 = 1, 3, 5, 7 (mean 4, variance 5);
    # channel 1 = 2, 2, 2, 2 (mean 2, variance 0)
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]], [[2.0, 2.0], [2.0, 2.0]]]])
    mean, var = torch.tensor([1.0, 6.0]), torch.tensor([1.0, 3.0])
    d = BP.layer_distance(x, mean, var)
    # ‖(4 - 1, 2 - 6)‖ + ‖(5 - 1, 0 - 3)‖ = 5 + 5
    assert d.tolist() == [10.0]
    # per view: a batch of two gives each view's own distance
    both = BP.layer_distance(torch.cat([x, x.flip(1)]), mean, var)
    alone = BP.layer_distance(x.flip(1), mean, var)
    assert both[0] == d[0] and both[1] == alone[0]
    assert math.isclose(float(alone[0]), math.hypot(1, 2) + math.hypot(1, 2), rel_tol=1e-6)


def test_large_maps_take_every_fourth_position() -> None:
    # one channel of 32 x 32 = 1,024 positions holding 0, 1, ..., 1023 in row-major order:
    # positions 0, 4, ..., 1020 give mean 510 and variance 16 * (256² - 1) / 12 = 87,380
    x = torch.arange(1024, dtype=torch.float32).view(1, 1, 32, 32)
    zero = torch.zeros(1)
    torch.testing.assert_close(BP.layer_distance(x, zero, zero), torch.tensor([510.0 + 87_380.0]))
    # a map of 1,023 positions uses all of them: 0..1022, mean 511, variance (1023² - 1) / 12
    y = torch.arange(1023, dtype=torch.float32).view(1, 1, 31, 33)
    torch.testing.assert_close(
        BP.layer_distance(y, zero, zero), torch.tensor([511.0 + (1023**2 - 1) / 12])
    )


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (2, 3, 32, 33), (2, 4, 40, 40)])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_written_out_gradient_equals_autograds(
    shape: tuple[int, int, int, int], affine: bool, channels_last: bool
) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    mean, var = torch.randn(c, generator=g), torch.rand(c, generator=g)
    aff = (torch.randn(c, generator=g), torch.randn(c, generator=g)) if affine else None
    w = torch.randn(shape[0], generator=g)  # a different weight per view
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    d1 = BP.layer_distance(x1, mean, var, aff)
    d2 = BP.autograd_distance(x2, mean, var, aff)
    # the same statistics; the norms summed in another order: float32 rounding apart
    torch.testing.assert_close(d1, d2, rtol=1e-6, atol=0.0)
    (g1,) = torch.autograd.grad((d1 * w).sum(), x1)
    (g2,) = torch.autograd.grad((d2 * w).sum(), x2)
    assert g1.dtype == x.dtype and g1.shape == x.shape
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6 * float(g2.abs().max()))
    if shape[2] * shape[3] >= BP.STRIDE_FROM:  # positions not used get no gradient
        skipped = g1.permute(0, 2, 3, 1).flatten(1, 2)[:, 1 :: BP.STRIDE]
        assert not skipped.any()


def test_written_out_gradient_where_a_statistic_matches_exactly() -> None:
    # the mean is exactly the running mean: ‖μ − mean‖ = 0, whose gradient autograd takes as 0
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]], requires_grad=True)
    d = BP.layer_distance(x, torch.tensor([4.0]), torch.tensor([1.0]))
    (grad,) = torch.autograd.grad(d.sum(), x)
    # d = |σ² − 1| = 4 over y: ∂σ²/∂y = 2 (y − 4) / 4
    torch.testing.assert_close(grad, torch.tensor([[[[-1.5, -0.5], [0.5, 1.5]]]]))
    xb = x.detach().bfloat16().requires_grad_(True)  # autocast's maps: float32 distance
    db = BP.layer_distance(xb, torch.zeros(1), torch.zeros(1))
    assert db.dtype == torch.float32
    assert torch.autograd.grad(db.sum(), xb)[0].dtype == torch.bfloat16


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    bn = net[1]
    assert isinstance(bn, nn.BatchNorm2d)
    bn.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
    bn.running_var.uniform_(0.5, 2)  # type: ignore[union-attr]
    return net.eval()


def test_collects_from_the_forward_pass_only_inside_the_block_and_with_gradients() -> None:
    net = small_net()
    bn = net[1]
    assert isinstance(bn, nn.BatchNorm2d)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    plain = net(x)
    with BP.collect(net, True) as col:
        assert col.layers == 1
        y = net(x)
        d = col.take(3, x.device)
        assert torch.equal(y, plain)  # the forward is unchanged
        assert bn.running_mean is not None and bn.running_var is not None
        expect = BP.layer_distance(net[0](x), bn.running_mean, bn.running_var)
        torch.testing.assert_close(d, expect, rtol=1e-6, atol=0.0)
        assert d.requires_grad
        with torch.no_grad():  # evaluation passes add nothing
            net(x)
        assert torch.equal(col.take(3, x.device), torch.zeros(3))
        net(x[:2])
        with pytest.raises(RuntimeError, match="2 views collected, expected 3"):
            col.take(3, x.device)
    net(x)  # outside the block: nothing is collected
    with BP.collect(net, True) as col:
        assert torch.equal(col.take(3, x.device), torch.zeros(3))
    with BP.collect(net, False) as off:  # off: no layers, zeros
        net(x)
        assert off.layers == 0 and torch.equal(off.take(3, x.device), torch.zeros(3))


def three_batchnorms(
    seed: int, channels: tuple[int, int, int]
) -> tuple[nn.Sequential, list[nn.BatchNorm2d], list[torch.Tensor]]:
    """Three conv + BatchNorm layers (the second halves the map) with random running
    statistics, and the list their inputs are appended to at every forward pass."""
    torch.manual_seed(seed)
    a, b, c = channels
    net = nn.Sequential(
        nn.Conv2d(3, a, 3, padding=1), nn.BatchNorm2d(a), nn.ReLU(),
        nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
        nn.Conv2d(b, c, 1), nn.BatchNorm2d(c),
    ).eval()  # fmt: skip
    bns = [m for m in net if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
        bn.running_var.uniform_(0.5, 2)  # type: ignore[union-attr]
    inputs: list[torch.Tensor] = []
    for bn in bns:
        bn.register_forward_pre_hook(lambda m, i: inputs.append(i[0]))
    return net, bns, inputs


def test_all_layers_at_once_equal_the_sum_of_each_layers_distance() -> None:
    # three BatchNorms with different channel counts and map sizes (one of 1,024 positions, so
    # strided), a different weight per view: the distances of a pass, taken together, and their
    # gradient equal the per-layer formula's summed by autograd
    net, bns, inputs = three_batchnorms(3, (5, 2, 7))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    w = torch.tensor([1.0, -2.0, 0.5])
    x1 = x.clone().requires_grad_(True)
    with BP.collect(net, True) as col:
        net(x1)
        d1 = col.take(3, x.device)
    (g1,) = torch.autograd.grad((d1 * w).sum(), x1)
    with BP.collect(net, True) as col:  # each view's distance, whatever passes with it
        net(x[1:2].clone().requires_grad_(True))
        assert torch.equal(col.take(1, x.device), d1[1:2])
    inputs.clear()
    x2 = x.clone().requires_grad_(True)
    net(x2)
    assert [t.shape[1:] for t in inputs] == [(5, 32, 32), (2, 16, 16), (7, 16, 16)]
    d2 = torch.zeros(3)
    for t, bn in zip(inputs, bns, strict=True):
        assert bn.running_mean is not None and bn.running_var is not None
        d2 = d2 + BP.autograd_distance(t, bn.running_mean, bn.running_var)
    assert float(d2.detach().min()) > 1.0  # a test that can tell
    (g2,) = torch.autograd.grad((d2 * w).sum(), x2)
    torch.testing.assert_close(d1, d2, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6 * float(g2.abs().max()))


def test_every_kth_layer_sums_only_those_layers() -> None:
    # three BatchNorms; every 2nd: the first and the third, their distances and gradient as the
    # per-layer formula gives them; the hooks then collect all layers again
    net, bns, inputs = three_batchnorms(5, (4, 6, 3))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    per_layer = []
    x_ref = x.clone().requires_grad_(True)
    net(x_ref)
    for t, bn in zip(inputs, bns, strict=True):
        assert bn.running_mean is not None and bn.running_var is not None
        per_layer.append(BP.autograd_distance(t, bn.running_mean, bn.running_var))
    assert all(float(d.detach().min()) > 0.5 for d in per_layer)  # each layer counts
    x1 = x.clone().requires_grad_(True)
    with BP.collect(net, True, every=2) as col:
        net(x1)
        d1 = col.take(2, x.device)
    ref = per_layer[0] + per_layer[2]
    torch.testing.assert_close(d1, ref.detach(), rtol=1e-6, atol=0.0)
    (g1,) = torch.autograd.grad(d1.sum(), x1)
    (g_ref,) = torch.autograd.grad(ref.sum(), x_ref)
    torch.testing.assert_close(g1, g_ref, rtol=1e-4, atol=1e-6 * float(g_ref.abs().max()))
    with BP.collect(net, True) as col:  # all three again
        net(x.clone().requires_grad_(True))
        d_all = col.take(2, x.device)
    all_layers = per_layer[0] + per_layer[1] + per_layer[2]
    torch.testing.assert_close(d_all, all_layers.detach(), rtol=1e-6, atol=0.0)
    with pytest.raises(ValueError, match="every"), BP.collect(net, True, every=0):
        pass


def test_inactive_after_an_error_and_untouched_nets_it_cannot_look_into() -> None:
    net = small_net()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(RuntimeError, match="cancelled"), BP.collect(net, True):
        net(x)
        raise RuntimeError("cancelled")
    net(x)
    with BP.collect(net, True) as col:
        assert torch.equal(col.take(1, x.device), torch.zeros(1))  # nothing left from before
    with BP.collect(lambda t: t, True) as col:  # type: ignore[arg-type]
        assert col.layers == 0


def test_spec_validation() -> None:
    for bad in (-0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="bn_prior"):
            OptimizerSettings(bn_prior=bad)
    assert OptimizerSettings().bn_prior == 0.0  # the paper's method: no prior
    for bad_every in (0, 65, 1.5):
        with pytest.raises(ValidationError, match="bn_prior_every"):
            OptimizerSettings(bn_prior_every=bad_every)  # type: ignore[arg-type]
    assert OptimizerSettings().bn_prior_every == 1


def distance(model: LoadedModel, img: torch.Tensor) -> float:
    """The BatchNorm distance of a picture (pixel space) at identity."""
    x = img.detach().requires_grad_(True)  # the hooks collect only with gradients
    with BP.collect(model.net, True) as col:
        model(x)
        return float(col.take(1, x.device)[0].detach())


def test_engine_deterministic_batched_equals_one_by_one_and_pulls_toward_the_statistics(
    option_check: OptionCheck,
) -> None:
    again, plain = option_check.run({"bn_prior": 0.01}, {"bn_prior": 0.0})
    # the prior pulls the features toward the model's statistics
    lite = option_check.model
    assert distance(lite, again.image[None].float()) < distance(lite, plain.image[None].float())
