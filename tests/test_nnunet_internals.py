"""What nnunet-ssl relies on in nnU-Net (see :mod:`nnunet_ssl.nnunet_internals`), checked against the installed
nnunetv2, so that an upgrade that changes it fails here, naming the nnU-Net function and the nnunet-ssl code to
re-check, instead of training differently without a word.

* signatures of the nnU-Net functions and methods nnunet-ssl calls or overrides with assumptions;
* the attributes it reads or sets on nnU-Net objects;
* for the functions it copied, re-implemented or replaced: a hash of their source in nnunetv2 2.8.1.
"""
import hashlib
import inspect
from importlib.metadata import version

import numpy as np
import pytest
import torch

from nnunet_ssl import nnunet_internals
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.nnunet_internals import parameter_names
from nnunet_ssl.trainers import nnUNetTrainerPseudoLabel

from conftest import make_trainer

TRAINER = "nnunetv2.training.nnUNetTrainer.nnUNetTrainer.nnUNetTrainer"
LOADER = "nnunetv2.training.dataloading.data_loader.nnUNetDataLoader"
LOSSES = "nnunetv2.training.loss.compound_losses"

#: nnU-Net source that nnunet-ssl copied, re-implemented or replaced: (function, sha256 of its source in nnunetv2
#: 2.8.1 (first 16 hex digits), what to re-check when it changes)
COPIED_SOURCE = [
    (f"{TRAINER}.get_dataloaders", "5f59e2b907cfa2d1",
     "nnunet_ssl.nnunet_internals.make_augmenters and nnUNetTrainerSSLBase.build_dataloaders (copies of it)"),
    (f"{TRAINER}.__init__", "0ae31d90095f54c1",
     "nnunet_ssl.nnunet_internals.ClassAttributeSettings (the settings it assigns: NNUNET_INIT_SETTINGS, "
     "save_every; the signature inspection of self.__init__)"),
    (f"{TRAINER}._build_loss", "ba86dfb893faddc1",
     "nnunet_ssl.nnunet_internals.masked_segmentation_loss (builds nnU-Net's loss with these arguments)"),
    (f"{LOADER}.generate_train_batch", "0a430703c66ec9b8",
     "nnunet_ssl.nnunet_internals.random_image_patch (copies its cropping)"),
    ("nnunetv2.training.logging.nnunet_logger.LocalLogger.plot_progress_png", "2263f9df8da44479",
     "nnunet_ssl.trainers.logging.SSLLocalLogger.plot_progress_png (re-draws nnU-Net's panels)"),
    ("nnunetv2.run.run_training.maybe_load_checkpoint", "401db73a3f14697d",
     "nnunet_ssl.nnunet_internals.install_pretrained_loader (replaces the load_pretrained_weights it calls)"),
    ("nnunetv2.run.load_pretrained_weights.load_pretrained_weights", "1dc18e4eb8cc4de3",
     "nnunet_ssl.networks.pretrained.load_pretrained_weights (applies it to each U-Net of an SSL network)"),
]

