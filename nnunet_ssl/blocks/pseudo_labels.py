"""Pseudo-labels from a prediction: hard, confident, with ignored voxels, and their cross-entropy."""
from typing import Tuple, Union

import numpy as np
import torch
from acvl_utils.morphology.morphology_helper import remove_all_but_largest_component
import torch.nn.functional as F

from nnunet_ssl.blocks.outputs import probabilities


def hard_pseudo_labels(target_probabilities: torch.Tensor, regions: bool) -> torch.Tensor:
    """Hard labels of probabilities (B, C, ...): the argmax class (B, ...), or ``p > 0.5`` per region channel
    (B, R, ...)."""
    return target_probabilities > 0.5 if regions else target_probabilities.argmax(1)


def confident_pseudo_labels(logits: torch.Tensor, threshold: float, regions: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels of a prediction and the voxels where they are confident, both without gradient.
    Labels: ``(argmax (B,1,...), max probability >= threshold)``; regions: ``(p > 0.5 per region, every region's
    max(p, 1 - p) >= threshold)``. The mask has shape (B, 1, ...)."""
    probs = probabilities(logits.detach(), regions)
    if regions:
        return probs > 0.5, (torch.maximum(probs, 1 - probs) >= threshold).all(1, keepdim=True)
    confidence, labels = probs.max(1, keepdim=True)
    return labels, confidence >= threshold


def with_ignored(labels: torch.Tensor, keep: torch.Tensor, regions: bool, ignore_label: int) -> torch.Tensor:
    """A target in nnU-Net's ignore-label format (see :func:`nnunet_ssl.nnunet_internals.masked_segmentation_loss`):
    labels with ``ignore_label`` where not ``keep``; regions with an appended last channel that is True where
    ignored."""
    if regions:
        return torch.cat((labels, ~keep), 1)
    return torch.where(keep, labels, ignore_label)


def also_ignored(target: torch.Tensor, ignore: torch.Tensor, regions: bool, ignore_label: int) -> torch.Tensor:
    """A target in the format of :func:`with_ignored` with the voxels of the bool mask ``ignore`` (B or 1, 1, ...)
    ignored as well."""
    if regions:
        return torch.cat((target[:, :-1], target[:, -1:].bool() | ignore), 1).to(target.dtype)
    return torch.where(ignore, torch.as_tensor(ignore_label, dtype=target.dtype, device=target.device), target)


def largest_components(labels: torch.Tensor) -> torch.Tensor:
    """Per sample and per label value (or per region channel of a bool target), only the largest connected
    component (full connectivity, as scikit-image's default); the other voxels of that label become background.
    ``labels``: (B, 1, ...) label map, or (B, R, ...) bool regions. Runs on the CPU (acvl-utils, as nnU-Net's
    post-processing)."""
    array = labels.detach().cpu().numpy()
    kept = np.zeros_like(array)
    for b in range(array.shape[0]):
        if array.dtype == bool:
            for r in range(array.shape[1]):
                kept[b, r] = remove_all_but_largest_component(array[b, r])
        else:
            for value in np.unique(array[b]):
                if value != 0:
                    kept[b][remove_all_but_largest_component(array[b] == value)] = value
    return torch.from_numpy(kept).to(labels.device)


def voxel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, regions: bool) -> torch.Tensor:
    """Cross-entropy per voxel, shape (B, 1, ...), float32. ``labels`` holds class indices (B, ...) for softmax,
    or 0/1 per region channel (B, R, ...); the binary cross-entropy is averaged over the region channels."""
    logits = logits.float()
    if regions:
        return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").mean(1, keepdim=True)
    return F.cross_entropy(logits, labels.long(), reduction="none").unsqueeze(1)


def pseudo_label_ce(logits: torch.Tensor, target_probabilities: torch.Tensor, weight: Union[torch.Tensor, float],
                    regions: bool) -> torch.Tensor:
    """Mean over voxels of ``weight * CE(logits, hard pseudo-label)``, the pseudo-label being
    :func:`hard_pseudo_labels` of ``target_probabilities`` (no gradient reaches the target)."""
    labels = hard_pseudo_labels(target_probabilities, regions)
    return (weight * voxel_cross_entropy(logits, labels, regions)).mean()
