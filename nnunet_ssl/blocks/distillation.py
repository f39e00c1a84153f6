"""Mutual distillation between two networks' temperature-softened predictions (DMD)."""
import torch

from nnunet_ssl.blocks.outputs import probabilities


def temperature_probabilities(logits: torch.Tensor, temperature: float, regions: bool) -> torch.Tensor:
    """The softened predictions ``softmax(z / T)`` (``sigmoid(z / T)`` per region channel), in float32."""
    return probabilities(logits.float() / temperature, regions)


def soft_dice_loss(p: torch.Tensor, q: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """``1 - (2 sum pq + s) / (sum p^2 + sum q^2 + s)`` per channel, with sums over the batch and all voxels
    (one Dice over the whole batch, as in DMD's released code), averaged over channels. Symmetric in p and q, and
    exactly 0 for p == q."""
    axes = (0, *range(2, p.ndim))
    intersection = (p * q).sum(axes)
    denominator = (p * p).sum(axes) + (q * q).sum(axes)
    return 1 - ((2 * intersection + smooth) / (denominator + smooth)).mean()


def dice_distillation(logits1: torch.Tensor, logits2: torch.Tensor, temperature: float, regions: bool,
                      include_background: bool = False, smooth: float = 1e-5) -> torch.Tensor:
    """DMD's mutual distillation: soft Dice between the two networks' temperature-softened predictions. Gradients
    reach both networks. Without ``include_background`` the softmax background channel is left out; region
    channels are all foreground."""
    p1 = temperature_probabilities(logits1, temperature, regions)
    p2 = temperature_probabilities(logits2, temperature, regions)
    if not regions and not include_background:
        p1, p2 = p1[:, 1:], p2[:, 1:]
    return soft_dice_loss(p1, p2, smooth)


def kl_distillation(logits1: torch.Tensor, logits2: torch.Tensor, temperature: float, regions: bool) -> torch.Tensor:
    """Two-way KL, ``KL(p1 || p2) + KL(p2 || p1)``, between ``p_i = softmax(z_i / T)``. The KL is summed over
    classes (for sigmoid outputs: over each region's two outcomes and over the regions), averaged over voxels and
    batch, with no T^2 factor and no detach.

    We write it as ``sum_c (p1_c - p2_c)(log p1_c - log p2_c)``. The log-normalisers cancel because
    ``sum_c (p1_c - p2_c) = 0``; for a Bernoulli, ``log p - log(1 - p)`` is the logit itself. Either way the sum
    reduces to ``sum_c (p1_c - p2_c)(z1_c - z2_c) / T``, which needs no logarithm."""
    z1, z2 = logits1.float() / temperature, logits2.float() / temperature
    p1, p2 = probabilities(z1, regions), probabilities(z2, regions)
    return ((p1 - p2) * (z1 - z2)).sum(1).mean()