#: nnU-Net functions and methods called or overridden with these parameters: (function, parameters, who relies)
SIGNATURES = [
    (f"{TRAINER}.__init__", ["self", "plans", "configuration", "fold", "dataset_json", "device"],
     "ClassAttributeSettings.__init__ and every trainer's __init__"),
    (f"{TRAINER}.get_training_transforms",
     ["patch_size", "rotation_for_DA", "deep_supervision_scales", "mirror_axes", "do_dummy_2d_data_aug",
      "use_mask_for_norm", "is_cascaded", "foreground_labels", "regions", "ignore_label"],
     "nnUNetTrainerSSLBase.get_unlabeled_transforms / get_labeled_training_transforms"),
    (f"{TRAINER}.get_validation_transforms",
     ["deep_supervision_scales", "is_cascaded", "foreground_labels", "regions", "ignore_label"],
     "nnUNetTrainerSSLBase.build_dataloaders"),
    (f"{TRAINER}.configure_rotation_dummyDA_mirroring_and_inital_patch_size", ["self"],
     "nnUNetTrainerSSLBase.build_dataloaders and nnunet_ssl.variants.NoMirroring"),
    (f"{TRAINER}.build_network_architecture",
     ["plans_manager", "configuration_manager", "num_input_channels", "num_output_channels",
      "enable_deep_supervision"], "nnUNetTrainerSSLBase.build_network_architecture"),
    (f"{TRAINER}._set_batch_size_and_oversample", ["self"], "nnUNetTrainerSSLBase, nnUNetTrainerPseudoLabel"),
    (f"{TRAINER}._get_deep_supervision_scales", ["self"], "nnUNetTrainerSSLBase.build_dataloaders"),
    (f"{TRAINER}.get_tr_and_val_datasets", ["self"], "nnUNetTrainerSSLBase.build_dataloaders"),
    (f"{TRAINER}.do_split", ["self"], "nnUNetTrainerSSLBase.do_split"),
    (f"{TRAINER}.train_step", ["self", "batch"], "nnUNetTrainerSSLBase.train_step"),
    (f"{TRAINER}.on_train_epoch_end", ["self", "train_outputs"], "nnUNetTrainerSSLBase.on_train_epoch_end"),
    (f"{TRAINER}.set_deep_supervision_enabled", ["self", "enabled"],
     "nnUNetTrainerSSLBase.set_deep_supervision_enabled"),
    (f"{TRAINER}.perform_actual_validation", ["self", "save_probabilities"], "the benchmark variants"),
    (f"{LOADER}.__init__", ["self", "data", "batch_size", "patch_size", "final_patch_size", "label_manager",
                            "oversample_foreground_percent", "sampling_probabilities", "pad_sides",
                            "probabilistic_oversampling", "transforms"],
     "nnunet_ssl.data.loaders.UnlabeledDataLoader and nnUNetTrainerSSLBase.build_dataloaders"),
    (f"{LOADER}.get_bbox", ["self", "data_shape", "force_fg", "class_locations", "overwrite_class", "verbose"],
     "nnunet_ssl.nnunet_internals.random_image_patch"),
    ("nnunetv2.preprocessing.preprocessors.default_preprocessor.DefaultPreprocessor._sample_foreground_locations",
     ["seg", "classes_or_regions", "seed", "verbose", "min_num_samples", "min_percent_coverage"],
     "nnunet_ssl.nnunet_internals.foreground_locations"),
    ("nnunetv2.training.logging.nnunet_logger.LocalLogger.__init__", ["self", "verbose"],
     "nnunet_ssl.trainers.logging.SSLLocalLogger"),
    ("nnunetv2.run.load_pretrained_weights.load_pretrained_weights", ["network", "fname", "verbose"],
     "nnunet_ssl.networks.pretrained.load_pretrained_weights"),
    (f"{LOSSES}.DC_and_CE_loss.__init__",
     ["self", "soft_dice_kwargs", "ce_kwargs", "weight_ce", "weight_dice", "ignore_label", "dice_class"],
     "nnunet_ssl.nnunet_internals.masked_segmentation_loss"),
    (f"{LOSSES}.DC_and_BCE_loss.__init__",
     ["self", "bce_kwargs", "soft_dice_kwargs", "weight_ce", "weight_dice", "use_ignore_label", "dice_class"],
     "nnunet_ssl.nnunet_internals.masked_segmentation_loss"),
    ("nnunetv2.training.loss.deep_supervision.DeepSupervisionWrapper.__init__", ["self", "loss", "weight_factors"],
     "nnunet_ssl.nnunet_internals.uncertainty_supervised_loss"),
    ("nnunetv2.experiment_planning.experiment_planners.default_experiment_planner.ExperimentPlanner.__init__",
     ["self", "dataset_name_or_id", "gpu_memory_target_in_gb", "preprocessor_name", "plans_name",
      "overwrite_target_spacing", "suppress_transpose"],
     "nnunet_ssl.nnunet_internals.planner_default_plans_name"),
]


