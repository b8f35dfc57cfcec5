"""Registered model formats: each loads through the registry from the model store and computes
what the original network computes; nothing is unpickled beyond weights; a program exported for
a fixed batch runs on any batch; the torch-free file checks refuse what they should."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import modelfiles as mf
import pytest
import torch

from core import modelstore
from specs.models import FILE_NAMES, ModelMetadata
from worker.engine.formats import ModelFileError, load_network
from worker.engine.models import ModelNotFound, Registry
from worker.jobs.base import JobContext
from worker.jobs.models import ModelInvalid, check_model, run_validate_model


def put(store: Path, ref: str, fmt: str, make, **meta: object) -> str:  # type: ignore[no-untyped-def]
    """Write a version folder by hand (what the API does); returns the file's sha256."""
    d = store / ref
    d.mkdir(parents=True)
    path = make(d / FILE_NAMES[fmt])  # type: ignore[index]
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    name, version = ref.split("@")
    metadata = ModelMetadata(**mf.metadata(name, **meta))  # type: ignore[arg-type]
    entry = {"name": name, "version": int(version), "ref": ref, "format": fmt,
             "file": FILE_NAMES[fmt], "sha256": sha, "size": path.stat().st_size,
             "metadata": metadata.model_dump(mode="json")}  # fmt: skip
    (d / "meta.json").write_text(json.dumps(entry))
    return sha


@pytest.mark.parametrize(
    "fmt,make,meta",
    [
        ("export", mf.export_program, {}),
        ("torchscript", mf.torchscript, {}),
        ("state_dict", mf.state_dict, {"architecture": "squeezenet1_1"}),
        ("safetensors", mf.safetensors_file, {"architecture": "squeezenet1_1"}),
    ],
)
def test_each_format_validates_and_then_is_listed(
    tmp_path: Path, fmt: str, make: object, meta: dict[str, object]
) -> None:
    from specs.models import ValidateModelSpec

    sha = put(tmp_path, "net@1", fmt, make, **meta)
    reg = Registry(store_dir=tmp_path)
    assert "net" not in reg.names()  # pending: not listed, not runnable by name
    with pytest.raises(ModelNotFound):
        reg.info("net")
    spec = ValidateModelSpec(ref="net@1", format=fmt, sha256=sha, size=1)  # type: ignore[arg-type]
    out = run_validate_model(spec, JobContext(reg, device="cpu"))
    assert out.result["outputs"] == 10 and out.result["step_seconds"] > 0
    assert {"net", "net@1"} <= set(reg.names())
    model = reg.load("net")
    assert model.info.version == "net@1" and model.info.sha256 == sha
    assert model.info.zero == (127.5, 127.5, 127.5)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    assert model(x).shape == (3, 10)
    assert reg.provenance("net") == {"version": "net@1", "sha256": sha}
    catalog = modelstore.registered_catalog(tmp_path)
    assert catalog["net"]["info"]["version"] == "net@1" and len(catalog["net@1"]["labels"]) == 10


def test_state_dict_matches_the_torchvision_network(tmp_path: Path) -> None:
    import torchvision

    path = mf.state_dict(tmp_path / "m.pth", classes=5)
    net = load_network(path, "state_dict", architecture="squeezenet1_1", num_classes=5).eval()
    ref = torchvision.models.squeezenet1_1(weights=None, num_classes=5).eval()
    ref.load_state_dict(mf.torchvision_state(5))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x))


def test_pickled_objects_are_never_unpickled(tmp_path: Path) -> None:
    marker = Path("/tmp/tivis-pwned")
    marker.unlink(missing_ok=True)
    path = mf.pickle_payload(tmp_path / "e.pth")
    with pytest.raises(ModelFileError, match="weights-only"):
        load_network(path, "state_dict", architecture="squeezenet1_1", num_classes=10)
    with pytest.raises(modelstore.FileRejected, match=r"posix\.system|os\.system"):
        modelstore.check_file(path, "state_dict", path.stat().st_size)
    assert not marker.exists()


