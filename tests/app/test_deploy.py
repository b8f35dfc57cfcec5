"""What can be checked of the production setup without a Docker engine, and the README's form."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from app.commands import WEBHOOK_ARGS, WORKER_ARGS, api_args

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_compose_parses_and_has_the_services() -> None:
    services = compose()["services"]
    assert {"redis", "api", "worker", "flower"} <= set(services)
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert redis["healthcheck"]["test"][-1] == "ping"
    assert services["api"]["build"]["dockerfile"] == "Dockerfile.api"
    assert services["worker"]["build"]["dockerfile"] == "Dockerfile.gpu"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert services["flower"]["profiles"] == ["flower"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_commands_are_the_embedded_commands() -> None:
    services = compose()["services"]
    assert services["worker"]["command"] == ["python", "-m", *WORKER_ARGS]
    assert services["api"]["command"] == ["python", "-m", *api_args("0.0.0.0", 8000, 2)]
    assert services["webhooks"]["command"] == ["python", "-m", *WEBHOOK_ARGS]
    assert services["webhooks"]["build"]["dockerfile"] == "Dockerfile.api"  # no torch
    # and the images' default commands are the same
    for dockerfile, cmd in (("Dockerfile.api", services["api"]["command"]),
                            ("Dockerfile.gpu", services["worker"]["command"])):  # fmt: skip
        text = (ROOT / dockerfile).read_text()
        last = [ln for ln in text.splitlines() if ln.startswith("CMD ")][-1]
        assert yaml.safe_load(last[4:]) == cmd


def test_api_extra_has_no_torch_and_images_install_from_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    api = project["optional-dependencies"]["api"] + project["dependencies"]
    names = [re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0].lower() for d in api]
    assert not {"torch", "torchvision"} & set(names), names
    assert "torch" in " ".join(project["optional-dependencies"]["worker"])
    assert 'pip install ".[api]"' in (ROOT / "Dockerfile.api").read_text()
    assert 'pip install ".[worker]"' in (ROOT / "Dockerfile.gpu").read_text()
    assert "FROM pytorch/pytorch" in (ROOT / "Dockerfile.gpu").read_text()
    assert "weights='DEFAULT'" in (ROOT / "Dockerfile.gpu").read_text()


def test_app_imports_no_torch_or_worker() -> None:
    for path in (ROOT / "app").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(torch|torchvision|worker)\b", text, re.M), path


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```[a-z]*\n(.*?)```", text, re.S)
    assert block is not None
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


def test_readme_opens_with_serve_then_test_command() -> None:
    text = (ROOT / "README.md").read_text()
    first_block_at = text.index("```")
    assert "\n## " not in text[:first_block_at]  # the block comes before any section
    assert readme_commands() == ["scripts/serve.sh", "scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and "sed -n 2p" in ci


def test_compose_runs_minio_and_points_api_and_workers_at_the_bucket() -> None:
    from core.artifacts import S3Store, open_store

    data = compose()
    services = data["services"]
    assert services["minio"]["image"].startswith("minio/minio")
    env = data["x-tivis-env"]
    store = open_store(env["TIVIS_ARTIFACTS_URL"].split(":-", 1)[-1].rstrip("}"))
    assert isinstance(store, S3Store) and store.bucket == "tivis"
    assert "minio:9000" in env["TIVIS_S3_ENDPOINT_URL"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["minio"]["condition"] == "service_healthy"
        assert services[name]["environment"]["TIVIS_ARTIFACTS_URL"] == env["TIVIS_ARTIFACTS_URL"]
