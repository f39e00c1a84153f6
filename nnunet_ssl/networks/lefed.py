"""LeFeD's network (Zeng et al. 2023; code maxwell0027/LeFeD ``networks/my_net.py``) on nnU-Net's plans-built U-Net.

One encoder, two *differentiated* decoders, and a feedback input to the encoder:

* the encoder and decoder 1 are nnU-Net's own modules (PlainConvUNet or ResidualEncoderUNet, 2D or 3D), run by
  :func:`encode_with_feedback` and :func:`decode_with_features` over their own parameters, so the state-dict keys
  are those of a plain nnU-Net U-Net under ``unet.``; decoder 1 upsamples with nnU-Net's transposed convolutions;
* decoder 2 (:class:`GatedInterpolationDecoder`) upsamples by interpolation + conv + norm + nonlinearity, and gates
  its inputs with decoder 1's features (detached).

Stage features use the encoder's indexing (``k = 0`` full resolution ... ``n - 1`` bottleneck), as in the released
code (upsampled features *before* skip fusion):

* decoder 1: ``f1[k]`` (k < n-1) is the transposed-conv output concatenated with skip ``k``; ``f1[n-1]`` is the
  bottleneck ``b``;
* decoder 2: ``f2[k]`` is its interpolation+conv output concatenated with the gated skip ``k * sigmoid(f1[k])``;
  ``f2[n-1]`` is its gated bottleneck ``b + b * sigmoid(b)``.

The feedback for the next pass, ``e[k] = alpha (f2[k] - f1[k])`` (detached, :func:`feature_discrepancy`), is added
to the output of encoder stage ``k`` at every stage, before that output is passed on and used as a skip. The
bottleneck term is therefore ``alpha * b * sigmoid(b)``, as in the released code. Every ``f1[k]`` has the channels
and resolution of skip ``k``, so this works for any number of stages and anisotropic strides.
"""
import copy
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn

from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.networks.containers import SharedEncoderTwoDecoders, mean_of_outputs


def encode_with_feedback(encoder: nn.Module, x: torch.Tensor,
                         feedback: Optional[Sequence[torch.Tensor]] = None) -> List[torch.Tensor]:
    """The skips of nnU-Net's encoder (PlainConvEncoder or ResidualEncoder, stem included), with ``feedback[k]``
    added to the output of stage ``k`` before the next stage reads it. ``None`` = the encoder's own forward."""
    if feedback is not None and len(feedback) != len(encoder.stages):
        raise ValueError(f"feedback needs one tensor per encoder stage ({len(encoder.stages)}), got {len(feedback)}")
    if getattr(encoder, "stem", None) is not None:
        x = encoder.stem(x)
    skips = []
    for k, stage in enumerate(encoder.stages):
        x = stage(x)
        if feedback is not None:
            x = x + feedback[k]
        skips.append(x)
    return skips


def _decode(decoder: nn.Module, bottleneck: torch.Tensor, skips: Sequence[torch.Tensor], upsample):
    """nnU-Net's decoder loop (upsample, concatenate the skip, conv stage, segmentation heads) with a pluggable
    ``upsample(s, x)``. Returns nnU-Net's output (a DS list, highest resolution first, or one tensor) and the
    upsampled features indexed like the skips."""
    x = bottleneck
    seg_outputs, upsampled = [], []
    last = len(decoder.stages) - 1
    for s, stage in enumerate(decoder.stages):
        up = upsample(s, x)
        upsampled.append(up)
        x = stage(torch.cat((up, skips[-(s + 1)]), 1))
        if decoder.deep_supervision or s == last:
            seg_outputs.append(decoder.seg_layers[s](x))
    seg_outputs = seg_outputs[::-1]
    return (seg_outputs if decoder.deep_supervision else seg_outputs[0]), upsampled[::-1]


def decode_with_features(decoder: UNetDecoder, skips: Sequence[torch.Tensor]):
    """nnU-Net's ``UNetDecoder`` forward (same output), also returning its stage features ``f1`` (see module)."""
    output, upsampled = _decode(decoder, skips[-1], skips[:-1], lambda s, x: decoder.transpconvs[s](x))
    return output, upsampled + [skips[-1]]


