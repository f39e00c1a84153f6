"""Every place where nnunet-ssl relies on nnU-Net internals (nnunetv2 2.8.1), in one module.

Public nnU-Net API (``nnUNetTrainer``'s documented hooks, ``nnUNetPredictor``, the planning functions) is used
directly; what goes beyond it (private attributes, copied or replaced nnU-Net code, settings nnU-Net assigns in its
``__init__``) is wrapped here, each function saying what it relies on. ``tests/test_nnunet_internals.py`` checks
every assumption against the installed nnU-Net (signatures, attributes, and a hash of the source of the functions
copied or replaced here), so that an nnU-Net upgrade fails loudly, naming the function to re-check, instead of
silently training differently.

Ignore labels (pseudo-label training):

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
* :func:`deep_supervision_like` reads ``DeepSupervisionWrapper.weight_factors``; :func:`as_masked_target` relies
  on nnU-Net's region targets carrying the ignore flag as their last channel when the dataset has an ignore label.
* :func:`uncertainty_supervised_loss` reads ``DeepSupervisionWrapper.loss`` / ``.weight_factors`` and the compound
  loss's ``weight_ce``.
"""
import importlib
import inspect
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

import nnunetv2.run.run_training as run_training
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.logging.nnunet_logger import LocalLogger
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ssl.blocks.outputs import full_resolution
from nnunet_ssl.blocks.uncertainty import uncertainty_weighted_ce
from nnunet_ssl.errors import SSLConfigError


# ---- trainer settings ---------------------------------------------------------------------------------------------
#: nnU-Net's training settings that ``nnUNetTrainer.__init__`` assigns on the instance, shadowing class attributes
NNUNET_INIT_SETTINGS = ("initial_lr", "weight_decay", "oversample_foreground_percent", "probabilistic_oversampling",
                        "num_iterations_per_epoch", "num_val_iterations_per_epoch", "num_epochs",
                        "enable_deep_supervision")


class ClassAttributeSettings:
    """Mixin, placed before ``nnUNetTrainer`` (or a subclass) among the bases, that makes nnU-Net's settings class
    attributes: a subclass setting one of :data:`NNUNET_INIT_SETTINGS` (``num_epochs = 100``) or
    ``save_every_epochs`` (nnU-Net's ``save_every``, epochs between checkpoint_latest saves) gets it applied right
    after nnU-Net's ``__init__``, which assigns them on the instance.

    Relies on ``nnUNetTrainer.__init__`` assigning those names and reading the parameter names of
    ``self.__init__`` (``inspect.signature``) to record its arguments for checkpoints, which is why this
    ``__init__`` keeps nnU-Net's parameters exactly."""

    #: epochs between checkpoint_latest saves; None keeps nnU-Net's 50
    save_every_epochs = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for name in NNUNET_INIT_SETTINGS:
            if hasattr(type(self), name):
                setattr(self, name, getattr(type(self), name))
        if self.save_every_epochs is not None:
            self.save_every = self.save_every_epochs


