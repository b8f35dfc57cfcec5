"""Images in pixel space: float tensors (B, 3, H, W) with values 0..255, RGB."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def check_images(x: torch.Tensor, name: str = "images") -> None:
    """Raise ``ValueError`` unless ``x`` is a float tensor (B, 3, H, W)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected {name} of shape (B, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected floating {name} in pixel space 0..255, got {x.dtype}")


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; from the CPU to a GPU pinned and non-blocking, so the host goes on
    without waiting for the copy."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def flat_gray(
    levels: list[int] | torch.Tensor,
    size: int | tuple[int, int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Flat gray images, one per level: (B, 3, H, W) filled with ``levels[b]``."""
    h, w = (size, size) if isinstance(size, int) else size
    lv = torch.as_tensor(levels, dtype=dtype, device=device).reshape(-1, 1, 1, 1)
    return lv.expand(-1, 3, h, w).clone()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Quantize pixel-space floats to 8 bits: round half to even, then clip to 0..255."""
    return torch.round(x).clamp_(0, 255).to(torch.uint8)


def invert(x: torch.Tensor) -> torch.Tensor:
    """The color inversion ``255 - P`` (paper equation 4)."""
    return 255 - x


_PNG_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def encode_png(x: torch.Tensor) -> bytes:
    """One image (3, H, W) in pixel space, or uint8, as 8-bit RGB PNG bytes (deterministic).

    (1, H, W) gives a grayscale PNG and (4, H, W) an RGBA one (the fourth channel is alpha).
    """
    if x.ndim != 3 or x.shape[0] not in _PNG_MODES:
        raise ValueError(f"expected one image of shape (3, H, W), got {tuple(x.shape)}")
    u8 = x if x.dtype == torch.uint8 else to_uint8(x)
    arr = u8.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    mode = _PNG_MODES[int(x.shape[0])]
    if mode == "L":
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_image(data: bytes) -> torch.Tensor:
    """Decode PNG/JPEG/WebP bytes to a float image (3, H, W) in pixel space 0..255."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode == "I" or im.mode.startswith("I;16"):
            # 16-bit grayscale (PNG): Pillow's convert("RGB") clips at 255 instead of scaling
            wide = torch.from_numpy(np.asarray(im).astype(np.float64))
            gray = torch.round(wide / 257.0).clamp_(0.0, 255.0).float()
            return gray[None].repeat(3, 1, 1)
        rgb = im.convert("RGB")
        t = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        return t.reshape(rgb.height, rgb.width, 3).permute(2, 0, 1).float()
