"""Predictive uncertainty and losses weighted by it (UA-MT, UA-DCT)."""
import math
from typing import Optional

import torch

from nnunet_ssl.blocks.outputs import probabilities
from nnunet_ssl.blocks.pseudo_labels import voxel_cross_entropy


def normalized_entropy(mean_probabilities: torch.Tensor, regions: bool) -> torch.Tensor:
    """Per-voxel predictive entropy of Monte Carlo mean probabilities, normalised to [0, 1], shape (B, 1, ...).
    For softmax outputs it is ``H(mean) / log C`` over the C classes. For region (sigmoid) channels it is the mean
    over channels of the binary entropy divided by log 2. It is 0 for confident samples that agree and 1 for a
    uniform mean."""
    p = mean_probabilities.float()
    if regions:
        binary = -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)) / math.log(2)
        return binary.mean(1, keepdim=True).clamp(0, 1)
    return (-torch.special.xlogy(p, p).sum(1, keepdim=True) / math.log(p.shape[1])).clamp(0, 1)


def certainty_mask(mean_probabilities: torch.Tensor, threshold: float, regions: bool) -> torch.Tensor:
    """1.0 where :func:`normalized_entropy` is below ``threshold`` (a fraction of the largest entropy), else 0.0,
    shape (B, 1, ...)."""
    return (normalized_entropy(mean_probabilities, regions) < threshold).float()


def uncertainty_downweight(uncertainty: torch.Tensor, decay: float) -> torch.Tensor:
    """Consistency voxel weight ``exp(-decay * u)``: 1 where certain, ``exp(-decay)`` where u = 1."""
    return torch.exp(-decay * uncertainty)


def uncertainty_weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, regions: bool,
                            ignore_label: Optional[int] = None) -> torch.Tensor:
    """Mean of ``weight * cross-entropy`` over the labeled voxels. ``target`` is nnU-Net's: label map (B, 1, ...)
    for softmax, one-hot regions for sigmoid, with the ignore flag as last channel when the dataset has an ignore
    label."""
    if ignore_label is None:
        labels, labeled = (target if regions else target[:, 0]), torch.ones_like(target[:, :1], dtype=torch.float)
    elif regions:
        labels, labeled = target[:, :-1], 1 - target[:, -1:].float()
    else:
        labels, labeled = torch.where(target != ignore_label, target, 0)[:, 0], (target != ignore_label).float()
    ce = voxel_cross_entropy(logits, labels, regions)
    return (weight * ce * labeled).sum() / labeled.sum().clamp_min(1)


def probability_mse(logits: torch.Tensor, target_probabilities: torch.Tensor, weight: torch.Tensor,
                    regions: bool) -> torch.Tensor:
    """Mean over voxels of ``weight *`` the channel mean of ``(probabilities(logits) - target)^2``."""
    squared = (probabilities(logits, regions) - target_probabilities.float()) ** 2
    return (weight * squared.mean(1, keepdim=True)).mean()