def source_hash(function) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name, expected, recheck", COPIED_SOURCE, ids=[c[0].rpartition(".")[2] for c in COPIED_SOURCE])
def test_copied_or_replaced_nnunet_source_is_unchanged(name, expected, recheck):
    function = nnunet_internals.find_by_dotted_name(name)
    assert function is not None, f"{name} is gone in nnunetv2 {version('nnunetv2')}: re-check {recheck}"
    assert source_hash(function) == expected, (
        f"{name} changed in nnunetv2 {version('nnunetv2')}: re-check {recheck} and update the hash in "
        f"tests/test_nnunet_internals.py to {source_hash(function)}")


@pytest.mark.parametrize("name, expected, relies", SIGNATURES, ids=[s[0].split(".", 3)[-1] for s in SIGNATURES])
def test_nnunet_signatures_we_call_or_override(name, expected, relies):
    assert parameter_names(name) == expected, (
        f"{name} has parameters {parameter_names(name)} in nnunetv2 {version('nnunetv2')}, not {expected} "
        f"(nnunetv2 2.8.1): re-check {relies}")


def test_plan_and_preprocess_functions_are_checked_at_start_naming_a_changed_one(monkeypatch):
    import nnunetv2.preprocessing.cropping.cropping as cropping

    def check():
        nnunet_internals.check_signatures(nnunet_internals.PLAN_AND_PREPROCESS_FUNCTIONS,
                                          "nnunet_ssl_plan_and_preprocess")

    check()  # the installed nnU-Net matches
    monkeypatch.setattr(cropping, "crop_to_nonzero", lambda data, seg=None: None)
    with pytest.raises(SSLConfigError, match=r"nnunet_ssl_plan_and_preprocess was written for nnU-Net 2.8.1's "
                                             r"nnunetv2.preprocessing.cropping.cropping.crop_to_nonzero\(data, seg, "
                                             r"nonzero_label\); this nnU-Net has \(data, seg\)"):
        check()


