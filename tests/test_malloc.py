"""``worker.malloc.tune``: glibc takes both settings once per process, and a worker's pool process
applies them unless ``TIVIS_TUNE_MALLOC`` is off. Each case runs in a fresh interpreter, since
a process cannot go back to glibc's defaults."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or "glibc" not in " ".join(platform.libc_ver()),
    reason="glibc only",
)


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@glibc
def test_glibc_takes_the_settings_once_per_process() -> None:
    code = "from worker import malloc\nprint(malloc.tune(), malloc.tune())"
    assert _run(code) == "True True"


def test_the_setting_is_on_by_default_and_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core.settings import Settings

    assert Settings().tune_malloc is True
    monkeypatch.setenv("TIVIS_TUNE_MALLOC", "false")
    assert Settings().tune_malloc is False


STEPS = """
import resource, sys, torch
import torch.nn.functional as F
if sys.argv[1] == "tuned":
    from worker import malloc
    assert malloc.tune()
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
w1, w2 = torch.randn(96, 16, 1, 1, generator=g), torch.randn(96, 1, 3, 3, generator=g)
def step():  # lite0's second block in small: 12 MiB maps, an asymmetric pad, a backward pass
    x = torch.randn(4, 16, 88, 88, generator=g).requires_grad_()
    y = F.conv2d(x, w1).clamp(0, 6)
    y = F.conv2d(F.pad(y, (0, 1, 0, 1)), w2, stride=2, groups=96)
    torch.autograd.grad(y.square().mean(), x)
step(); step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


@glibc
def test_passes_reuse_warm_pages_instead_of_faulting_in_new_ones() -> None:
    # as glibc sets itself, the maps of every pass come from fresh mmaps: tens of thousands of
    # page faults on this machine (32,000 to 51,000 in 5 passes); tuned, the heap keeps them:
    # none, or one map's worth where the heap grows once more (0 to 6,000 seen)
    def faults(setting: str) -> int:
        out = subprocess.run([sys.executable, "-c", STEPS, setting], cwd=ROOT,
                             capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip())

    plain, tuned = faults("glibc"), faults("tuned")
    assert tuned * 4 < plain, (plain, tuned)
