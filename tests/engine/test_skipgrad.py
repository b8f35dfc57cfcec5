"""Skip gradients (SGM): the forward pass is untouched, each residual branch's gradient is scaled
by gamma, the model is left as it was, and the engine uses it deterministically."""

from __future__ import annotations

from typing import cast

import pytest
import torch
import torchvision
from efficientnet_lite_pytorch import EfficientNet
from optioncheck import OptionCheck
from pydantic import ValidationError
from torch import nn

from specs import OptimizerSettings, OptimizeSpec
from worker.engine import optimize as O
from worker.engine import skipgrad as SG
from worker.engine.images import encode_png, flat_gray


def grad_of(net: nn.Module, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of ``net`` at ``x`` and d (output · w) / d x."""
    xr = x.detach().requires_grad_(True)
    y = net(xr)
    (g,) = torch.autograd.grad((y * w).sum(), xr)
    return y.detach(), g


@pytest.fixture(scope="module")
def lite_net() -> nn.Module:
    torch.manual_seed(0)  # random weights: only the structure matters here
    return EfficientNet.from_name("efficientnet-lite0").eval()


def test_finds_the_residual_branches_of_known_architectures(lite_net: nn.Module) -> None:
    # lite0: the 9 MBConv blocks of stride 1 with as many outputs as inputs (the others add none)
    assert len(SG.residual_branches(lite_net)) == 9
    assert len(SG.residual_branches(torchvision.models.resnet18())) == 8  # BasicBlock.bn2
    assert len(SG.residual_branches(torchvision.models.resnet50())) == 16  # Bottleneck.bn3
    assert SG.residual_branches(torchvision.models.vgg11()) == []


def test_one_block_gradient_is_skip_plus_gamma_times_branch(lite_net: nn.Module) -> None:
    """y = x + f(x), so d(y·w)/dx = w + J_f^T w: with gamma, w + gamma J_f^T w. Exact up to
    float rounding, and the forward bytes are the same."""
    block = lite_net._blocks[2]  # 24 -> 24 channels, stride 1: adds its input
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 24, 14, 14, generator=gen)
    w = torch.randn(2, 24, 14, 14, generator=gen)
    y1, g1 = grad_of(block, x, w)
    for gamma in (0.5, 0.2):
        with SG.skip_gradients(block, gamma) as n:
            assert n == 1
            y, g = grad_of(block, x, w)
        assert torch.equal(y, y1)
        torch.testing.assert_close(g, w + gamma * (g1 - w), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(g, g1)


def test_whole_models_same_forward_other_gradient_then_plain_again(lite_net: nn.Module) -> None:
    torch.manual_seed(0)
    resnet, vgg = torchvision.models.resnet18().eval(), torchvision.models.vgg11().eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for net, branches in ((lite_net, 9), (resnet, 8), (vgg, 0)):
        w = torch.randn(1, 1000, generator=torch.Generator().manual_seed(3))
        y1, g1 = grad_of(net, x, w)
        with SG.skip_gradients(net, 0.5) as n:
            y, g = grad_of(net, x, w)
        assert n == branches
        assert torch.equal(y, y1)  # ResNet adds its skip in place: the copy keeps that working
        assert torch.equal(g, g1) == (branches == 0)
        _, again = grad_of(net, x, w)  # after the block: plain gradients, bit for bit
        assert torch.equal(again, g1)


def test_nets_it_cannot_look_into_are_left_as_they_are() -> None:
    """A net that is no module (a test's counting wrapper) or an exported program (how registered
    models come): no branches found, nothing set on it, the same gradient."""
    block = torchvision.models.resnet.BasicBlock(4, 4).eval()  # a residual block, once exported
    exported = torch.export.export(block, (torch.zeros(1, 4, 8, 8),)).module()
    with SG.skip_gradients(lambda x: x, 0.5) as n:  # type: ignore[arg-type]
        assert n == 0
    x, w = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    _, plain = grad_of(exported, x, w)
    with SG.skip_gradients(exported, 0.5) as n:
        _, g = grad_of(exported, x, w)
    assert n == 0 and torch.equal(g, plain)
    assert not [k for k in vars(exported) if "tivis" in k]


def test_the_factor_is_reset_after_an_error(lite_net: nn.Module) -> None:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    w = torch.ones(1, 1000)
    _, plain = grad_of(lite_net, x, w)
    with pytest.raises(RuntimeError, match="cancelled"), SG.skip_gradients(lite_net, 0.3):
        raise RuntimeError("cancelled")
    _, after = grad_of(lite_net, x, w)
    assert torch.equal(after, plain)


def test_gamma_is_validated() -> None:
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="gamma"), SG.skip_gradients(nn.Identity(), bad):
            pass
    for bad in (0.0, 1.01, float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="skip_gradient"):
            OptimizerSettings(skip_gradient=bad)
    assert OptimizerSettings().skip_gradient == 1.0  # the paper's method: plain gradients
    assert OptimizeSpec().optimizer.skip_gradient == 1.0
    assert OptimizeSpec(method="invariant+").optimizer.skip_gradient == 0.5


def test_engine_same_seed_same_bytes_and_batched_equals_one_by_one(
    option_check: OptionCheck,
) -> None:
    _, plain = option_check.run({"skip_gradient": 0.5}, {"skip_gradient": 1.0})
    # the cached model computes plain gradients again afterwards
    ck = option_check
    x0, tg = flat_gray([0], 224), torch.tensor([1])
    again = O.visualize(ck.model, x0, tg, ck.spec({"skip_gradient": 1.0}))[0]
    assert encode_png(again.image) == encode_png(plain.image)


# stochastic depth: the same hooks drop branches per sample


def test_draw_keep_is_seeded_and_keeps_with_probability_one_minus_p() -> None:
    a = SG.draw_keep(torch.Generator().manual_seed(5), 4, 9, 0.2)
    b = SG.draw_keep(torch.Generator().manual_seed(5), 4, 9, 0.2)
    assert a.shape == (9, 4) and torch.equal(a, b)
    assert bool(((a == 0) | (a == 1)).all())
    assert bool(SG.draw_keep(torch.Generator().manual_seed(5), 4, 9, 0.0).all())
    many = SG.draw_keep(torch.Generator().manual_seed(6), 1000, 10, 0.2)
    assert 0.78 < float(many.mean()) < 0.82  # 10,000 draws of a 0.8 coin, seeded


def test_a_dropped_branch_leaves_the_skip_path_alone(lite_net: nn.Module) -> None:
    """y = x + f(x): dropped, y = x and d(y·w)/dx = w (also with skip gradients); kept, the
    plain block. Per sample, only in passes with gradients, and all kept again after."""
    blocks = cast(nn.ModuleList, lite_net._blocks)
    block = blocks[2]  # 24 -> 24 channels, stride 1: adds its input
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 24, 14, 14, generator=gen)
    w = torch.randn(2, 24, 14, 14, generator=gen)
    y1, g1 = grad_of(block, x, w)
    for gamma in (1.0, 0.5):
        with SG.skip_gradients(block, gamma), SG.stochastic_depth(block, 0.2) as sd:
            assert sd is not None and sd.branches == 1
            sd.keep = torch.tensor([[0.0, 1.0]])  # sample 0 drops the branch, sample 1 keeps it
            y, g = grad_of(block, x, w)
            assert torch.equal(y[0], x[0]) and torch.equal(y[1], y1[1])
            assert torch.equal(g[0], w[0])
            torch.testing.assert_close(g[1], w[1] + gamma * (g1[1] - w[1]), rtol=1e-5, atol=1e-6)
            with torch.no_grad():  # evaluation passes see the whole model
                assert torch.equal(block(x), y1)
        y_after, g_after = grad_of(block, x, w)
        assert torch.equal(y_after, y1) and torch.equal(g_after, g1)
    with pytest.raises(RuntimeError, match="cancelled"), SG.stochastic_depth(block, 0.2) as sd:
        assert sd is not None
        sd.keep = torch.tensor([[0.0, 0.0]])
        raise RuntimeError("cancelled")
    assert torch.equal(grad_of(block, x, w)[0], y1)  # kept again after an error


def test_stochastic_depth_off_or_nothing_to_drop() -> None:
    with SG.stochastic_depth(torchvision.models.vgg11(), 0.2) as sd:
        assert sd is None
    with SG.stochastic_depth(nn.Identity(), 0.0) as sd:
        assert sd is None
    for bad in (-0.1, 1.0):
        with (
            pytest.raises(ValueError, match="drop probability"),
            SG.stochastic_depth(nn.Identity(), bad),
        ):
            pass
    for bad_spec in (-0.1, 1.0, float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="stochastic_depth"):
            OptimizerSettings(stochastic_depth=bad_spec)
    assert OptimizerSettings().stochastic_depth == 0.0


def test_engine_stochastic_depth_same_bytes_batched_equals_one_by_one(
    option_check: OptionCheck,
) -> None:
    option_check.run({"stochastic_depth": 0.3}, {"stochastic_depth": 0.0})