# ---- data loading -------------------------------------------------------------------------------------------------
def make_augmenters(dl_tr, dl_val, device: torch.device):
    """nnU-Net's worker pools around a training and a validation loader, started, exactly as the end of
    ``nnUNetTrainer.get_dataloaders`` makes them (copied: that method builds its own loaders inside)."""
    n_proc = get_allowed_n_proc_DA()
    if n_proc == 0:
        mt_train, mt_val = SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
    else:
        pin = device.type == "cuda"
        mt_train = NonDetMultiThreadedAugmenter(dl_tr, None, n_proc, max(6, n_proc // 2), None, pin, 0.002)
        mt_val = NonDetMultiThreadedAugmenter(dl_val, None, max(1, n_proc // 2), max(3, n_proc // 4), None,
                                              pin, 0.002)
    next(mt_train)
    next(mt_val)
    return mt_train, mt_val


def random_image_patch(loader: nnUNetDataLoader, key: str) -> torch.Tensor:
    """Case ``key``'s image cropped (zero-padded where needed) to a random box of the loader's patch size, as
    ``nnUNetDataLoader.generate_train_batch`` crops the image (copied, without segmentation and foreground
    oversampling); a 2d patch loses its z axis. Relies on the loader's private ``_data`` (the dataset, here one
    with ``load_image``), ``get_bbox`` and ``patch_size_was_2d``."""
    image = loader._data.load_image(key)
    bbox_lbs, bbox_ubs = loader.get_bbox(image.shape[1:], False, None)
    cropped = torch.from_numpy(crop_and_pad_nd(image, [[lo, hi] for lo, hi in zip(bbox_lbs, bbox_ubs)], 0))
    return cropped[:, 0] if loader.patch_size_was_2d else cropped


def sample_without_ignore(loader: nnUNetDataLoader) -> nnUNetDataLoader:
    """nnU-Net's random patch sampling for ``loader`` even though its label manager has an ignore label
    (``has_ignore``, set by ``nnUNetDataLoader.__init__``)."""
    loader.has_ignore = False
    return loader


# ---- labels -------------------------------------------------------------------------------------------------------
def label_manager_with_ignore(plans_manager: PlansManager, dataset_json: dict) -> LabelManager:
    """The dataset's label manager, with an ignore label (the highest label + 1) if the dataset has none."""
    if "ignore" in dataset_json["labels"]:
        return plans_manager.get_label_manager(dataset_json)
    highest = max(plans_manager.get_label_manager(dataset_json).all_labels)
    return plans_manager.get_label_manager({**dataset_json, "labels": {**dataset_json["labels"],
                                                                       "ignore": int(highest) + 1}})


def foreground_locations(segmentation: np.ndarray, label_manager: LabelManager) -> dict:
    """``class_locations`` of a (1, x, y, z) segmentation, as nnU-Net's preprocessing stores them (the private
    static ``DefaultPreprocessor._sample_foreground_locations``)."""
    classes = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    return DefaultPreprocessor._sample_foreground_locations(segmentation, classes)


# ---- nnU-Net's losses -------------------------------------------------------------------------------------------
def masked_segmentation_loss(regions: bool, batch_dice: bool, ignore_label: int, weight_ce: float = 1.0):
    """nnU-Net's Dice+CE (Dice+BCE for regions) configured as nnU-Net configures it, ignoring the voxels marked
    as in :func:`nnunet_ssl.blocks.pseudo_labels.with_ignored`; ``weight_ce=0`` leaves nnU-Net's soft Dice alone.
    Under DDP its batch Dice covers this GPU's patches only: nnU-Net's all-gather of the Dice sums needs the same
    batch on every GPU, which an uneven split of the unlabeled batch does not give."""
    if regions:
        return DC_and_BCE_loss({}, {"batch_dice": batch_dice, "do_bg": True, "smooth": 1e-5, "ddp": False},
                               weight_ce=weight_ce, use_ignore_label=True, dice_class=MemoryEfficientSoftDiceLoss)
    return DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=weight_ce, ignore_label=ignore_label, dice_class=MemoryEfficientSoftDiceLoss)


def deep_supervision_like(nnunet_loss, loss):
    """``loss`` with the deep supervision of ``nnunet_loss`` (the trainer's ``self.loss``): wrapped in nnU-Net's
    ``DeepSupervisionWrapper`` with the same scale weights, or unchanged when deep supervision is off."""
    if isinstance(nnunet_loss, DeepSupervisionWrapper):
        return DeepSupervisionWrapper(loss, nnunet_loss.weight_factors)
    return loss


def pseudo_label_ignore_value(label_manager: LabelManager) -> int:
    """The label value that marks ignored voxels in masked-loss targets: the dataset's ignore label, or the first
    value that is no class."""
    if label_manager.ignore_label is not None:
        return label_manager.ignore_label
    return label_manager.num_segmentation_heads


def as_masked_target(target: torch.Tensor, label_manager: LabelManager) -> torch.Tensor:
    """nnU-Net's training target in the format of :func:`masked_segmentation_loss`: label maps as they are (with
    the dataset's ignore label, if any); region targets get the trailing ignore channel when they lack one."""
    if label_manager.has_regions and label_manager.ignore_label is None:
        return torch.cat((target, torch.zeros_like(target[:, :1])), 1)
    return target


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


# ---- logging ------------------------------------------------------------------------------------------------------
def nnunet_log_keys() -> Tuple[str, ...]:
    """The lists nnU-Net's ``LocalLogger`` keeps (``my_fantastic_logging``), which its progress.png draws."""
    return tuple(LocalLogger().my_fantastic_logging)


def replace_local_logger(trainer, factory: Callable[[LocalLogger], LocalLogger]) -> None:
    """Replace the ``LocalLogger`` inside the trainer's ``MetaLogger`` (``trainer.logger.local_logger``, the one
    that holds the per-epoch lists, is checkpointed and draws progress.png) by ``factory(current one)``."""
    trainer.logger.local_logger = factory(trainer.logger.local_logger)


# ---- pretrained weights -------------------------------------------------------------------------------------------
def install_pretrained_loader(load: Callable) -> None:
    """Make ``nnUNetv2_train -pretrained_weights`` call ``load(network, fname, verbose=...)``: nnU-Net's
    ``run_training.maybe_load_checkpoint`` calls the module-level name ``load_pretrained_weights`` of
    ``nnunetv2.run.run_training``, which this replaces (idempotent)."""
    run_training.load_pretrained_weights = load


# ---- planning -----------------------------------------------------------------------------------------------------
def planner_default_plans_name(planner_class) -> str:
    """The plans identifier an experiment planner writes unless told otherwise: the default of the ``plans_name``
    parameter of its ``__init__``, the only place nnU-Net states it."""
    return inspect.signature(planner_class.__init__).parameters["plans_name"].default


# ---- functions called with nnU-Net 2.8.1's parameters -------------------------------------------------------------
#: nnU-Net 2.8.1 functions nnunet_ssl_plan_and_preprocess calls, with their parameters (checked at its start by
#: :func:`check_signatures`)
PLAN_AND_PREPROCESS_FUNCTIONS = {
    "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor.DatasetFingerprintExtractor."
    "analyze_case": ["image_files", "segmentation_file", "reader_writer_class", "num_samples"],
    "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor.DatasetFingerprintExtractor."
    "__init__": ["self", "dataset_name_or_id", "num_processes", "verbose"],
    "nnunetv2.preprocessing.cropping.cropping.crop_to_nonzero": ["data", "seg", "nonzero_label"],
    "nnunetv2.imageio.reader_writer_registry.determine_reader_writer_from_dataset_json":
        ["dataset_json_content", "example_file", "allow_nonmatching_filename", "verbose"],
    "nnunetv2.experiment_planning.plan_and_preprocess_api.plan_experiments":
        ["dataset_ids", "experiment_planner_class_name", "gpu_memory_target_in_gb", "preprocess_class_name",
         "overwrite_target_spacing", "overwrite_plans_name"],
    "nnunetv2.preprocessing.preprocessors.default_preprocessor.DefaultPreprocessor.run_case_save":
        ["self", "output_filename_truncated", "image_files", "seg_file", "plans_manager", "configuration_manager",
         "dataset_json"],
}


def find_by_dotted_name(name: str):
    """The function, class or method ``name`` (``package.module.Class.method``), or None if there is none."""
    module_name, _, attribute = name.rpartition(".")
    try:
        owner = importlib.import_module(module_name)
    except ImportError:  # a method: import the module above the class
        module_name, _, class_name = module_name.rpartition(".")
        try:
            owner = getattr(importlib.import_module(module_name), class_name, None)
        except ImportError:
            return None
    return getattr(owner, attribute, None)


def parameter_names(name: str):
    """The parameter names of the callable ``name`` (see :func:`find_by_dotted_name`), None if there is none."""
    found = find_by_dotted_name(name)
    return list(inspect.signature(found).parameters) if callable(found) else None


def check_signatures(functions: Dict[str, List[str]], user: str) -> None:
    """Raise SSLConfigError, naming the function, if nnU-Net lacks one of ``functions`` with those parameters."""
    for name, expected in functions.items():
        parameters = parameter_names(name)
        if parameters != expected:
            raise SSLConfigError(f"{user} was written for nnU-Net 2.8.1's {name}({', '.join(expected)}); this "
                                 f"nnU-Net has "
                                 f"{'no such function' if parameters is None else '(' + ', '.join(parameters) + ')'}")
