"""The nnU-Net internals that pseudo-label training relies on, in one place. ``tests/test_pseudo_label.py``
(``test_nnunet_internals_*``) checks each assumption against the installed nnU-Net, so that a change there fails
loudly instead of silently training on ignored voxels.

* An ignore label is declared as ``labels['ignore']`` in dataset.json and must be the highest label value
  (``LabelManager`` asserts it). With it nnU-Net's trainer builds ``DC_and_CE_loss(ignore_label=...)`` (cross-entropy
  ``ignore_index`` and a Dice loss mask) or, for regions, ``DC_and_BCE_loss(use_ignore_label=True)`` whose mask is
  the last target channel, which nnU-Net's transforms append when given the ignore label.
* ``nnUNetDataLoader`` with an ignore label (``has_ignore``) centres its random patches on annotated voxels,
  ``class_locations[(-1, *all_labels)]``, which only datasets preprocessed with an ignore label have. Setting
  ``has_ignore`` to False restores nnU-Net's plain random patches (foreground oversampling is unchanged).
* Foreground locations for oversampling are sampled by ``DefaultPreprocessor._sample_foreground_locations``.
"""
import numpy as np
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager


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
