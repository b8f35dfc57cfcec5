"""Engine side of model debugging: fitting photos to a model, screening, top-k, panels."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from worker.engine import classify as D
from worker.engine.images import decode_image, encode_png
from worker.engine.models import LoadedModel, ModelInfo, Registry


def info(
    size: int = 224, resize_to: int | None = 256, interpolation: str = "bilinear"
) -> ModelInfo:
    return ModelInfo(
        name="m",
        architecture="test",
        weights="none",
        input_size=size,
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        labels=tuple(f"c{i}" for i in range(10)),
        resize_to=resize_to,
        interpolation=interpolation,
    )


@pytest.fixture(scope="module")
def tiny(models_dir: Path) -> LoadedModel:
    return Registry(models_dir=models_dir).load("tiny")


# --------------------------------------------------------------------------- fit


@pytest.mark.parametrize(
    ("h", "w", "expected"),
    [(300, 451, (256, 384)), (451, 300, (384, 256)), (256, 256, (256, 256)), (100, 50, (512, 256))],
)
def test_fit_size_resizes_the_shorter_side(h: int, w: int, expected: tuple[int, int]) -> None:
    assert D.fit_size(h, w, info()) == expected


@pytest.mark.parametrize("arch", ["resnet50", "vgg19", "inception_v3"])
def test_fit_matches_torchvision_reference_transforms(arch: str) -> None:
    """Resize + center crop exactly as the DEFAULT weights' own ``transforms()`` do."""
    import torchvision
    from torchvision.transforms.v2 import functional as TF

    entry = Registry().info(arch)
    ref = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    assert [entry.resize_to] == list(ref.resize_size)
    assert [entry.input_size] == list(ref.crop_size)
    x = torch.rand(3, 300, 451, generator=torch.Generator().manual_seed(0)) * 255
    expected = TF.center_crop(
        TF.resize(x, ref.resize_size, interpolation=ref.interpolation, antialias=True),
        ref.crop_size,
    )
    torch.testing.assert_close(D.fit(x, entry), expected)


def test_torchvision_sizes_come_from_the_weights_metadata() -> None:
    from worker.engine.models import torchvision_preprocessing

    assert torchvision_preprocessing("resnet50") == (224, 232, "bilinear")
    assert torchvision_preprocessing("vgg19") == (224, 256, "bilinear")
    assert torchvision_preprocessing("inception_v3") == (299, 342, "bilinear")
    entry = Registry().info("inception_v3")
    assert (entry.input_size, entry.resize_to, entry.interpolation) == (299, 342, "bilinear")


def test_fit_default_model_is_bicubic_crop_of_256() -> None:
    entry = Registry().info("efficientnet_lite0")
    assert (entry.resize_to, entry.interpolation, entry.input_size) == (256, "bicubic", 224)
    assert entry.resize == (
        "shorter side resized to 256, then the center 224×224 square cropped (bicubic, antialiased)"
    )
    x = torch.full((3, 300, 451), 255.0)
    out = D.fit(x, entry)
    assert out.shape == (3, 224, 224)
    assert float(out.max()) <= 255.0 and float(out.min()) >= 0.0  # bicubic overshoot clipped


def test_fit_crops_the_center() -> None:
    """A 256×512 image with a left/right split: the center crop keeps the middle 224 columns."""
    x = torch.zeros(1, 256, 512)
    x[..., 256:] = 255.0
    out = D.fit(x, info(resize_to=256))
    assert out.shape == (1, 224, 224)
    assert torch.equal(out[0, :, :112], torch.zeros(224, 112))
    assert torch.equal(out[0, :, 112:], torch.full((224, 112), 255.0))


def test_fit_without_resize_to_stretches_the_whole_image() -> None:
    x = torch.arange(4.0).view(1, 1, 4).expand(1, 2, 4).contiguous() * 50  # (1, 2, 4)
    m = info(size=4, resize_to=None)
    assert "aspect ratio not kept" in m.resize
    out = D.fit(x, m)
    assert out.shape == (1, 4, 4)
    assert torch.allclose(out[0, 0], out[0, 3])  # rows repeat: whole image, no crop


def test_fit_batch_and_errors() -> None:
    assert D.fit(torch.rand(2, 3, 300, 400) * 255, info()).shape == (2, 3, 224, 224)
    with pytest.raises(ValueError, match=r"got torch.uint8 \(3, 4, 4\)"):
        D.fit(torch.zeros(3, 4, 4, dtype=torch.uint8), info())
    with pytest.raises(ValueError, match="expected float images"):
        D.fit(torch.zeros(4, 4), info())


# --------------------------------------------------------------------------- screening


def test_fill_rectangles_exact() -> None:
    x = torch.full((3, 5, 6), 9.0)
    out = D.fill_rectangles(x, [(1, 2, 3, 2), (5, 0, 1, 1)], (127.0, 1.0, 2.0))
    assert torch.equal(x, torch.full((3, 5, 6), 9.0))  # input untouched
    assert out[:, 2:4, 1:4].tolist() == [[[127.0] * 3] * 2, [[1.0] * 3] * 2, [[2.0] * 3] * 2]
    assert out[:, 0, 5].tolist() == [127.0, 1.0, 2.0]
    changed = (out != x).any(dim=0)
    assert int(changed.sum()) == 3 * 2 + 1


@pytest.mark.parametrize("rect", [(5, 0, 2, 2), (0, 4, 1, 2), (0, 0, 0, 1), (-1, 0, 1, 1)])
def test_fill_rectangles_outside_is_an_error(rect: D.Rect) -> None:
    with pytest.raises(ValueError, match="inside the 6×5 image"):
        D.fill_rectangles(torch.zeros(3, 5, 6), [rect], (0.0, 0.0, 0.0))


