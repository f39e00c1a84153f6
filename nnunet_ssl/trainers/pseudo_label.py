"""Self-training: nnU-Net's training on the labeled cases plus the unlabeled ones with a teacher's pseudo-labels.

The recipe nnU-Net's maintainers give for unlabeled scans (train, predict the unlabeled cases, retrain on labels
plus pseudo-labels), made one command (``nnunet_ssl_pseudolabel``) and this trainer, with no re-preprocessing:
pseudo-labels live in the preprocessed space of the plans and configuration (:mod:`nnunet_ssl.data.pseudo_labels`).

Design: a subclass of :class:`nnUNetTrainerSSLBase` whose second stream carries pseudo-labeled patches. Two
streams make the share of pseudo-labeled patches per batch exact (``pseudo_label_share``), and reuse the base's
collection of unlabeled cases with its checks against the fold. Each step is nnU-Net's step on the concatenated
batch (``batch_size - n`` labeled + ``n`` pseudo-labeled patches, the configuration's batch size in all, so a step
costs what nnU-Net's does): nnU-Net's Dice+CE (Dice+BCE for regions) with deep supervision over all patches. Both
streams go through nnU-Net's augmentation, so the student learns under noise the teacher did not predict with
(Noisy Student, Xie et al., CVPR 2020); ``student_augmentation`` adds strong intensity noise on top.

Voxels whose teacher confidence is below ``confidence_threshold`` carry nnU-Net's ignore label, which the loss
skips (the dataset gets an ignore label = highest label + 1 if it has none; see :mod:`nnunet_ssl.nnunet_internals`).
The network is nnU-Net's plain U-Net, so ``nnUNetv2_predict -tr nnUNetTrainerPseudoLabel`` works as usual.

Rounds: a student can be the next teacher. nnU-Net keys model folders by trainer name, so each round's student is
its own (one-line) subclass, e.g. ``class nnUNetTrainerPseudoLabelRound2(nnUNetTrainerPseudoLabel): pass``.
"""
import os
from typing import Optional

import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ssl.data.pseudo_labels import (MANIFEST, PSEUDO_LABELS_FOLDER, ConfidenceToIgnore, PseudoLabeledCases,
                                           cases_done, pseudo_label_folder, read_manifest)
from nnunet_ssl.data.strong_views import MaskedIntensity, StrongIntensity, strong_intensity_transforms
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.nnunet_internals import label_manager_with_ignore, sample_without_ignore
from nnunet_ssl.trainers.base import nnUNetTrainerSSLBase
from nnunet_ssl.trainers.settings import BOOLEAN, fraction, instance_of, one_of, optional


def pseudo_patches_per_batch(batch_size: int, share: float) -> int:
    """Pseudo-labeled patches in a batch of ``batch_size``: ``share`` (in (0, 1), checked with the trainer's settings)
    of it, rounded, at least one patch of each kind."""
    if batch_size < 2:
        raise SSLConfigError(f"a batch of {batch_size} patch cannot hold labeled and pseudo-labeled patches; "
                             f"self-training needs a batch size of at least 2 (per GPU)")
    return min(max(round(share * batch_size), 1), batch_size - 1)


