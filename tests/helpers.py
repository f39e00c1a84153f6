"""Helpers shared by the test modules: tiny plans, configurations and U-Nets built by nnU-Net's own factory, a
trainer stub on nnU-Net's real loss, and small tensors with known values."""
import math
from types import SimpleNamespace
from typing import Optional, Sequence

import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_ssl.blocks.mixing import CutMix

LN2, LN3 = math.log(2), math.log(3)
UNET_CLASSES = {"plain": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "residual": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"}
#: three stages with 4, 8, 16 features and one conv each: the smallest U-Net with nnU-Net's deep supervision
TINY_ARCHITECTURE = {"features_per_stage": [4, 8, 16], "n_conv_per_stage": [1, 1, 1],
                     "n_conv_per_stage_decoder": [1, 1]}


def two_voxels(a, b):
    """Logits of two voxels (B=1, C, 2, 1) from per-voxel channel lists."""
    return torch.tensor([a, b], dtype=torch.float).T.reshape(1, -1, 2, 1)


def shrink_plans(plans: dict, configuration: str = "2d") -> dict:
    """``plans`` with ``configuration``'s U-Net cut down to :data:`TINY_ARCHITECTURE` (in place; returned)."""
    plans["configurations"][configuration]["architecture"]["arch_kwargs"].update(TINY_ARCHITECTURE)
    return plans


def tiny_configuration(dim: int = 2, architecture: str = "plain", strides: Optional[Sequence] = None,
                       kernel_sizes: Optional[Sequence] = None, convs_per_stage=(1, 1, 1)) -> ConfigurationManager:
    """A plans configuration of a 3-stage nnU-Net U-Net (``'plain'`` or ``'residual'``), 4, 8, 16 features;
    default strides 1, 2, 2 and kernels 3 on every axis."""
    blocks = "n_conv_per_stage" if architecture == "plain" else "n_blocks_per_stage"
    kwargs = {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": f"torch.nn.Conv{dim}d",
              "kernel_sizes": kernel_sizes or [[3] * dim] * 3, "strides": strides or [[1] * dim, [2] * dim, [2] * dim],
              blocks: list(convs_per_stage), "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
              "norm_op": f"torch.nn.InstanceNorm{dim}d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
              "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
              "nonlin_kwargs": {"inplace": True}}
    return ConfigurationManager({"architecture": {"network_class_name": UNET_CLASSES[architecture],
                                                  "arch_kwargs": kwargs,
                                                  "_kw_requires_import": ["conv_op", "norm_op", "dropout_op",
                                                                          "nonlin"]}})


def tiny_unet(dim: int = 2, architecture: str = "plain", classes: int = 3, deep_supervision: bool = True):
    """A freshly initialised U-Net of :func:`tiny_configuration`, as nnU-Net builds it from plans (1 channel)."""
    return nnUNetTrainer.build_network_architecture(None, tiny_configuration(dim, architecture), 1, classes,
                                                    deep_supervision)


def nnunet_loss(regions: bool = False, batch_dice: bool = True, weights: Sequence[float] = (2 / 3, 1 / 3)):
    """nnU-Net's supervised loss as ``nnUNetTrainer._build_loss`` makes it (Dice+CE, or Dice+BCE for regions), in
    its deep-supervision wrapper with ``weights`` (nnU-Net's for three outputs, without the lowest)."""
    dice = {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": regions, "ddp": False}
    if regions:
        loss = DC_and_BCE_loss({}, dice, use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)
    else:
        loss = DC_and_CE_loss(dice, {}, weight_ce=1, weight_dice=1, ignore_label=None,
                              dice_class=MemoryEfficientSoftDiceLoss)
    return DeepSupervisionWrapper(loss, list(weights))


def trainer_stub(cls, network: torch.nn.Module, regions: bool = False, classes: int = 3, epoch: int = 0,
                 num_epochs: int = 2, iterations: int = 2, loss=None, **attributes):
    """An instance of trainer class ``cls`` (or of a subclass with ``attributes`` as class attributes) holding only
    what its training step needs, without plans or data: ``network``, nnU-Net's loss (:func:`nnunet_loss` unless
    given), an SGD optimizer, a label manager with ``classes`` heads, on the CPU, at ``epoch`` of ``num_epochs``."""
    if attributes:
        cls = type(cls.__name__, (cls,), attributes)
    trainer = object.__new__(cls)
    trainer.__dict__.update(
        network=network, loss=loss if loss is not None else nnunet_loss(regions), device=torch.device("cpu"),
        grad_scaler=None, optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        label_manager=SimpleNamespace(has_regions=regions, ignore_label=None, num_segmentation_heads=classes,
                                      foreground_labels=list(range(1, classes))),
        configuration_manager=SimpleNamespace(use_mask_for_norm=[False], batch_dice=True),
        current_epoch=epoch, num_epochs=num_epochs, step_in_epoch=0, num_iterations_per_epoch=iterations)
    return trainer


def assert_gradients_reach(network: torch.nn.Module) -> None:
    """Every parameter of ``network`` got a gradient from the backward pass, non-zero except where nnU-Net's
    initialisation makes it zero at the start: the residual branch of a ResidualEncoderUNet block ends in a norm
    whose weight starts at 0, so the convolutions before it get zero gradients in the first step."""
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None, f"{name}: no gradient"
        residual_branch = ".blocks." in name and (".conv1." in name or ".conv2.conv." in name)
        assert residual_branch or parameter.grad.abs().sum() > 0, f"{name}: zero gradient"


class Recording(torch.nn.Module):
    """Wraps a network and remembers its last call: ``inputs`` (positional), ``input`` (the first) and
    ``outputs``."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, *inputs, **kwargs):
        self.inputs, self.input = inputs, inputs[0]
        self.outputs = self.network(*inputs, **kwargs)
        return self.outputs


def step_inputs(dim: int = 2, classes: int = 3, labeled: int = 2, unlabeled: int = 3, size: int = 8):
    """A seeded step's ``(data, target, data_unlabeled)`` for the tiny U-Nets: ``labeled`` images with labels as
    nnU-Net's deep-supervision target (full and half resolution) and ``unlabeled`` images, ``size`` voxels a side."""
    generator = torch.Generator().manual_seed(1)
    spatial = (size,) * dim
    seg = torch.randint(0, classes, (labeled, 1, *spatial), generator=generator).float()
    half = seg[(slice(None), slice(None)) + (slice(None, None, 2),) * dim]
    return (torch.randn((labeled, 1, *spatial), generator=generator), [seg, half],
            torch.randn((unlabeled, 1, *spatial), generator=generator))


class FixedBoxes(CutMix):
    """A CutMix setting whose boxes the test knows: the first half of every patch along its second spatial axis (or
    none)."""
    def __init__(self, empty=False):
        super().__init__(probability=1.0, volume=(0.25, 0.5))
        object.__setattr__(self, "empty", empty)

    def boxes_for(self, batch):
        boxes = torch.zeros((batch.shape[0], 1, *batch.shape[2:]), dtype=torch.bool, device=batch.device)
        if not self.empty:
            boxes[:, :, :, : batch.shape[3] // 2] = True
        return boxes