def test_screen_mask_coverage_follows_the_crop() -> None:
    mask = D.screen_mask(256, 512, [(0, 0, 100, 256)])  # the left edge: cropped away
    assert float(D.fit(mask, info()).sum()) == 0.0
    mask = D.screen_mask(256, 512, [(144, 0, 224, 256)])  # exactly the central crop
    assert float(D.fit(mask, info()).mean()) == 1.0


def test_screening_with_the_zero_gives_a_zero_model_input(tiny: LoadedModel) -> None:
    x = torch.rand(3, 64, 64) * 255
    screened = D.fill_rectangles(x, [(0, 0, 64, 64)], tiny.info.zero)
    assert torch.allclose(tiny.normalize(screened[None]), torch.zeros(1, 3, 64, 64), atol=1e-5)


# --------------------------------------------------------------------------- predictions


def test_classify_fits_each_image_and_returns_sorted_topk(tiny: LoadedModel) -> None:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 80, 120, generator=g) * 255, torch.rand(3, 64, 64, generator=g) * 255]
    preds, probs = D.classify(tiny, images, k=3)
    assert probs.shape == (2, 10)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))
    for row, p in zip(preds, probs, strict=True):
        assert len(row) == 3
        assert [q.p for q in row] == sorted((q.p for q in row), reverse=True)
        assert row[0].index == int(p.argmax()) and row[0].label == tiny.info.labels[row[0].index]
    # The second image is already 64×64: fitting is the identity (resize_to is None -> stretch).
    direct = D.predict(tiny, images[1][None])
    torch.testing.assert_close(probs[1:], direct)
    assert D.classify(tiny, images, k=50)[0][0][-1].index >= 0  # k larger than classes: all 10
    with pytest.raises(ValueError, match="at least one image"):
        D.classify(tiny, [], k=3)


def test_prediction_lines() -> None:
    lines = D.prediction_lines(
        [
            D.Prediction(1, "tiger cat", 0.3871),
            D.Prediction(2, "x", 0.99999),
            D.Prediction(3, "y", 1e-5),
        ]
    )
    assert lines == ["tiger cat 38.7%", "x 100%", "y <0.1%"]


# --------------------------------------------------------------------------- panels


def _preds(n: int, k: int = 5) -> list[list[D.Prediction]]:
    return [[D.Prediction(j, f"label {j}", 0.5 / (j + 1)) for j in range(k)] for _ in range(n)]


def test_classify_panel_size_and_png() -> None:
    images = [
        torch.rand(3, 300, 451) * 255,
        torch.rand(3, 64, 64) * 255,
        torch.rand(3, 90, 40) * 255,
    ]
    panel = D.classify_panel(
        images, ["a.png", "b.png", "c.png"], {"m1": _preds(3), "m2": _preds(3, 2)}, cell=100, pad=8
    )
    assert panel.dtype == torch.uint8
    assert panel.shape[2] == 3 * 100 + 4 * 8
    # Title, a 100 px cell, then 2 sections of text (1 + 5 and 1 + 2 lines): taller than 200 px.
    assert panel.shape[1] > 100 + 9 * 10
    back = decode_image(encode_png(panel))
    assert torch.equal(back.to(torch.uint8), panel)
    # Deterministic.
    again = D.classify_panel(
        images, ["a.png", "b.png", "c.png"], {"m1": _preds(3), "m2": _preds(3, 2)}, cell=100, pad=8
    )
    assert torch.equal(panel, again)


def test_classify_panel_errors() -> None:
    with pytest.raises(ValueError, match="one title per image"):
        D.classify_panel([torch.zeros(3, 4, 4)], [], {"m": _preds(1)})
    with pytest.raises(ValueError, match="expected 1 top-k lists for m"):
        D.classify_panel([torch.zeros(3, 4, 4)], ["a"], {"m": _preds(2)})


def test_screen_panel_size() -> None:
    rows = [
        (name, torch.rand(3, s, s) * 255, torch.rand(3, s, s) * 255, _preds(1)[0], _preds(1)[0])
        for name, s in (("m224", 224), ("m299", 299), ("tiny", 64))
    ]
    panel = D.screen_panel(rows, cell=120, pad=6)
    assert panel.shape[2] == 2 * 120 + 3 * 6
    # Three rows, each a 120 px cell plus a 6-line text block.
    assert panel.shape[1] > 3 * (120 + 6 * 10)
    with pytest.raises(ValueError, match="at least one model row"):
        D.screen_panel([])


def test_zero_of_each_builtin_model() -> None:
    reg = Registry()
    assert reg.info("efficientnet_lite0").zero == (127.0, 127.0, 127.0)
    assert reg.info("inception_v3").zero == (127.5, 127.5, 127.5)
    r, g, b = reg.info("resnet50").zero
    assert (round(r, 3), round(g, 3), round(b, 3)) == (123.675, 116.28, 103.53)


def test_custom_sidecar_may_declare_its_resize(tmp_path: Path) -> None:
    from tinymodel import make_tiny_model

    make_tiny_model(tmp_path, name="cropper", size=64)
    side = tmp_path / "cropper.json"
    import json

    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "resize_to": 73, "interpolation": "bicubic"}))
    entry = Registry(models_dir=tmp_path).info("cropper")
    assert (entry.resize_to, entry.interpolation) == (73, "bicubic")
    assert entry.describe()["resize"] == (
        "shorter side resized to 73, then the center 64×64 square cropped (bicubic, antialiased)"
    )
    side.write_text(json.dumps({**meta, "resize_to": 32}))
    with pytest.raises(ValueError, match="resize_to >= input_size"):
        Registry(models_dir=tmp_path).info("cropper")
    assert dataclasses.replace(entry, resize_to=None).resize.startswith("whole image resized")