def test_nnunet_init_assigns_the_settings_that_class_attributes_override():
    """ClassAttributeSettings applies these after nnU-Net's __init__, which assigns them on the instance."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    source = inspect.getsource(nnUNetTrainer.__init__)
    for name in (*nnunet_internals.NNUNET_INIT_SETTINGS, "save_every"):
        assert f"self.{name} = " in source, f"nnUNetTrainer.__init__ no longer assigns {name}: re-check " \
                                            f"nnunet_ssl.nnunet_internals.ClassAttributeSettings"
    assert "inspect.signature(self.__init__)" in source


def test_pretrained_loader_replaces_the_name_nnunet_train_calls():
    import nnunetv2.run.run_training as run_training

    from nnunet_ssl.networks.pretrained import load_pretrained_weights

    assert "load_pretrained_weights(nnunet_trainer.network" in inspect.getsource(run_training.maybe_load_checkpoint)
    nnunet_internals.install_pretrained_loader(load_pretrained_weights)
    assert run_training.load_pretrained_weights is load_pretrained_weights


def test_local_logger_is_the_meta_loggers_attribute_with_the_lists_progress_png_draws(tmp_path):
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    from nnunet_ssl.trainers.logging import SSLLocalLogger

    keys = set(nnunet_internals.nnunet_log_keys())
    assert {"train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "epoch_start_timestamps",
            "epoch_end_timestamps", "lrs"} <= keys
    logger = MetaLogger(str(tmp_path), resume=False)
    logger.log("train_losses", 0.5, 0)
    nnunet_internals.replace_local_logger(type("Trainer", (), {"logger": logger})(), SSLLocalLogger)
    assert isinstance(logger.local_logger, SSLLocalLogger)
    assert logger.get_value("train_losses", step=0) == 0.5  # history taken over; MetaLogger reads through it


def test_loader_private_attributes_and_sampling_with_ignore_label(ssl_env, monkeypatch):
    """nnU-Net's loader with an ignore label needs the 'annotated' class locations, which datasets preprocessed
    without an ignore label lack; sample_without_ignore restores plain random patches. Foreground locations are
    voxels of their class. random_image_patch reads the loader's _data, get_bbox and patch_size_was_2d."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    from nnunet_ssl.data.unlabeled import UnlabeledImages
    from nnunet_ssl.nnunet_internals import foreground_locations, random_image_patch, sample_without_ignore

    trainer = make_trainer(ssl_env, monkeypatch, nnUNetTrainerPseudoLabel, "2d")
    loader = nnUNetDataLoader(UnlabeledImages({}), 2, (8, 8, 8), (8, 8, 8), trainer.label_manager)
    assert loader.has_ignore
    with pytest.raises(KeyError):
        loader.get_bbox((20, 20, 20), False, {1: [], 2: []})
    sample_without_ignore(loader)
    low, high = loader.get_bbox((20, 20, 20), False, {1: [], 2: []})
    assert [h - l for l, h in zip(low, high)] == [8, 8, 8]

    image = np.arange(5 * 6 * 7, dtype=np.float32).reshape(1, 5, 6, 7)
    loader._data = type("Images", (), {"load_image": staticmethod(lambda key: image)})()
    patch = random_image_patch(loader, "case").numpy()
    inside = patch[patch != 0]  # the 8^3 box over a 5x6x7 image: the image (0 only at its origin) and zero padding
    assert patch.shape == (1, 8, 8, 8) and sorted(inside.tolist()) == sorted(image[image != 0].tolist())
    flat = sample_without_ignore(nnUNetDataLoader(UnlabeledImages({}), 2, (4, 4), (4, 4), trainer.label_manager))
    assert flat.patch_size_was_2d
    flat._data = loader._data
    assert tuple(random_image_patch(flat, "case").shape) == (1, 4, 4)

    seg = np.zeros((1, 4, 5, 6), dtype=np.int8)
    seg[0, 1, 2, 3] = 1
    seg[0, 2:4, 0, 0] = 2
    locations = foreground_locations(seg, trainer.label_manager)
    assert [tuple(v) for v in locations[1]] == [(0, 1, 2, 3)]
    assert sorted(tuple(v) for v in locations[2]) == [(0, 2, 0, 0), (0, 3, 0, 0)]


def test_loss_ignores_the_added_ignore_label_and_has_the_attributes_read(ssl_env, monkeypatch):
    """The pseudo-label trainer's loss is nnU-Net's Dice+CE built with the added ignore label (labels 0-2, ignore
    3): voxels carrying it get no gradient and do not change the loss. Its deep-supervision wrapper and compound
    loss have the attributes uncertainty_supervised_loss reads."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    trainer = make_trainer(ssl_env, monkeypatch, nnUNetTrainerPseudoLabel, "2d")
    assert trainer.label_manager.ignore_label == 3 and trainer.label_manager.num_segmentation_heads == 3
    trainer.initialize()
    assert isinstance(trainer.loss, DeepSupervisionWrapper) and len(trainer.loss.weight_factors) > 1
    loss = trainer.loss.loss
    assert isinstance(loss, DC_and_CE_loss) and loss.ignore_label == 3 and loss.weight_ce == 1

    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    ignored = torch.rand(2, 1, 8, 8) < 0.3
    target[ignored] = 3
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss(logits, target).backward()
    assert logits.grad.abs().sum() > 0
    assert logits.grad.permute(1, 0, 2, 3)[:, ignored[:, 0]].abs().max() == 0
    changed = logits.detach().clone()
    changed.permute(1, 0, 2, 3)[:, ignored[:, 0]] = 50.0
    assert torch.isclose(loss(changed, target), loss(logits.detach(), target))


def test_planner_default_plans_name():
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    assert nnunet_internals.planner_default_plans_name(ExperimentPlanner) == "nnUNetPlans"
