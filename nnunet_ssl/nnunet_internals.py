"""The nnU-Net internals that nnunet-ssl relies on, in one place. ``tests/test_pseudo_label.py``
(``test_nnunet_internals_*``) checks each assumption against the installed nnU-Net, so that a change there fails
loudly instead of silently training on ignored voxels.

Ignore labels and patch sampling (self-training):

* An ignore label is declared as ``labels['ignore']`` in dataset.json and must be the highest label value
  (``LabelManager`` asserts it). With it nnU-Net's trainer builds ``DC_and_CE_loss(ignore_label=...)`` (cross-entropy
  ``ignore_index`` and a Dice loss mask) or, for regions, ``DC_and_BCE_loss(use_ignore_label=True)`` whose mask is
  the last target channel, which nnU-Net's transforms append when given the ignore label.
* ``nnUNetDataLoader`` with an ignore label (``has_ignore``) centres its random patches on annotated voxels,
  ``class_locations[(-1, *all_labels)]``, which only datasets preprocessed with an ignore label have. Setting
  ``has_ignore`` to False restores nnU-Net's plain random patches (foreground oversampling is unchanged).
* Foreground locations for oversampling are sampled by ``DefaultPreprocessor._sample_foreground_locations``.

nnU-Net's losses, as building blocks of SSL losses:

* :func:`masked_segmentation_loss` builds ``DC_and_CE_loss`` / ``DC_and_BCE_loss`` with the arguments
  ``nnUNetTrainer._build_loss`` gives them (smooth 1e-5, ``do_bg`` False for softmax and True for regions,
  ``MemoryEfficientSoftDiceLoss``), with an ignore label.
* :func:`uncertainty_supervised_loss` reads ``DeepSupervisionWrapper.loss`` / ``.weight_factors`` and the compound
  loss's ``weight_ce``.
"""
import numpy as np
import torch
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ssl.blocks.outputs import full_resolution
from nnunet_ssl.blocks.uncertainty import uncertainty_weighted_ce


def label_manager_with_ignore(plans_manager: PlansManager, dataset_json: dict) -> LabelManager:
    """The dataset's label manager, with an ignore label (the highest label + 1) if the dataset has none."""
    if "ignore" in dataset_json["labels"]:
        return plans_manager.get_label_manager(dataset_json)
    highest = max(plans_manager.get_label_manager(dataset_json).all_labels)
    return plans_manager.get_label_manager({**dataset_json, "labels": {**dataset_json["labels"],
                                                                       "ignore": int(highest) + 1}})


def sample_without_ignore(loader: nnUNetDataLoader) -> nnUNetDataLoader:
    """nnU-Net's random patch sampling for ``loader`` even though its label manager has an ignore label."""
    loader.has_ignore = False
    return loader


def foreground_locations(segmentation: np.ndarray, label_manager: LabelManager) -> dict:
    """``class_locations`` of a (1, x, y, z) segmentation, as nnU-Net's preprocessing stores them."""
    classes = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    return DefaultPreprocessor._sample_foreground_locations(segmentation, classes)


# ---- nnU-Net's losses -------------------------------------------------------------------------------------------
def masked_segmentation_loss(regions: bool, batch_dice: bool, ignore_label: int):
    """nnU-Net's Dice+CE (Dice+BCE for regions) configured as nnU-Net configures it, ignoring the voxels marked
    as in :func:`nnunet_ssl.blocks.pseudo_labels.with_ignored`. Under DDP its batch Dice covers this GPU's patches
    only: nnU-Net's all-gather of the Dice sums needs the same batch on every GPU, which an uneven split of the
    unlabeled batch does not give."""
    if regions:
        return DC_and_BCE_loss({}, {"batch_dice": batch_dice, "do_bg": True, "smooth": 1e-5, "ddp": False},
                               use_ignore_label=True, dice_class=MemoryEfficientSoftDiceLoss)
    return DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          ignore_label=ignore_label, dice_class=MemoryEfficientSoftDiceLoss)


def uncertainty_supervised_loss(nnunet_loss, output, target, uncertainty: torch.Tensor, gain: float, regions: bool,
                                ignore_label=None) -> torch.Tensor:
    """nnU-Net's supervised loss (Dice+CE or Dice+BCE, with or without its deep-supervision wrapper) with the voxel
    weight of the full-resolution cross-entropy raised from 1 to ``1 + gain * u``. It is nnU-Net's loss plus the
    ``gain * u``-weighted cross-entropy, scaled by the weight nnU-Net gives its full-resolution CE."""
    deep_supervision = isinstance(nnunet_loss, DeepSupervisionWrapper)
    compound = nnunet_loss.loss if deep_supervision else nnunet_loss
    ce_weight = (nnunet_loss.weight_factors[0] if deep_supervision else 1.0) * compound.weight_ce
    extra = uncertainty_weighted_ce(full_resolution(output), full_resolution(target), gain * uncertainty, regions,
                                    ignore_label)
    return nnunet_loss(output, target) + ce_weight * extra
