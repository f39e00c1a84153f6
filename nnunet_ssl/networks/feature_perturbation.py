"""Feature perturbation at every resolution of an nnU-Net U-Net, without new parameters.

nnU-Net's ``UNetDecoder`` takes the encoder's list of skips (full resolution first, bottleneck last), so running
it a second time on perturbed skips gives a prediction "from perturbed multi-level features" with the decoder's own
weights. The perturbations are the feature perturbations of CCT (Ouali et al., CVPR 2020) as SSL4MIS runs them on
every encoder level of its U-Net: channel dropout and multiplicative uniform noise. They act only in training mode.
"""
from typing import Sequence

import torch
from torch import nn

from nnunet_ssl.networks.containers import TwoNetworks


class ChannelDropout(nn.Module):
    """Zeroes whole feature channels of each sample with probability ``p`` and rescales the rest by ``1/(1-p)``
    (``Dropout2d``/``Dropout3d`` for any dimensionality). Identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"channel dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.rand(x.shape[:2] + (1,) * (x.ndim - 2), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class UniformFeatureNoise(nn.Module):
    """``x + x * u`` with ``u ~ U(-r, r)`` per element (CCT's feature noise). Identity in eval mode."""

    def __init__(self, r: float):
        super().__init__()
        self.r = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x + x * (torch.rand_like(x) * 2 - 1) * self.r


def decode_with_perturbed_features(unet: nn.Module, x: torch.Tensor, n_perturbed: int,
                                   perturbations: Sequence[nn.Module]):
    """``(output, perturbed)``: ``unet``'s output for ``x``, and the output decoded from the perturbed skips (every
    resolution, bottleneck included) of the last ``n_perturbed`` samples of ``x``, one part per perturbation in
    batch order ``[perturbation 1 of the tail, perturbation 2 of the tail, ...]`` (None without perturbed samples).
    Outputs are what the decoder returns (a deep-supervision list or a tensor).

    One encoder pass over ``x``, one decoder pass over ``x`` and one over the perturbed skips: the skips of ``x``
    are decoded as they are, not copied into a batch with the perturbed ones. Per sample this is the decoder pass
    over ``[x, perturbed tails]`` of one batch (exact for nnU-Net's per-sample InstanceNorm)."""
    skips = unet.encoder(x)
    output = unet.decoder(skips)
    if not (n_perturbed and perturbations):
        return output, None
    perturbed = []
    for skip in skips:
        tail = skip[-n_perturbed:]
        parts = [perturb(tail) for perturb in perturbations]
        perturbed.append(torch.cat(parts) if len(parts) > 1 else parts[0])
    return output, unet.decoder(perturbed)


class UNetWithFeaturePerturbation(nn.Module):
    """nnU-Net's U-Net (PlainConvUNet, ResidualEncoderUNet: ``decoder(encoder(x))``) whose training forward also
    decodes perturbed features: ``forward(x, n_perturbed)`` returns the pair ``(output, perturbed)`` of
    :func:`decode_with_perturbed_features`. Eval mode and ``n_perturbed=0`` return the U-Net's output. It holds
    the U-Net's ``encoder`` and ``decoder`` under those names and the perturbations have no parameters, so its
    state dict is the plain U-Net's: nnU-Net's checkpoints and ``-pretrained_weights`` work unchanged."""

    def __init__(self, unet: nn.Module, perturbations: Sequence[nn.Module]):
        super().__init__()
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        self.perturbations = nn.ModuleList(perturbations)

    def forward(self, x, n_perturbed: int = 0):
        if not self.training or not n_perturbed:
            return self.decoder(self.encoder(x))
        return decode_with_perturbed_features(self, x, n_perturbed, self.perturbations)


class TwoNetworksWithFeaturePerturbation(TwoNetworks):
    """Two U-Nets (see :class:`TwoNetworks`) whose training forward also decodes perturbed features:
    ``forward(x, n_perturbed)`` returns, per network, the pair ``(output, perturbed)`` of
    :func:`decode_with_perturbed_features`. Eval mode and ``n_perturbed=0`` behave exactly as :class:`TwoNetworks`.
    The perturbations hold no parameters, so the state dict (``net1.*``, ``net2.*``) and ``pretrainable_unets()`` are those of :class:`TwoNetworks`."""

    def __init__(self, net1: nn.Module, net2: nn.Module, perturbations: Sequence[nn.Module],
                 inference: str = "first", pretrained: str = "first"):
        super().__init__(net1, net2, inference, pretrained)
        self.perturbations = nn.ModuleList(perturbations)

    def forward(self, x, n_perturbed: int = 0):
        if not self.training or not n_perturbed:
            return super().forward(x)
        return tuple(decode_with_perturbed_features(net, x, n_perturbed, self.perturbations)
                     for net in (self.net1, self.net2))