class nnUNetTrainerPseudoLabel(nnUNetTrainerSSLBase):
    #: share of the batch that is pseudo-labeled patches (rounded; at least one labeled and one pseudo-labeled)
    pseudo_label_share: float = 0.5
    #: voxels whose teacher confidence (max probability) is below this are ignored by the loss; 0 keeps all
    confidence_threshold: float = 0.0
    #: start from the teacher's weights (its fold equal to the student's, else its first) instead of from scratch;
    #: needs a teacher whose network is nnU-Net's plain U-Net
    init_from_teacher: bool = False
    #: extra intensity noise for the student on every patch, e.g. ``StrongIntensity()`` (Noisy Student). None:
    #: nnU-Net's augmentation only, itself noise the teacher did not see (it predicted the plain images). On the
    #: synthetic data of tests/test_learning.py (100 steps) StrongIntensity() lowered the student's Dice from 0.88
    #: to 0.81, with the teacher at 0.90
    student_augmentation: Optional[StrongIntensity] = None
    #: no ramp-up: pseudo-labeled patches count fully from the first step (the base's ramp-up is refused)
    rampup_fraction: float = 0.0

    settings_checks = {"pseudo_label_share": fraction(closed_above=False, closed_below=False),
                       "confidence_threshold": fraction(), "init_from_teacher": BOOLEAN,
                       "student_augmentation": optional(instance_of(StrongIntensity)),
                       # one plain U-Net; the pseudo-labeled share of the batch replaces unlabeled_batch_size
                       "inference": one_of("first"), "rampup_fraction": one_of(0), "unlabeled_batch_size": one_of(None)}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.label_manager = label_manager_with_ignore(self.plans_manager, dataset_json)
        self.pseudo_label_folder = pseudo_label_folder(self.preprocessed_dataset_folder_base,
                                                       self.plans_manager.plans_name, configuration, fold)
        self.pseudo_label_manifest: Optional[dict] = None

    # ---- pseudo-labels ----------------------------------------------------------------------------------
    def _make_command(self, teacher: str = "TEACHER") -> str:
        return (f"nnunet_ssl_pseudolabel -d {self.plans_manager.dataset_name} -c {self.configuration_name} "
                f"-f {self.fold} -tr {teacher} -p {self.plans_manager.plans_name}")

    def read_pseudo_label_manifest(self) -> dict:
        """The manifest of this run's pseudo-labels, checked against the plans, configuration and split."""
        manifest_file = os.path.join(self.pseudo_label_folder, MANIFEST)
        if not os.path.isfile(manifest_file):
            others = []
            root = os.path.join(self.preprocessed_dataset_folder_base, PSEUDO_LABELS_FOLDER)
            if os.path.isdir(root):
                others = [os.path.join(root, d, f"fold_{self.fold}") for d in sorted(os.listdir(root))
                          if os.path.isfile(os.path.join(root, d, f"fold_{self.fold}", MANIFEST))]
            hint = (f" The pseudo-labels in {', '.join(others)} were made with other plans or another configuration"
                    f" (plans__configuration in the folder name) and do not fit this run.") if others else ""
            raise SSLConfigError(f"no pseudo-labels for plans {self.plans_manager.plans_name}, configuration "
                                 f"{self.configuration_name}, fold {self.fold}: {manifest_file} is missing.{hint} "
                                 f"Make them with a trained teacher: {self._make_command()}")
        manifest = read_manifest(self.pseudo_label_folder)
        expected = {"plans": self.plans_manager.plans_name, "configuration": self.configuration_name,
                    "data_identifier": self.configuration_manager.data_identifier}
        for key, value in expected.items():
            if manifest.get(key) != value:
                raise SSLConfigError(f"{manifest_file}: pseudo-labels made with {key} '{manifest.get(key)}', this "
                                     f"training uses '{value}'. Make them again: "
                                     f"{self._make_command(manifest['teacher']['trainer'])} --overwrite")
        teacher_folder = os.path.abspath(manifest["teacher"]["model_folder"])
        if teacher_folder == os.path.abspath(os.path.dirname(self.output_folder)):
            raise SSLConfigError(f"{manifest_file}: the teacher is this very trainer ({teacher_folder}); training "
                                 f"would overwrite it. Train the next round under a new trainer name (a one-line "
                                 f"subclass of {type(self).__name__} in a file on nnUNet_extTrainer).")
        return manifest

    def _check_split_unchanged(self, manifest: dict) -> None:
        split_file = os.path.join(self.preprocessed_dataset_folder_base, "splits_final.json")
        if manifest.get("split") is None or self.fold == "all":
            return
        fold = self.do_split()
        current = {"train": sorted(fold[0]), "val": sorted(fold[1])}
        if current != manifest["split"]:
            raise SSLConfigError(f"{split_file}, fold {self.fold}, is not the split the pseudo-labels in "
                                 f"{self.pseudo_label_folder} were made for. Make them again: "
                                 f"{self._make_command(manifest['teacher']['trainer'])} --overwrite")

    def get_unlabeled_dataset(self, labeled_ids) -> PseudoLabeledCases:
        manifest = self.read_pseudo_label_manifest()
        self._check_split_unchanged(manifest)
        super().get_unlabeled_dataset(labeled_ids)
        missing = sorted(set(self.unlabeled_cases) - set(cases_done(self.pseudo_label_folder)))
        if missing:
            raise SSLConfigError(f"{len(missing)} of {len(self.unlabeled_cases)} unlabeled cases have no pseudo-label "
                                 f"in {self.pseudo_label_folder} ({', '.join(missing[:5])}"
                                 f"{', ...' if len(missing) > 5 else ''}). Complete them (existing ones are kept): "
                                 f"{self._make_command(manifest['teacher']['trainer'])}")
        self.pseudo_label_manifest = manifest
        return PseudoLabeledCases(self.unlabeled_cases, self.pseudo_label_folder)

    # ---- data -------------------------------------------------------------------------------------------
    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        total = self.batch_size
        self.batch_size_unlabeled = pseudo_patches_per_batch(total, self.pseudo_label_share)
        self.batch_size = total - self.batch_size_unlabeled

    def get_training_transforms(self, *args, **kwargs):
        """nnU-Net's training transforms, plus the student's intensity noise (``student_augmentation``)."""
        transforms = nnUNetTrainer.get_training_transforms(*args, **kwargs)
        if self.student_augmentation is None:
            return transforms
        return ComposeTransforms([transforms, MaskedIntensity(strong_intensity_transforms(self.student_augmentation),
                                                              self.mask_for_norm_channels())])

    def get_unlabeled_dataloader(self, unlabeled, initial_patch_size, patch_size, rotation_for_DA, mirror_axes,
                                 do_dummy_2d_data_aug):
        """Pseudo-labeled patches through the labeled stream's augmentation, unconfident voxels ignored, foreground
        oversampled like nnU-Net's labeled patches (on the pseudo-label's foreground)."""
        transforms = ComposeTransforms([
            ConfidenceToIgnore(self.confidence_threshold, self.label_manager.ignore_label),
            self.get_labeled_training_transforms(patch_size, rotation_for_DA, mirror_axes, do_dummy_2d_data_aug)])
        return sample_without_ignore(nnUNetDataLoader(
            unlabeled, self.batch_size_unlabeled, initial_patch_size, patch_size, self.label_manager,
            oversample_foreground_percent=self.oversample_foreground_percent,
            probabilistic_oversampling=self.probabilistic_oversampling, transforms=transforms))

    def build_dataloaders(self):
        dl_tr, dl_val = super().build_dataloaders()
        sample_without_ignore(dl_tr.labeled)
        sample_without_ignore(dl_val)
        return dl_tr, dl_val

    # ---- training ---------------------------------------------------------------------------------------
    def initialize(self):
        super().initialize()
        if self.init_from_teacher:
            self.load_teacher_weights(self.read_pseudo_label_manifest()["teacher"])

    def load_teacher_weights(self, teacher: dict) -> None:
        fold = self.fold if self.fold in teacher["folds"] else teacher["folds"][0]
        path = os.path.join(teacher["model_folder"], f"fold_{fold}", teacher["checkpoint"])
        if not os.path.isfile(path):
            raise SSLConfigError(f"init_from_teacher: the teacher checkpoint {path} is gone")
        weights = torch.load(path, map_location="cpu", weights_only=False)["network_weights"]
        try:
            self.network_module.load_state_dict(weights)
        except RuntimeError as e:
            raise SSLConfigError(f"init_from_teacher: the network of {path} is not this trainer's plain U-Net "
                                 f"({str(e).splitlines()[0]}). Set init_from_teacher = False.") from None
        self.print_to_log_file(f"Initialised from the teacher's weights {path}", also_print_to_console=True)

    def on_train_start(self):
        super().on_train_start()
        teacher = self.pseudo_label_manifest["teacher"]
        self.print_to_log_file(
            f"Pseudo-labels from {self.pseudo_label_folder}, made {self.pseudo_label_manifest['created']} by teacher "
            f"{teacher['trainer']} (plans {teacher['plans']}, configuration {teacher['configuration']}, folds "
            f"{teacher['folds']}, {teacher['checkpoint']}); confidence threshold {self.confidence_threshold}, "
            f"{self.batch_size_unlabeled} of {self.batch_size + self.batch_size_unlabeled} patches pseudo-labeled",
            also_print_to_console=True)

    def compute_loss(self, data, target, data_unlabeled, batch, context):
        pseudo_target = self.to_device(batch["unlabeled"]["target"])
        if isinstance(target, list):
            all_targets = [torch.cat(pair) for pair in zip(target, pseudo_target)]
        else:
            all_targets = torch.cat((target, pseudo_target))
        loss = self.loss(self.network(torch.cat((data, data_unlabeled))), all_targets)
        full_res = pseudo_target[0] if isinstance(pseudo_target, list) else pseudo_target
        ignored = full_res[:, -1] if self.label_manager.has_regions else full_res == self.label_manager.ignore_label
        return loss, {"pseudo_ignored": ignored.float().mean().detach()}
