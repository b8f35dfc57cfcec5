"""BatchNorm folded into the convolution before it: the same logits and input gradients, the
BatchNorm prior and the residual-branch hooks unchanged, and nothing folded where the result would
differ (a convolution's output used elsewhere too, a BatchNorm run twice or after no convolution,
γ = 0, TorchScript)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from worker.engine import bnprior as BP
from worker.engine import skipgrad
from worker.engine.fold import FoldedBatchNorm, find_pairs, fold, fold_padding
from worker.engine.models import Registry


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affines in every BatchNorm; eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return net.eval()


class Block(nn.Module):
    """conv → BN → ReLU → conv → BN, added to its input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return randomize(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), Block(4),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5),
        )
    )  # fmt: skip


def test_folds_every_conv_batchnorm_pair_with_the_same_logits_and_gradients() -> None:
    net = small_net()
    x = torch.randn(2, 3, 17, 17, generator=torch.Generator().manual_seed(1))
    assert find_pairs(net, x[:1]) == [("0", "1"), ("3.conv1", "3.bn1"), ("3.conv2", "3.bn2")]
    out = fold(net, x[:1])
    assert out is not net and isinstance(net[1], nn.BatchNorm2d)  # a copy: the net is untouched
    assert not any(isinstance(m, nn.BatchNorm2d) for m in out.modules())
    assert sum(isinstance(m, FoldedBatchNorm) for m in out.modules()) == 3
    assert not any(p.requires_grad for p in out.parameters() if p.dim() == 4)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = net(a), out(b)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    ya[:, 2].sum().backward()
    yb[:, 2].sum().backward()
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


def test_the_batchnorm_prior_reads_the_same_statistics_from_a_folded_layer() -> None:
    net = small_net()
    x = torch.randn(3, 3, 17, 17, generator=torch.Generator().manual_seed(2))
    folded = fold(net, x[:1])
    assert len(BP.bn_layers(folded)) == len(BP.bn_layers(net)) == 3
    got = []
    for n in (net, folded):
        xi = x.clone().requires_grad_(True)
        with BP.collect(n, True) as col:
            n(xi)
            d = col.take(3, x.device)
        d.sum().backward()
        got.append((d.detach(), xi.grad))
    (d0, g0), (d1, g1) = got
    assert float(d0.min()) > 1.0  # far from the statistics: a test that can tell
    torch.testing.assert_close(d1, d0, rtol=1e-5, atol=1e-5)
    assert g0 is not None and g1 is not None
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6)


def test_a_folded_layer_maps_its_output_back_to_the_batchnorm_input() -> None:
    bn = randomize(nn.BatchNorm2d(3))
    assert isinstance(bn, nn.BatchNorm2d)
    f = FoldedBatchNorm(bn)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    y = bn(x)
    assert f(y) is y
    back = y * f.scale.view(1, -1, 1, 1) + f.shift.view(1, -1, 1, 1)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)


class UsesConvTwice(nn.Module):
    """The convolution's raw output goes to the BatchNorm and to the sum: folding changes it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return (self.bn(y) + y).mean(dim=(2, 3))


class SharedBatchNorm(nn.Module):
    """One BatchNorm after two convolutions, and one after a ReLU: none can be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.bn = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
        self.bn_after_relu = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.a(x)) + self.bn(self.b(x))
        return self.bn_after_relu(torch.relu(y)).mean(dim=(2, 3))


def test_nothing_is_folded_where_the_result_would_differ(caplog: pytest.LogCaptureFixture) -> None:
    x = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(4))
    twice = randomize(UsesConvTwice())
    assert find_pairs(twice, x) == [("conv", "bn")]  # the pass alone cannot see the second use
    with caplog.at_level("WARNING"):
        assert fold(twice, x) is twice  # the logits can
    assert "nothing folded" in caplog.text
    shared = randomize(SharedBatchNorm())
    assert find_pairs(shared, x) == [] and fold(shared, x) is shared
    zero = randomize(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    zero[1].weight.data[1] = 0.0  # γ = 0: the layer's input cannot be read back from its output
    assert find_pairs(zero, x) == [] and fold(zero, x) is zero
    training = small_net().train()
    assert fold(training, x) is training  # batch statistics: not an affine map
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated
        scripted = torch.jit.script(small_net())  # type: ignore[no-untyped-call]
    assert fold(scripted, x) is scripted


def test_efficientnet_lite_folds_whole_and_keeps_its_residual_branch_hooks() -> None:
    torch.manual_seed(0)
    net = randomize(EfficientNet.from_name("efficientnet-lite0"))
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    folded = fold(net, x[:1])
    assert sum(isinstance(m, FoldedBatchNorm) for m in folded.modules()) == 49
    assert len(skipgrad.residual_branches(folded)) == len(skipgrad.residual_branches(net)) == 9
    grads = []
    for n in (net, folded):
        xi = x.clone().requires_grad_(True)
        with skipgrad.skip_gradients(n, 0.5):
            n(xi)[:, 7].sum().backward()
        grads.append(xi.grad)
    assert grads[0] is not None and grads[1] is not None
    torch.testing.assert_close(
        grads[1], grads[0], rtol=1e-3, atol=1e-3 * float(grads[0].abs().max())
    )


def test_symmetric_padding_folds_into_the_convolution_with_the_same_sums() -> None:
    torch.manual_seed(0)
    net = randomize(EfficientNet.from_name("efficientnet-lite0"))
    folded = copy.deepcopy(net)
    # the stem and 4 blocks stride 2 on even maps: TensorFlow pads more on the right, kept
    assert fold_padding(folded) == 12
    assert sum(isinstance(m, nn.ZeroPad2d) for m in folded.modules()) == 5
    for size in (224, 176, 97):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            assert torch.equal(folded(x), net(x))
    assert fold_padding(nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(3, 3, 3))) == 0


def test_the_registry_loads_efficientnet_lite0_folded_or_as_built() -> None:
    model = Registry().load("efficientnet_lite0")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.net.modules())
    assert sum(isinstance(m, nn.ZeroPad2d) for m in model.net.modules()) == 5
    assert len(BP.bn_layers(model.net)) == 49
    built = Registry().load("efficientnet_lite0", fold=False)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in built.net.modules()) == 49
    assert sum(isinstance(m, nn.ZeroPad2d) for m in built.net.modules()) == 17
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(6)) * 255
    with torch.no_grad():
        want = built(x)
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-4 * float(want.abs().max()))
