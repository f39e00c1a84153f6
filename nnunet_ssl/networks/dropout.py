"""Monte Carlo dropout for nnU-Net's U-Nets, which nnU-Net's plans build without any dropout.

Placement: channel dropout (``Dropout2d`` / ``Dropout3d``) on the last decoder feature map, right before the
full-resolution segmentation head. That is the decoder dropout of UA-MT's V-Net (``Dropout3d(p=0.5)`` before its
output convolution), the usual source of MC-dropout uncertainty in semi-supervised medical segmentation. The
lower-resolution deep-supervision heads do not see it.

The dropout is attached to the head by a forward pre-hook and has no parameters, so the U-Net keeps nnU-Net's
modules, forward and state-dict keys: a supervised nnU-Net checkpoint initialises it (``-pretrained_weights``) and
its weights load into a plain nnU-Net U-Net. It acts in training mode only: nnU-Net's validation and predictor run
the network in eval mode, without dropout.

Being the network's only stochastic layer, it makes Monte Carlo sampling cheap and exact: T stochastic forward
passes are T dropout masks on one head input. The hook keeps the head input of the last training forward
(:func:`take_head_input`) and :func:`head_dropout_samples` draws further samples from it with the head alone (a
1x1 convolution, applied with masked weights), which gives what re-running the whole network would.
"""
from typing import Iterator

import torch
from torch import nn

_CHANNEL_DROPOUT = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}


class HeadInputDropout(nn.Module):
    """Dropout on a segmentation head's input; with ``keep_input`` it remembers the last input it was given (see
    :func:`take_head_input`)."""

    def __init__(self, spatial_dims: int, rate: float, keep_input: bool = True):
        super().__init__()
        self.dropout = _CHANNEL_DROPOUT[spatial_dims](p=rate)
        self.keep_input = keep_input
        self.head_input = None

    # an inductor-compiled forward (nnU-Net compiles on CUDA) left head_input unset, so this layer runs eagerly
    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keep_input:
            self.head_input = x
        return self.dropout(x)


def _drop_head_input(head: nn.Module, args):
    if head.training:
        return (head.mc_dropout(args[0]),)
    return None


def full_resolution_head(unet: nn.Module) -> nn.Module:
    """The 1x1 convolution that produces the full-resolution logits of nnU-Net's ``UNetDecoder``."""
    return unet.decoder.seg_layers[-1]


def add_head_dropout(unet: nn.Module, rate: float, keep_input: bool = True) -> nn.Module:
    """Puts channel dropout with probability ``rate`` on the input of the U-Net's full-resolution head; returns
    the U-Net (same object). ``keep_input=False`` for Monte Carlo sampling by whole forward passes, which needs no
    :func:`take_head_input` (the head input is then not held until the next forward)."""
    head = full_resolution_head(unet)
    head.mc_dropout = HeadInputDropout(head.weight.ndim - 2, rate, keep_input)
    head.register_forward_pre_hook(_drop_head_input)
    return unet


def take_head_input(unet: nn.Module) -> torch.Tensor:
    """The full-resolution head's input in the last training-mode forward, detached. It is forgotten afterwards
    so the module does not hold on to a full-resolution feature map."""
    dropout = full_resolution_head(unet).mc_dropout
    head_input, dropout.head_input = dropout.head_input, None
    if head_input is None:
        raise RuntimeError("no training-mode forward of this U-Net since the last take_head_input()")
    return head_input.detach()


@torch.no_grad()
def head_dropout_samples(unet: nn.Module, head_input: torch.Tensor, samples: int,
                         chunk_size: int) -> Iterator[torch.Tensor]:
    """Logits of ``samples`` Monte Carlo dropout samples from one head input, without gradient, ``chunk_size``
    samples per call (bounds the memory); each chunk has shape ``(B, k, C_out, ...)``. The U-Net must be in training
    mode (dropout on).

    The head is a 1x1 convolution and the dropout scales whole input channels (by 0 or ``1/(1-p)``), so sample s of
    batch element b has the logits ``(W diag(m_sb)) x_b + bias``: the head's weights with their input columns scaled
    by the mask, applied to the one head input as a batched matrix product. That gives the numbers of the head on
    k masked copies of its input without writing those full-resolution copies. The masks are the dropout module's
    own output on ones of shape ``(k * B, C_in, 1, ...)``, sample-major: the same random draws as the dropout of the
    input repeated k times along the batch."""
    head = full_resolution_head(unet)
    if not head.training:
        raise RuntimeError("Monte Carlo dropout samples need the network in training mode (dropout is off in eval)")
    batch, channels, spatial = head_input.shape[0], head_input.shape[1], head_input.shape[2:]
    features = head_input.flatten(2)  # (B, C_in, voxels)
    weight = head.weight.flatten(1)  # (C_out, C_in)
    for start in range(0, samples, chunk_size):
        k = min(chunk_size, samples - start)
        masks = head.mc_dropout.dropout(head_input.new_ones((k * batch, channels) + (1,) * len(spatial)))
        # (k, B, C_in) -> (B, k, 1, C_in) x (C_out, C_in) -> (B, k * C_out, C_in)
        weights = (masks.view(k, batch, 1, channels).transpose(0, 1) * weight).flatten(1, 2).to(features.dtype)
        if head.bias is None:
            logits = torch.bmm(weights, features)
        else:
            logits = torch.baddbmm(head.bias.to(features.dtype).repeat(k)[:, None], weights, features)
        yield logits.view(batch, k, -1, *spatial)