def test_wrong_architecture_and_unknown_architecture_name_the_cause(tmp_path: Path) -> None:
    path = mf.state_dict(tmp_path / "m.pth")
    with pytest.raises(ModelFileError, match="does not fit torchvision resnet18"):
        load_network(path, "state_dict", architecture="resnet18", num_classes=10)
    with pytest.raises(ModelFileError, match="closest: resnet18"):
        load_network(path, "state_dict", architecture="resnet81", num_classes=10)


def test_program_exported_for_one_image_runs_any_batch(tmp_path: Path) -> None:
    from torch.export import export

    net = mf.tiny_net()
    path = tmp_path / "one.pt2"
    torch.export.save(export(net, (torch.zeros(1, 3, 64, 64),)), str(path))
    loaded = load_network(path, "export")
    x = torch.rand(5, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)


def test_checks_name_output_size_and_nan(tmp_path: Path) -> None:
    put(tmp_path, "seven@1", "torchscript", lambda p: mf.torchscript(p, mf.tiny_net(7)))
    put(tmp_path, "nan@1", "torchscript", mf.nan_model)
    reg = Registry(store_dir=tmp_path)
    with pytest.raises(ModelInvalid, match="gives 7 logits per image but the metadata lists 10"):
        check_model(reg.load("seven@1", pending=True))
    with pytest.raises(ModelInvalid, match="not finite"):
        check_model(reg.load("nan@1", pending=True))


def test_failed_validation_removes_the_version(tmp_path: Path) -> None:
    from specs.models import ValidateModelSpec

    sha = put(tmp_path, "nan@1", "torchscript", mf.nan_model)
    reg = Registry(store_dir=tmp_path)
    with pytest.raises(ModelInvalid, match="not finite"):
        run_validate_model(
            ValidateModelSpec(ref="nan@1", format="torchscript", sha256=sha, size=1),
            JobContext(reg, device="cpu"),
        )
    assert not (tmp_path / "nan@1").exists() and modelstore.versions(tmp_path) == []


def test_file_checks_without_torch(tmp_path: Path) -> None:
    pt2 = mf.export_program(tmp_path / "m.pt2")
    pt = mf.torchscript(tmp_path / "m.pt")
    pth = mf.state_dict(tmp_path / "m.pth")
    st = mf.safetensors_file(tmp_path / "m.safetensors")
    for path, fmt in ((pt2, "export"), (pt, "torchscript"), (pth, "state_dict"),
                      (st, "safetensors")):  # fmt: skip
        modelstore.check_file(path, fmt, path.stat().st_size)
    with pytest.raises(modelstore.FileRejected, match=r"torch\.export program"):
        modelstore.check_file(pth, "export", pth.stat().st_size)
    with pytest.raises(modelstore.FileRejected, match="TorchScript"):
        modelstore.check_file(pth, "torchscript", pth.stat().st_size)
    with pytest.raises(modelstore.FileRejected, match=r"one data\.pkl"):
        modelstore.check_file(pt2, "state_dict", pt2.stat().st_size)
    with pytest.raises(modelstore.FileRejected, match="zip"):
        modelstore.check_file(st, "state_dict", st.stat().st_size)
    with pytest.raises(modelstore.FileRejected, match="safetensors"):
        modelstore.check_file(pth, "safetensors", pth.stat().st_size)


def test_metadata_schema() -> None:
    from pydantic import ValidationError

    ok = ModelMetadata(**mf.metadata("net"))  # type: ignore[arg-type]
    assert ok.pixel_mean == (127.5, 127.5, 127.5) and ok.num_classes == 10
    assert ModelMetadata(name="n", input_size=32, labels="imagenet").num_classes == 1000
    for bad in (
        {"name": "Net"}, {"name": "a@1"}, {"std": [0, 1, 1]}, {"labels": []},
        {"labels": ["a", "a"]}, {"mean": [1, 2, 3], "zero": [3, 2, 1]},
        {"resize_to": 32}, {"input_size": 8}, {"mean": [float("nan"), 0, 0]},
    ):  # fmt: skip
        with pytest.raises(ValidationError):
            ModelMetadata(**{**mf.metadata("net"), **bad})
