"""Loss pieces shared by several methods: small functions of tensors, each testable alone."""
import math

import torch


def sigmoid_rampup(progress: float, length: float) -> float:
    """The field's sigmoid ramp-up (Laine & Aila 2017, as in UA-MT / SSL4MIS): ``exp(-5 (1 - t)^2)`` with
    ``t = clip(progress / length, 0, 1)``; 1 once ``progress >= length`` and also for ``length == 0``."""
    if length <= 0:
        return 1.0
    t = min(max(progress / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def probabilities(logits: torch.Tensor, regions: bool, channel_dim: int = 1) -> torch.Tensor:
    """Per-voxel class probabilities in float32: softmax over the channels (dimension ``channel_dim``), or sigmoid
    per region channel."""
    logits = logits.float()
    return torch.sigmoid(logits) if regions else torch.softmax(logits, dim=channel_dim)


def softmax_mse(logits_a: torch.Tensor, logits_b: torch.Tensor, regions: bool = False) -> torch.Tensor:
    """Mean squared difference of two predictions' probabilities over all voxels and channels."""
    return torch.mean((probabilities(logits_a, regions) - probabilities(logits_b, regions)) ** 2)


def full_resolution(output):
    """The full-resolution logits of a network output (index 0 of a deep-supervision list)."""
    return output[0] if isinstance(output, (list, tuple)) else output


def batch_part(output, part: slice):
    """The samples ``part`` of a network output, for a deep-supervision list as for a single tensor."""
    return [o[part] for o in output] if isinstance(output, (list, tuple)) else output[part]
