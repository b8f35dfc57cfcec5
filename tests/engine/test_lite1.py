"""The second real model, efficientnet_lite1: offline from its package, 240 px, the same
normalization as lite0, and it classifies a real photo sensibly."""

from __future__ import annotations

import pytest
import torch
from photos import photo

from worker.engine.classify import fit, predict
from worker.engine.images import decode_image
from worker.engine.models import Registry

pytestmark = pytest.mark.slow
CATS = {"tabby", "tiger cat", "Egyptian cat"}


def test_lite1_is_listed_240_px_and_normalized_like_lite0() -> None:
    reg = Registry()
    assert "efficientnet_lite1" in [m.name for m in reg.available()]
    lite0, lite1 = reg.info("efficientnet_lite0"), reg.info("efficientnet_lite1")
    assert lite1.input_size == 240 and lite1.resize_to == 272
    assert (lite1.mean, lite1.std, lite1.zero) == (lite0.mean, lite0.std, lite0.zero)
    assert lite1.labels == lite0.labels and lite1.num_classes == 1000


def test_lite1_loads_offline_and_sees_the_cat() -> None:
    model = Registry().load("efficientnet_lite1")
    with torch.no_grad():
        assert model(torch.full((1, 3, 240, 240), 127.0)).shape == (1, 1000)
    x = fit(decode_image(photo("chelsea.png"))[None], model.info)
    assert x.shape == (1, 3, 240, 240)
    probs = predict(model, x)[0]
    top5 = [model.info.labels[int(i)] for i in probs.topk(5).indices]
    assert top5[0] in CATS, top5
    assert float(probs.topk(5).values.sum()) > 0.5


def test_lite1_on_the_command_line(tmp_path: object) -> None:
    from pathlib import Path

    from worker.cli import main

    out = Path(str(tmp_path)) / "cls"
    image = out.parent / "chelsea.png"
    image.write_bytes(photo("chelsea.png"))
    assert main(["classify", "--image", str(image), "--model", "efficientnet_lite1",
                 "--device", "cpu", "--out", str(out)]) == 0  # fmt: skip
    import json

    result = json.loads((out / "result.json").read_text())
    preds = result["images"][0]["predictions"]["efficientnet_lite1"]
    assert preds[0]["label"] in CATS, preds
