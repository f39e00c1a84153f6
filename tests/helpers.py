"""Helpers shared by the test modules: small tensors with known values."""
import math

import torch

LN2, LN3 = math.log(2), math.log(3)


def two_voxels(a, b):
    """Logits of two voxels (B=1, C, 2, 1) from per-voxel channel lists."""
    return torch.tensor([a, b], dtype=torch.float).T.reshape(1, -1, 2, 1)
