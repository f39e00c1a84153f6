"""Boxes for CutMix and copy-paste, and mixing images, labels and region targets with them."""
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch


def random_boxes(side_fractions: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """One axis-aligned box per sample, ``round(fraction * size)`` voxels along every axis at a uniformly random
    position, as a bool mask (N, 1, *spatial_shape). A fraction of 0 gives an empty box."""
    n, device = side_fractions.shape[0], side_fractions.device
    boxes = None
    for axis, size in enumerate(spatial_shape):
        side = torch.round(side_fractions * size).long()
        start = (torch.rand(n, device=device) * (size - side + 1)).long()
        coordinates = torch.arange(size, device=device)
        inside = (coordinates >= start[:, None]) & (coordinates < (start + side)[:, None])
        shape = [n, 1] + [1] * len(spatial_shape)
        shape[axis + 2] = size
        # the product of the per-axis intervals, broadcast: one full-size mask, written once
        boxes = inside.view(shape) if boxes is None else boxes & inside.view(shape)
    return boxes


def cutmix_boxes(n: int, spatial_shape: Sequence[int], probability: float, volume_range: Tuple[float, float],
                 device: torch.device) -> torch.Tensor:
    """Per sample, with ``probability``, a box covering a uniformly drawn fraction ``volume_range`` of the patch
    (equal relative side on every axis); otherwise an empty box."""
    volume = torch.empty(n, device=device).uniform_(*volume_range)
    applied = torch.rand(n, device=device) < probability
    return random_boxes(volume ** (1 / len(spatial_shape)) * applied, spatial_shape)


@dataclass(frozen=True)
class CutMix:
    """UniMatch's CutMix of a batch with itself, as one setting: per sample, with ``probability``, a box covering a
    uniformly drawn fraction ``volume`` of the patch (UniMatch: p 0.5, 2-40 % of the area)."""
    probability: float = 0.5
    volume: Tuple[float, float] = (0.02, 0.4)

    def boxes_for(self, batch: torch.Tensor) -> torch.Tensor:
        """One box per patch of ``batch`` (N, C, *spatial), drawn anew."""
        return cutmix_boxes(batch.shape[0], batch.shape[2:], self.probability, self.volume, batch.device)


def paste(content: torch.Tensor, background: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``content`` inside the boxes, ``background`` outside (images, labels and region targets alike)."""
    return torch.where(boxes, content, background)


def with_partner(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """CutMix within the batch: sample i takes the box content of sample i - 1."""
    return paste(x.roll(1, 0), x, boxes)


def mixed_with_partners(cutmix: Optional[CutMix], batch: torch.Tensor
                        ) -> Tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """``batch`` CutMix-ed with its batch neighbours (:func:`with_partner`, fresh boxes), and the map that mixes a
    voxel-wise prediction on the unmixed batch alike (a teacher's target for the mixed patches); without a CutMix
    setting, ``batch`` itself and the identity."""
    if cutmix is None:
        return batch, lambda prediction: prediction
    boxes = cutmix.boxes_for(batch)
    return with_partner(batch, boxes), lambda prediction: with_partner(prediction, boxes)
