"""Covariate shift: the images of some clients are rotated (seed 001)."""

from __future__ import annotations

import numpy as np


def rotate_images(images: np.ndarray, degrees: int) -> np.ndarray:
    """Rotate (N, H, W, C) images counter-clockwise; multiples of 90 are exact."""
    if degrees % 90 == 0:
        return np.rot90(images, k=(degrees // 90) % 4, axes=(1, 2)).copy()
    import torch  # noqa: PLC0415 - start-up cost: torch, only on this path
    from torchvision.transforms.v2 import functional as TF  # noqa: PLC0415 - start-up cost: torchvision, only on this path

    t = torch.from_numpy(images).permute(0, 3, 1, 2)
    return TF.rotate(t, float(degrees)).permute(0, 2, 3, 1).contiguous().numpy()
