"""Consistency between two predictions of the same images (mean teacher, co-training, two decoders, UA-MT)."""
import torch

from nnunet_ssl.blocks.outputs import Output, full_resolution, probabilities


def softmax_mse(logits_a: torch.Tensor, logits_b: torch.Tensor, regions: bool = False) -> torch.Tensor:
    """Mean squared difference of two predictions' probabilities over all voxels and channels (softmax, or sigmoid
    per region channel). Neither side is detached: detach the target side to make it a teacher."""
    return torch.mean((probabilities(logits_a, regions) - probabilities(logits_b, regions)) ** 2)


def full_resolution_mse(output_a: Output, output_b: Output, regions: bool = False) -> torch.Tensor:
    """:func:`softmax_mse` of two network outputs at full resolution (the deep-supervision scales are left out)."""
    return softmax_mse(full_resolution(output_a), full_resolution(output_b), regions)


def masked_probability_mse(logits: torch.Tensor, target_probabilities: torch.Tensor, mask: torch.Tensor,
                           regions: bool = False) -> torch.Tensor:
    """The mean squared difference between the probabilities of ``logits`` (C channels) and a target over the voxels
    a mask (B, 1, ...) keeps, UA-MT's ``sum(mask * (p - target)^2) / (C * sum(mask) + 1e-16)``: the mean over the
    kept voxels and all channels, 0 for an empty mask. Gradient reaches ``logits`` only when the target is
    detached."""
    squared = (probabilities(logits, regions) - target_probabilities.float()) ** 2
    return (mask * squared).sum() / (squared.shape[1] * mask.sum() + 1e-16)