class GatedInterpolationDecoder(nn.Module):
    """LeFeD's decoder 2 for an nnU-Net U-Net: interpolation (align_corners=True, as the released code) + conv +
    norm + nonlinearity instead of transposed convolutions; the same conv stages and deep-supervision heads as
    nnU-Net's decoder (freshly initialised); skip ``k`` replaced by ``skip * sigmoid(f1[k])`` and the bottleneck by
    ``b + b * sigmoid(b)``, the gates detached."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        encoder, decoder1 = unet.encoder, unet.decoder
        self.deep_supervision = decoder1.deep_supervision
        self.stages = copy.deepcopy(decoder1.stages)
        self.seg_layers = copy.deepcopy(decoder1.seg_layers)
        channels = encoder.output_channels
        self.upsamples = nn.ModuleList(
            ConvDropoutNormReLU(encoder.conv_op, channels[-(s + 1)], channels[-(s + 2)], encoder.kernel_sizes[-(s + 2)],
                                1, encoder.conv_bias, encoder.norm_op, encoder.norm_op_kwargs, encoder.dropout_op,
                                encoder.dropout_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs)
            for s in range(len(self.stages)))
        self.interpolation = {2: "bilinear", 3: "trilinear"}[convert_conv_op_to_dim(encoder.conv_op)]
        self.apply(type(unet).initialize)

    def _upsample(self, s: int, x: torch.Tensor, size) -> torch.Tensor:
        return self.upsamples[s](F.interpolate(x, size=size, mode=self.interpolation, align_corners=True))

    def forward(self, skips: Sequence[torch.Tensor], features1: Sequence[torch.Tensor]):
        """Returns ``(output, f2)``; ``features1`` are decoder 1's stage features (only their sigmoid is used,
        detached)."""
        gates = [torch.sigmoid(f.detach()) for f in features1]
        bottleneck = skips[-1] + skips[-1] * gates[-1]
        gated_skips = [skip * gate for skip, gate in zip(skips[:-1], gates[:-1])]
        output, upsampled = _decode(self, bottleneck, gated_skips,
                                    lambda s, x: self._upsample(s, x, gated_skips[-(s + 1)].shape[2:]))
        return output, upsampled + [bottleneck]


@torch.no_grad()
def feature_discrepancy(features1: Sequence[torch.Tensor], features2: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``f2[k] - f1[k]`` per encoder stage, detached, in float32: LeFeD's feedback before its scale ``alpha``."""
    return [f2.float() - f1.float() for f1, f2 in zip(features1, features2)]


class LeFeDNetwork(SharedEncoderTwoDecoders):
    """nnU-Net's U-Net (``unet``: encoder + decoder 1) plus decoder 2 and the encoder feedback input.

    ``forward(x, feedback=None)``: in training mode ``(out1, out2, f1, f2)`` (outputs as nnU-Net's decoder gives
    them, stage features as in the module docstring); in eval mode decoder 1's output (= the plain U-Net when no
    feedback is given), decoder 2's with ``inference='second'``, or the mean of both decoders' logits with
    ``inference='mean'``."""

    def __init__(self, unet: nn.Module, inference: str = "first"):
        if type(unet.encoder) not in (PlainConvEncoder, ResidualEncoder) or type(unet.decoder) is not UNetDecoder:
            raise SSLConfigError(
                f"LeFeD needs a U-Net with nnU-Net's PlainConvEncoder or ResidualEncoder and UNetDecoder (plans "
                f"architectures PlainConvUNet, ResidualEncoderUNet); got {type(unet).__name__} with "
                f"{type(unet.encoder).__name__} and {type(unet.decoder).__name__}")
        super().__init__(unet, GatedInterpolationDecoder(unet), inference)

    def forward(self, x, feedback: Optional[Sequence[torch.Tensor]] = None):
        skips = encode_with_feedback(self.unet.encoder, x, feedback)
        if not self.training and self.inference == "first":
            return self.unet.decoder(skips)
        out1, features1 = decode_with_features(self.unet.decoder, skips)
        out2, features2 = self.decoder2(skips, features1)
        if self.training:
            return out1, out2, features1, features2
        return out2 if self.inference == "second" else mean_of_outputs(out1, out2)
