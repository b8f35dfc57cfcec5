"""Model debugging jobs end to end in-process: classify, screen, and the model comparison grid.

Fast checks use two tiny random-weight models; the ``slow`` ones classify real photographs that
ship in scikit-image's wheel with the real default model (efficientnet_lite0, CPU).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from photos import photo

from specs import VisualizeSpec
from specs.classify import ClassifySpec, ScreenSpec
from worker.engine import render
from worker.engine.images import decode_image, encode_png
from worker.engine.models import ModelNotFound, Registry
from worker.jobs import JobContext, JobOutput
from worker.jobs.base import Images
from worker.jobs.classify import run_classify, run_screen
from worker.jobs.visualize import run_visualize


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A registry with two tiny custom models, ``tiny`` and ``tiny2`` (64 px, 10 classes)."""
    from tinymodel import make_tiny_model

    d = tmp_path_factory.mktemp("two")
    make_tiny_model(d, name="tiny", seed=0)
    make_tiny_model(d, name="tiny2", seed=1)
    return Registry(models_dir=d)


def png(h: int, w: int, seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return encode_png(torch.rand(3, h, w, generator=g) * 255)


def classify(spec: ClassifySpec, registry: Registry, images: Images, **kw: Any) -> JobOutput:
    return run_classify(spec, JobContext(registry, images=images, **kw))


def screen(spec: ScreenSpec, registry: Registry, images: Images, **kw: Any) -> JobOutput:
    return run_screen(spec, JobContext(registry, images=images, **kw))


def artifact(out: JobOutput, name: str) -> bytes:
    return next(a.data for a in out.artifacts if a.name == name)


# --------------------------------------------------------------------------- classify (tiny)


def test_classify_two_models_two_images(two_models: Registry) -> None:
    spec = ClassifySpec(models=["tiny", "tiny2"], top_k=3)
    out = classify(spec, two_models, {"a.png": png(80, 120), "b.png": png(64, 64, 1)})
    res = out.result
    assert res["kind"] == "classify"
    assert [a.name for a in out.artifacts] == ["panel.png", "classify.json"]
    assert [im["name"] for im in res["images"]] == ["a.png", "b.png"]
    assert res["images"][0]["width"] == 120 and res["images"][0]["format"] == "PNG"
    for im in res["images"]:
        assert set(im["predictions"]) == {"tiny", "tiny2"}
        for top in im["predictions"].values():
            assert len(top) == 3 and top[0]["p"] >= top[1]["p"] >= top[2]["p"]
    assert res["models"]["tiny"]["resize"].startswith("whole image resized to 64×64")
    assert res["images"][0]["fitted"]["tiny"] == {
        "resized_height": 64,
        "resized_width": 64,
        "crop_top": 0,
        "crop_left": 0,
        "crop_size": 64,
    }
    assert json.loads(artifact(out, "classify.json")) == json.loads(json.dumps(res))
    panel = decode_image(artifact(out, "panel.png"))
    assert panel.shape[2] == 2 * 224 + 3 * 8  # a 224 px column per image


def test_classify_order_and_references(two_models: Registry) -> None:
    images = {"up.png": png(70, 70), "job1/tiny-0-soccer_ball-image.png": png(64, 64, 2)}
    spec = ClassifySpec.model_validate(
        {
            "models": ["tiny"],
            "images": [{"job": "job1", "artifact": "tiny-0-soccer_ball-image.png"}, "up.png"],
        }
    )
    out = classify(spec, two_models, images)
    assert [im["name"] for im in out.result["images"]] == [
        "job1/tiny-0-soccer_ball-image.png",
        "up.png",
    ]
    listed = classify(ClassifySpec(models=["tiny"]), two_models, [png(64, 64), png(30, 90)])
    assert [im["name"] for im in listed.result["images"]] == ["image-0", "image-1"]


def test_classify_errors(two_models: Registry) -> None:
    with pytest.raises(ValueError, match=r"no image named 'missing\.png'"):
        classify(
            ClassifySpec(models=["tiny"], images=["missing.png"]), two_models, {"a.png": png(8, 8)}
        )
    with pytest.raises(ValueError, match=r"image 'a\.png': unsupported image type"):
        classify(ClassifySpec(models=["tiny"]), two_models, {"a.png": b"GIF89a...."})
    with pytest.raises(ModelNotFound, match=r"unknown model 'tiny3'.*closest: tiny"):
        classify(ClassifySpec(models=["tiny3"]), two_models, [png(8, 8)])
    with pytest.raises(ValueError, match="at least one image"):
        classify(ClassifySpec(models=["tiny"]), two_models, [])


# --------------------------------------------------------------------------- screen (tiny)


def test_screen_keeps_one_picture_per_model_whose_names_differ_in_punctuation(
    tmp_path: Path,
) -> None:
    """``t-a`` and ``t_a`` are two models: each gets its own screened PNG (both were written
    as ``screened-t_a.png``, the second over the first)."""
    from tinymodel import make_tiny_model

    make_tiny_model(tmp_path, name="t-a", seed=0)
    make_tiny_model(tmp_path, name="t_a", seed=1)
    spec = ScreenSpec(models=["t-a", "t_a"], rectangles=[{"x": 0, "y": 0, "width": 8, "height": 8}])
    out = screen(spec, Registry(models_dir=tmp_path), {"photo.png": png(16, 16)})
    names = [a.name for a in out.artifacts]
    assert len(names) == len(set(names))
    shots = [m["screened"] for m in out.result["models"]]
    assert shots == ["screened-t-a.png", "screened-t_a.png"] and set(shots) <= set(names)


def test_screen_fills_each_models_zero(two_models: Registry) -> None:
    spec = ScreenSpec.model_validate(
        {
            "models": ["tiny", "tiny2"],
            "rectangles": [{"x": 10, "y": 5, "width": 20, "height": 30}],
            "top_k": 2,
        }
    )
    data = png(64, 96)
    out = screen(spec, two_models, {"photo.png": data})
    names = [a.name for a in out.artifacts]
    assert names == ["screened-tiny.png", "screened-tiny2.png", "panel.png", "screen.json"]
    original = decode_image(data)
    screened = decode_image(artifact(out, "screened-tiny.png"))
    # tiny's zero is its mean, 0.5·255 = 127.5, saved as 128 (round half to even).
    assert torch.equal(screened[:, 5:35, 10:30], torch.full((3, 30, 20), 128.0))
    outside = torch.ones(64, 96, dtype=torch.bool)
    outside[5:35, 10:30] = False
    assert torch.equal(screened[:, outside], original[:, outside])
    for entry in out.result["models"]:
        assert entry["zero"] == [127.5, 127.5, 127.5]
        assert len(entry["before"]) == len(entry["after"]) == 2
        assert 0.0 < entry["covered"] < 1.0
        assert entry["original_top1"]["p_before"] == entry["before"][0]["p"]
    panel = decode_image(artifact(out, "panel.png"))
    assert panel.shape[2] == 2 * 224 + 3 * 8


def test_screen_errors(two_models: Registry) -> None:
    outside = ScreenSpec.model_validate(
        {"models": ["tiny"], "rectangles": [{"x": 60, "y": 0, "width": 10, "height": 10}]}
    )
    with pytest.raises(ValueError, match=r"rectangles\[0\].*64×64 image"):
        screen(outside, two_models, [png(64, 64)])
    ok = ScreenSpec.model_validate(
        {"models": ["tiny"], "rectangles": [{"x": 0, "y": 0, "width": 10, "height": 10}]}
    )
    with pytest.raises(ValueError, match="exactly one image, got 2"):
        screen(ok, two_models, [png(64, 64), png(64, 64)])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        screen(ok, two_models, [png(64, 64)[:60]])


# --------------------------------------------------------------------------- compare models


def test_visualize_two_models_grid_has_a_row_per_model_and_a_column_per_target(
    two_models: Registry,
) -> None:
    spec = VisualizeSpec.model_validate(
        {
            "model": ["tiny", "tiny2"],
            "targets": ["soccer ball", 3, "class 5"],
            "method": "vanilla",
            "optimizer": {"max_steps_per_round": 3},
            "views": {"count": 2},
        }
    )
    out = run_visualize(spec, JobContext(two_models, device="cpu"))
    grid = decode_image(artifact(out, "grid.png")).to(torch.uint8)  # (3, H, W)
    side, pad = 64, 4  # tiny's input size; render.grid's default margin
    # The cell area is the bottom-right 2 × 3 block of (side + pad) squares.
    block = grid[:, -2 * (side + pad) :, -3 * (side + pad) :]
    inked = (block != 255).any(dim=0)  # (H, W)

    def runs(flags: torch.Tensor) -> list[int]:
        lengths, n = [], 0
        for f in [*flags.tolist(), False]:
            if f:
                n += 1
            elif n:
                lengths.append(n)
                n = 0
        return lengths

    assert runs(inked.any(dim=1)) == [side, side]  # 2 rows: one per model
    assert runs(inked.any(dim=0)) == [side, side, side]  # 3 columns: one per target
    # Cell (r, c) is model r's image of target c, in order.
    cells = [
        [decode_image(artifact(out, f"{m}-{k}-{lab}-image.png")) for k, lab in enumerate(slugs)]
        for m in ("tiny", "tiny2")
        for slugs in [["soccer_ball", "class_3", "class_5"]]
    ]
    expected = render.grid(
        cells, row_labels=["tiny", "tiny2"], col_labels=["soccer ball", "class 3", "class 5"]
    )
    assert torch.equal(grid, expected)
    assert out.result["grid"] == "grid.png"


# --------------------------------------------------------------------------- real photographs

EXPECTED = {
    "chelsea.png": {"tabby", "tiger cat", "Egyptian cat"},  # a cat
    "coffee.png": {"espresso", "cup", "coffee mug"},
    "rocket.jpg": {"missile", "projectile", "space shuttle"},
    "motorcycle_left.png": {"moped", "motor scooter"},
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


@pytest.mark.slow
def test_real_photos_classified_by_the_default_model(registry: Registry) -> None:
    images = {name: photo(name) for name in [*EXPECTED, "grass.png"]}
    out = classify(ClassifySpec(), registry, images, device="cpu")
    entry = out.result["models"]["efficientnet_lite0"]
    assert entry["resize"].startswith("shorter side resized to 256, then the center 224×224")
    chelsea = next(im for im in out.result["images"] if im["name"] == "chelsea.png")
    assert chelsea["fitted"]["efficientnet_lite0"] == {
        "resized_height": 256,
        "resized_width": 384,  # 451 × 256 / 300
        "crop_top": 16,
        "crop_left": 80,
        "crop_size": 224,
    }
    tops = {
        im["name"]: [p["label"] for p in im["predictions"]["efficientnet_lite0"]]
        for im in out.result["images"]
    }
    for name, wanted in EXPECTED.items():
        assert len(tops[name]) == 5
        assert wanted & set(tops[name]), f"{name}: expected one of {wanted} in top-5 {tops[name]}"
    assert tops["chelsea.png"][0] in EXPECTED["chelsea.png"]
    assert tops["coffee.png"][0] == "espresso"
    # The paper's section 3.3 observation: a photo of grass is taken for a ball.
    assert any("ball" in label for label in tops["grass.png"]), tops["grass.png"]
    panel = decode_image(artifact(out, "panel.png"))
    assert panel.shape[2] == 5 * 224 + 6 * 8


@pytest.mark.slow
def test_screening_the_cup_changes_the_prediction(registry: Registry, tmp_path: Path) -> None:
    data = photo("coffee.png")  # 600×400, the cup in the middle
    spec = ScreenSpec.model_validate(
        {"rectangles": [{"x": 150, "y": 0, "width": 300, "height": 300}]}
    )
    out = screen(spec, registry, {"coffee.png": data}, device="cpu")
    (entry,) = out.result["models"]
    assert entry["before"][0]["label"] == "espresso" and entry["before"][0]["p"] > 0.8
    assert entry["top1_changed"]
    assert entry["after"][0]["label"] != "espresso"
    assert entry["original_top1"]["p_after"] < 0.1 * entry["original_top1"]["p_before"]
    assert entry["zero"] == [127.0, 127.0, 127.0]
    assert entry["covered"] > 0.5
    screened = decode_image(artifact(out, "screened-efficientnet_lite0.png"))
    assert screened.shape == (3, 400, 600)
    assert torch.equal(screened[:, :300, 150:450], torch.full((3, 300, 300), 127.0))
    panel = decode_image(artifact(out, "panel.png"))
    assert panel.shape[2] == 2 * 224 + 3 * 8
    (tmp_path / "panel.png").write_bytes(artifact(out, "panel.png"))  # decodes from disk too
    assert decode_image((tmp_path / "panel.png").read_bytes()).shape == panel.shape


# --------------------------------------------------------------------------- command line


def test_cli_classify_and_screen(
    two_models: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from worker import cli

    assert two_models.models_dir is not None
    monkeypatch.setenv("TIVIS_MODELS_DIR", str(two_models.models_dir))
    img = tmp_path / "in.png"
    img.write_bytes(png(64, 80))
    out = tmp_path / "c"
    argv = ["classify", "--image", str(img), "--model", "tiny", "--model", "tiny2"]
    assert cli.main([*argv, "--top-k", "2", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["images"][0]["name"] == "in.png"
    assert len(result["images"][0]["predictions"]["tiny2"]) == 2
    assert (out / "panel.png").is_file()
    out = tmp_path / "s"
    argv = ["screen", "--image", str(img), "--model", "tiny", "--rect", "0,0,8,8"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {
        "screened-tiny.png",
        "panel.png",
        "screen.json",
        "result.json",
    }
    assert cli.main(["screen", "--image", str(img), "--model", "tiny", "--rect", "0,0,99,8"]) == 2
    assert "extends past the 80×64 image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["screen", "--image", str(img), "--rect", "1,2,3"])


def test_cli_targets_are_indices_only_when_ascii_digits() -> None:
    """Both command lines read up to 9 ASCII digits as a class index and pass anything else on
    as a name (``"²".isdigit()`` is true, yet ``int`` refuses it)."""
    from tivis_client import cli as client_cli
    from worker import cli

    for read in (cli._target, client_cli._target):
        assert read("805") == 805 and read(" 7 ") == 7
        assert read("soccer ball") == "soccer ball"
        assert read("²") == "²" and read("٣") == "٣"
        assert read("1" * 5000) == "1" * 5000
