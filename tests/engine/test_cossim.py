"""The class direction objective (``dot * cossim ** p``): its value and slope on a hand-made head,
the floor, the hook's lifetime, and in the engine: batched equals one by one, the target goes up,
and the picture's features turn toward the class."""

from __future__ import annotations

import pytest
import torch
import torchvision
from optioncheck import OptionCheck
from pydantic import ValidationError
from torch import nn

from specs import OptimizerSettings
from worker.engine import cossim as CS
from worker.engine.formats import Exported
from worker.engine.models import LoadedModel


def head_net() -> nn.Module:
    """Features = the input (2 numbers); class 0's weights (1, 0) and bias 5, class 1's (0, 2)."""
    fc = nn.Linear(2, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        fc.bias.copy_(torch.tensor([5.0, -1.0]))
    return nn.Sequential(nn.Flatten(), fc)


@pytest.mark.parametrize(
    ("power", "slope"),
    # f = (3, 4), w = (1, 0): dot 3, cos 0.6, d cos / d f = w / 5 - 3 f / 125 = (0.128, -0.096);
    # slope = w + p * dot / cos * d cos / d f = (1, 0) + p * 5 * (0.128, -0.096)
    [(0.0, (1.0, 0.0)), (1.0, (1.64, -0.48)), (2.0, (2.28, -0.96))],
)
def test_value_is_the_logit_before_its_bias_and_slope_that_of_dot_times_cos_to_the_power(
    power: float, slope: tuple[float, float]
) -> None:
    net = head_net()
    x = torch.tensor([[3.0, 4.0]], requires_grad=True)
    with CS.head(net, True) as h:
        logits = net(x)
        obj = h.objective(logits, torch.tensor([0]), power)
    assert obj.tolist() == [3.0]  # the logit 8 less the bias 5
    (g,) = torch.autograd.grad(obj.sum(), x)
    torch.testing.assert_close(g, torch.tensor([slope]))
    # the same direction as the slope of dot * cos ** p itself (scaled by 1 / cos ** p)
    x2 = x.detach().requires_grad_(True)
    f, w = x2[0], torch.tensor([1.0, 0.0])
    prod = (f @ w) * ((f @ w) / f.norm()) ** power
    (g2,) = torch.autograd.grad(prod, x2)
    torch.testing.assert_close(g2 / 0.6**power, g)


def test_features_against_the_class_climb_along_its_weights() -> None:
    # f = (-3, 4) against class 0 (cos -0.6, under the floor): the slope is the weights'
    net = head_net()
    x = torch.tensor([[-3.0, 4.0]], requires_grad=True)
    with CS.head(net, True) as h:
        obj = h.objective(net(x), torch.tensor([0]), 2.0)
    (g,) = torch.autograd.grad(obj.sum(), x)
    assert obj.tolist() == [-3.0]
    torch.testing.assert_close(g, torch.tensor([[1.0, 0.0]]))


def test_rows_are_their_own_and_the_hook_ends_with_the_block() -> None:
    net = head_net()
    x = torch.tensor([[3.0, 4.0], [1.0, 1.0]], requires_grad=True)
    with CS.head(net, True) as h:
        both = h.objective(net(x), torch.tensor([0, 1]), 1.0)
        alone = h.objective(net(x[1:]), torch.tensor([1]), 1.0)
    assert both[1] == alone[0] == 2.0
    assert not net[1]._forward_pre_hooks
    with CS.head(net, False) as off:  # off: no hook, the plain target logit
        logits = net(x)
        assert not net[1]._forward_pre_hooks
        assert off.objective(logits, torch.tensor([0, 1]), 1.0).tolist() == [8.0, 1.0]


def test_finds_the_classifier() -> None:
    torch.manual_seed(0)
    resnet, vgg = torchvision.models.resnet18(), torchvision.models.vgg11()
    with CS.head(resnet, True) as h:
        assert h.fc is resnet.fc
    with CS.head(vgg, True) as h:
        assert h.fc is vgg.classifier[6]
    with CS.head(lambda x: x, True) as h:  # a net it cannot look into: the plain logit
        assert h.fc is None
    # an exported program (how a registered model in the export format loads): no nn.Linear left
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    program = torch.export.export(net.eval(), (torch.randn(1, 3, 8, 8),))
    with CS.head(Exported(program.module()), True) as h:
        assert h.fc is None


def test_power_is_bounded() -> None:
    for bad in (-1.0, 9.0, float("nan"), float("inf")):
        with pytest.raises(ValidationError):
            OptimizerSettings(cos_power=bad)


def cosine(model: LoadedModel, img: torch.Tensor, target: int) -> float:
    """The cosine of a picture's classifier input with the target's weights, at identity."""
    x = img.detach().requires_grad_(True)  # the hook keeps features only with gradients
    with CS.head(model.net, True) as h:
        model(x)
        assert h.fc is not None and h.feats is not None
        f, w = h.feats.detach().flatten(1)[0], h.fc.weight[target].detach()
        return float((f @ w) / (f.norm() * w.norm()))


def test_engine_deterministic_batched_equals_one_by_one_and_turns_toward_the_class(
    option_check: OptionCheck,
) -> None:
    again, plain = option_check.run({"cos_power": 2.0}, {"cos_power": 0.0})
    lite = option_check.model
    assert cosine(lite, again.image[None].float(), 1) > cosine(lite, plain.image[None].float(), 1)
