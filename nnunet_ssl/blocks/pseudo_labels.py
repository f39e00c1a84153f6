"""Pseudo-labels from a prediction: hard, confident, with ignored voxels, and their cross-entropy."""
from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

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
    component (full connectivity, as scikit-image's and nnU-Net's post-processing default; components tied for the
    largest are all kept, as acvl-utils' ``remove_all_but_largest_component``); the other voxels of that label
    become background. ``labels``: (B, 1, ...) label map, or (B, R, ...) bool regions. Runs on the CPU, one
    ``scipy.ndimage.label`` call for the whole batch (components connect along the spatial axes only)."""
    array = labels.detach().cpu().numpy()
    regions = array.dtype == bool
    values = None if regions else np.unique(array[array != 0])
    masks = array if regions else array[:, 0][:, None] == values.reshape(1, -1, *([1] * (array.ndim - 2)))
    kept = _largest_per_sample_and_channel(masks)
    if not regions:
        kept = (kept * values.reshape(1, -1, *([1] * (array.ndim - 2)))).sum(1, keepdims=True).astype(array.dtype)
    return torch.from_numpy(kept).to(labels.device)


def _largest_per_sample_and_channel(masks: np.ndarray) -> np.ndarray:
    """``masks`` (B, C, ...) bool -> the largest connected component of each (sample, channel)."""
    if masks.size == 0 or not masks.any():
        return np.zeros_like(masks, dtype=bool)
    spatial = masks.ndim - 2
    structure = np.zeros((3, 3) + (3,) * spatial, dtype=bool)
    structure[1, 1] = True  # full connectivity within an image, none across samples or channels
    components, count = ndimage.label(masks, structure)
    sizes = np.bincount(components.ravel())
    image_index = np.arange(masks.shape[0] * masks.shape[1]).reshape(masks.shape[:2] + (1,) * spatial)
    owner = np.zeros(count + 1, dtype=np.int64)
    owner[components.ravel()] = np.broadcast_to(image_index, masks.shape).ravel()
    largest = np.zeros(masks.shape[0] * masks.shape[1], dtype=sizes.dtype)
    np.maximum.at(largest, owner[1:], sizes[1:])
    keep = sizes == largest[owner]
    keep[0] = False
    return keep[components]


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
