"""Write ``worker/engine/data/natural_spectrum.npy``: the mean magnitude spectrum of photographs.

    python scripts/natural_spectrum.py

The ``maco`` image parameterization (``worker/engine/param.py``) keeps the magnitude of each
color channel's spectrum fixed to this one and optimizes only the phase (Fel et al. 2023). The
photographs are the color ones that scikit-image ships in its wheel (no download): astronaut,
chelsea, coffee, rocket and the left motorcycle of ``stereo_motorcycle``. From each, squares
(the center one and the four corner ones, three quarters of the shorter side; both mirror
images) are resized to ``SIZE`` px, mapped to 0..1, centered, moved into the decorrelated color
space of ``param.COLOR_MATRIX``, weighted by a Hann window and transformed (``rfft2``,
orthonormal); the stored array is
the mean magnitude, float16, shape (3, SIZE, SIZE // 2 + 1), ``rfft2``'s frequency order.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.engine.param import COLOR_MATRIX, SPECTRUM_FILE  # noqa: E402

SIZE = 256


def photos() -> list[np.ndarray]:
    from skimage import data

    motorcycle = data.stereo_motorcycle()[0]
    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), motorcycle]


def squares(img: np.ndarray) -> list[torch.Tensor]:
    """Five squares (center, corners) of 3/4 the shorter side, and their mirror images."""
    x = torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1).double() / 255.0
    h, w = x.shape[-2:]
    s = int(0.75 * min(h, w))
    tops = [(h - s) // 2, 0, 0, h - s, h - s]
    lefts = [(w - s) // 2, 0, w - s, 0, w - s]
    out = []
    for t, left in zip(tops, lefts, strict=True):
        sq = x[:, t : t + s, left : left + s][None]
        sq = F.interpolate(sq, size=(SIZE, SIZE), mode="bilinear", antialias=True)[0]
        out += [sq, torch.flip(sq, dims=(2,))]
    return out


def main() -> None:
    inv = torch.linalg.inv(COLOR_MATRIX)
    total = torch.zeros(3, SIZE, SIZE // 2 + 1, dtype=torch.float64)
    # a Hann window: a photo's edges are not periodic, and without it their jumps would put
    # strong vertical and horizontal lines into the spectrum (and grid patterns into pictures)
    hann = torch.hann_window(SIZE, periodic=True, dtype=torch.float64)
    window = (hann[:, None] * hann[None, :]) / (hann * hann).mean()
    n = 0
    for img in photos():
        for sq in squares(img):
            c = torch.einsum("ij,jhw->ihw", inv, sq - sq.mean(dim=(1, 2), keepdim=True))
            total += torch.fft.rfft2(c * window, norm="ortho").abs()
            n += 1
    mag = (total / n).numpy().astype(np.float16)
    SPECTRUM_FILE.parent.mkdir(parents=True, exist_ok=True)
    np.save(SPECTRUM_FILE, mag)
    print(f"{SPECTRUM_FILE}: {mag.shape}, from {n} squares")


if __name__ == "__main__":
    main()
