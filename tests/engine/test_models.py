from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from worker.engine.models import (
    ModelNotFound,
    Registry,
    UnknownClass,
    WeightsMissing,
    imagenet_labels,
    torchvision_weights_filename,
)


def test_builtin_entries_declare_size_normalization_and_zero() -> None:
    reg = Registry()
    lite = reg.info("efficientnet_lite0")
    assert lite.input_size == 224 and lite.zero == (127.0, 127.0, 127.0)
    assert lite.std == (128.0, 128.0, 128.0)
    r50 = reg.info("resnet50")
    assert r50.zero == pytest.approx((0.485 * 255, 0.456 * 255, 0.406 * 255))
    inc = reg.info("inception_v3")
    assert inc.input_size == 299 and inc.zero == (127.5, 127.5, 127.5)
    assert len(lite.labels) == 1000 and lite.labels[805] == "soccer ball"


def test_zero_color_becomes_an_all_zero_model_input() -> None:
    reg = Registry()
    for name in ("efficientnet_lite0", "resnet50", "inception_v3"):
        info = reg.info(name)
        x = torch.tensor(info.zero).view(1, 3, 1, 1).expand(1, 3, 4, 4)
        from worker.engine.models import Normalize

        assert Normalize(info.mean, info.std)(x).abs().max() < 1e-6


def test_targets_by_index_or_case_insensitive_name() -> None:
    info = Registry().info("efficientnet_lite0")
    assert info.resolve_target("Soccer Ball") == 805
    assert info.resolve_target(805) == 805
    assert info.resolve_target("805") == 805
    with pytest.raises(UnknownClass) as err:
        info.resolve_target("socer bal")
    assert "soccer ball" in err.value.suggestions
    assert "closest" in str(err.value)
    with pytest.raises(UnknownClass, match="out of range"):
        info.resolve_target(1000)
    for text in ("²", "1" * 5000):  # "²".isdigit(), yet int() refuses it; and 5,000 digits
        with pytest.raises(UnknownClass):
            info.resolve_target(text)


def test_unknown_model_lists_closest_names() -> None:
    with pytest.raises(ModelNotFound) as err:
        Registry().info("resnet05")
    assert "resnet50" in err.value.suggestions


def test_default_model_loads_offline_once_per_process() -> None:
    reg = Registry()
    assert "efficientnet_lite0" in [m.name for m in reg.available()]
    m1 = reg.load("efficientnet_lite0")
    assert reg.load("efficientnet_lite0") is m1
    with torch.no_grad():
        logits = m1(torch.full((1, 3, 224, 224), 127.0))
    assert logits.shape == (1, 1000)


def test_missing_torchvision_weights_name_the_file_and_the_fix(tmp_path: Path) -> None:
    reg = Registry(torch_home=tmp_path)
    assert "resnet50" not in [m.name for m in reg.available()]
    with pytest.raises(WeightsMissing) as err:
        reg.load("resnet50")
    expected = tmp_path / "hub" / "checkpoints" / torchvision_weights_filename("resnet50")
    assert str(expected) in str(err.value)
    assert "TIVIS_WEIGHTS_DIR" in str(err.value)


@pytest.mark.parametrize("arch", ["resnet50", "inception_v3"])
def test_torchvision_weights_load_from_the_torch_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str
) -> None:
    """A random state dict written where torchvision caches it is what the registry loads."""
    kwargs = {"aux_logits": True, "init_weights": False} if arch == "inception_v3" else {}
    torch.manual_seed(0)
    ref = getattr(torchvision.models, arch)(weights=None, **kwargs).eval()
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(ref.state_dict(), ckpt / torchvision_weights_filename(arch))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # the default: torch.hub.get_dir()

    reg = Registry()
    assert arch in [m.name for m in reg.available()]
    model = reg.load(arch)
    size = model.info.input_size
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        got = model(x)
        if arch == "inception_v3":
            ref.transform_input = False
        want = ref(model.normalize(x))
    # the registry folds BatchNorm into the convolutions (worker.engine.fold): float32 rounding
    # (all but those of Inception's auxiliary head, which eval mode does not run)
    left = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.net.modules())
    assert left == (2 if arch == "inception_v3" else 0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4 * float(want.abs().max()))


def test_weights_dir_is_searched_first(tmp_path: Path) -> None:
    wd = tmp_path / "weights"
    wd.mkdir()
    torch.save(
        torchvision.models.resnet50(weights=None).state_dict(),
        wd / torchvision_weights_filename("resnet50"),
    )
    reg = Registry(weights_dir=wd, torch_home=tmp_path / "empty")
    assert reg.weights_path("resnet50").parent == wd
    assert reg.load("resnet50").info.name == "resnet50"


def test_custom_torchscript_model_with_sidecar(models_dir: Path) -> None:
    reg = Registry(models_dir=models_dir)
    info = reg.info("tiny")
    assert info.input_size == 64 and info.zero == (127.5, 127.5, 127.5)
    assert info.resolve_target("SOCCER BALL") == 9
    assert reg.load("tiny")(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_custom_sidecar_with_imagenet_labels_and_bad_sidecar(tmp_path: Path) -> None:
    from tinymodel import make_tiny_model

    make_tiny_model(tmp_path, name="m")
    meta = json.loads((tmp_path / "m.json").read_text())
    meta["labels"] = "imagenet"
    (tmp_path / "m.json").write_text(json.dumps(meta))
    assert Registry(models_dir=tmp_path).info("m").labels == imagenet_labels()
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(ValueError, match="bad sidecar"):
        Registry(models_dir=tmp_path).info("m")
