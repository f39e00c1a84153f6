"""Network building blocks for SSL trainers, made from the U-Nets nnU-Net builds from its plans.

Every container follows one contract so that nnU-Net's predictor, validation and checkpointing work unchanged:

* in training mode ``forward`` returns what the method needs (one output per network or decoder);
* in eval mode ``forward`` returns one logits tensor (or nnU-Net's deep-supervision list while DS is on);
* ``pretrainable_unets()`` names the plain nnU-Net U-Nets inside that a supervised nnU-Net checkpoint
  initialises (``nnUNetv2_train ... -pretrained_weights``).
"""
import copy
from typing import List

import torch
from torch import nn

from nnunet_ssl.blocks.ema import ema_update

#: what a container predicts with in eval mode: its first network / decoder / the student (the U-Net a plain
#: nnU-Net checkpoint corresponds to), the second (network 2, decoder 2, the teacher), or the mean of both logits
INFERENCE_CHOICES = ("first", "second", "mean")
#: which of two co-trained U-Nets ``-pretrained_weights`` initialises: network 1 only, or both
PRETRAINED_NETWORKS = ("first", "all")


def _check_inference(inference: str) -> str:
    if inference not in INFERENCE_CHOICES:
        raise ValueError(f"inference must be one of {INFERENCE_CHOICES}, got {inference!r}")
    return inference


def mean_of_outputs(a, b):
    """Mean of two logits outputs, also for deep-supervision lists."""
    if isinstance(a, (list, tuple)):
        return [(x + y) / 2 for x, y in zip(a, b)]
    return (a + b) / 2


def clone_decoder(unet: nn.Module) -> nn.Module:
    """A second decoder of the same configuration as ``unet.decoder``, on the same encoder, freshly initialised."""
    encoder = unet.decoder.encoder
    unet.decoder.encoder = None  # keep deepcopy from copying the shared encoder
    try:
        decoder2 = copy.deepcopy(unet.decoder)
    finally:
        unet.decoder.encoder = encoder
    decoder2.encoder = encoder
    decoder2.apply(type(unet).initialize)
    return decoder2


class TwoNetworks(nn.Module):
    """Two complete U-Nets of the same architecture with independent initialisation (co-training, mutual
    learning). Training: ``(out1, out2)``; eval: network 1, network 2 with ``inference='second'``, or the mean of
    both logits with ``inference='mean'``.

    ``pretrained='first'``: a supervised checkpoint initialises network 1 only, and network 2 keeps its own random
    initialisation, the difference co-training and mutual learning rely on (nnU-Net's loader skips only the
    segmentation heads, so loading it into both would start them nearly identical). ``'all'`` loads both."""

    def __init__(self, net1: nn.Module, net2: nn.Module, inference: str = "first", pretrained: str = "first"):
        super().__init__()
        if pretrained not in PRETRAINED_NETWORKS:
            raise ValueError(f"pretrained must be one of {PRETRAINED_NETWORKS}, got {pretrained!r}")
        self.net1 = net1
        self.net2 = net2
        self.inference = _check_inference(inference)
        self.pretrained = pretrained

    def forward(self, x):
        if self.training:
            return self.net1(x), self.net2(x)
        if self.inference == "mean":
            return mean_of_outputs(self.net1(x), self.net2(x))
        return (self.net2 if self.inference == "second" else self.net1)(x)

    def pretrainable_unets(self) -> List[nn.Module]:
        return [self.net1, self.net2] if self.pretrained == "all" else [self.net1]


class SharedEncoderTwoDecoders(nn.Module):
    """One encoder, two decoders. ``unet`` is nnU-Net's U-Net (encoder + decoder 1, key names as in a plain
    nnU-Net checkpoint under ``unet.``); ``decoder2`` reads the same skips. Training: ``(out1, out2)``; eval:
    decoder 1, decoder 2 with ``inference='second'``, or the mean of both with ``inference='mean'``. A supervised
    checkpoint initialises the U-Net (encoder and decoder 1); decoder 2 keeps its own initialisation."""

    def __init__(self, unet: nn.Module, decoder2: nn.Module = None, inference: str = "first"):
        super().__init__()
        self.unet = unet
        self.decoder2 = decoder2 if decoder2 is not None else clone_decoder(unet)
        self.inference = _check_inference(inference)

    def forward(self, x):
        skips = self.unet.encoder(x)
        if self.training:
            return self.unet.decoder(skips), self.decoder2(skips)
        if self.inference == "mean":
            return mean_of_outputs(self.unet.decoder(skips), self.decoder2(skips))
        return (self.decoder2 if self.inference == "second" else self.unet.decoder)(skips)

    def pretrainable_unets(self) -> List[nn.Module]:
        return [self.unet]


class StudentTeacher(nn.Module):
    """A student U-Net and its exponential-moving-average teacher (mean teacher). The teacher takes no gradient
    and is updated by :meth:`update_teacher`. Training: ``forward(x, teacher_input)`` returns
    ``(student(x), teacher(teacher_input))``, with None for a part whose input is None (``forward(None, t)`` runs
    the teacher alone, e.g. for extra Monte Carlo passes); eval: the student (``inference='first'``), the teacher
    (``'second'``) or the mean of both logits (``'mean'``). A supervised checkpoint initialises both, so the
    teacher, an average of the student, starts equal to it."""

    def __init__(self, student: nn.Module, inference: str = "first"):
        super().__init__()
        self.student = student
        self.teacher = copy.deepcopy(student).requires_grad_(False)
        self.inference = _check_inference(inference)

    def forward(self, x, teacher_input=None):
        if not self.training:
            if self.inference == "mean":
                return mean_of_outputs(self.student(x), self.teacher(x))
            return (self.teacher if self.inference == "second" else self.student)(x)
        teacher_out = None
        if teacher_input is not None:
            # the teacher first, so that the student's backward follows its forward with nothing in between that
            # pushes its saved activations out of the CPU caches (Mean Teacher, 2d: 0.305 -> 0.273 s per step;
            # BCP unchanged; benchmarks/RESULTS.md)
            with torch.no_grad():
                teacher_out = self.teacher(teacher_input)
        return (None if x is None else self.student(x)), teacher_out

    def update_teacher(self, decay: float) -> None:
        """teacher = decay * teacher + (1 - decay) * student (:func:`~nnunet_ssl.blocks.ema.ema_update`)."""
        ema_update(self.teacher, self.student, decay)

    def pretrainable_unets(self) -> List[nn.Module]:
        return [self.student, self.teacher]
