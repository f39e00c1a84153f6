"""``nnUNetTrainerSSLBase``: what every semi-supervised trainer shares.

* unlabeled cases from every source present (see :mod:`nnunet_ssl.data.unlabeled`), checked against the fold;
* a composite loader: each training step gets nnU-Net's labeled batch plus ``batch['unlabeled']``, both
  augmented by nnU-Net's own pipeline in nnU-Net's worker pool;
* the network built from the plans: :meth:`build_ssl_network` wires fresh plans U-Nets into the method's network;
  ``inference`` chooses what it predicts with ('first', 'second' or 'mean');
* a train step with nnU-Net's AMP / gradient clipping / optimizer pattern around :meth:`compute_loss`, which a
  method implements, returning its total loss and its named terms (``passes_per_batch`` such passes per batch, a
  :class:`PassContext` telling each pass which it is and carrying state to the next; an optimizer step after each
  pass, or one for the batch with ``optimizer_step_per_pass = False``), and :meth:`after_optimizer_step` after each
  optimizer step (an EMA update, say);
* every setting (class attribute) checked when the trainer is made, from the ``settings_checks`` tables of the
  class and its parents (:mod:`nnunet_ssl.trainers.settings`);
* every term logged per epoch in nnU-Net's log and drawn in progress.png. One rule for names: a term without an
  index (``sup``, ``cons``) is per network, averaged over the networks or decoders that have it, so it keeps one
  network's scale whatever the method; ``sup1`` / ``sup2`` are the values of network (decoder) 1 and 2; a term of
  the pair (``distill``) or a weight (``cons_weight``) is logged as it enters the loss;
* the ramp-up position derived from the epoch and the step within it, so ``--c`` resumes it exactly.

All SSL state lives inside ``self.network`` (second network, teacher, extra decoder), so nnU-Net's own
checkpoints hold it and ``--c`` restores it with nnU-Net's code.
"""
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import autocast
from torch.nn.parallel import DistributedDataParallel

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context

from nnunet_ssl.data.loaders import CompositeDataLoader, UnlabeledDataLoader, split_batch_across_ranks
from nnunet_ssl.data.unlabeled import UnlabeledImages, collect_unlabeled_cases
from nnunet_ssl.blocks.schedules import sigmoid_rampup
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.networks import pretrained
from nnunet_ssl.networks.containers import INFERENCE_CHOICES, PRETRAINED_NETWORKS
from nnunet_ssl.nnunet_internals import ClassAttributeSettings, make_augmenters, replace_local_logger
from nnunet_ssl.splits import check_enough_cases_for_default_split, check_fold, read_splits
from nnunet_ssl.trainers.logging import SSLLocalLogger
from nnunet_ssl.trainers.settings import BOOLEAN, Allowed, at_least, check_settings, count, one_of, optional

pretrained.install()

@dataclass
class PassContext:
    """What :meth:`nnUNetTrainerSSLBase.compute_loss` learns about its pass: ``index`` of ``count`` passes over the
    same batch (``passes_per_batch``), and ``carry``, a dict made fresh per batch that a pass fills for the later
    passes of the same batch (LeFeD's feedback)."""
    index: int = 0
    count: int = 1
    carry: dict = field(default_factory=dict)

    @property
    def is_last(self) -> bool:
        return self.index + 1 == self.count


class nnUNetTrainerSSLBase(ClassAttributeSettings, nnUNetTrainer):
    """Base of all nnunet-ssl trainers. Subclasses implement :meth:`compute_loss` and usually
    :meth:`build_ssl_network`; hyper-parameters are class attributes, so a variant is a short subclass, and each
    is declared with its allowed values in ``settings_checks`` (nnU-Net's own settings too, ``num_epochs = 100``:
    see :class:`~nnunet_ssl.nnunet_internals.ClassAttributeSettings`)."""

    #: unlabeled patches per step (global, split across GPUs like the labeled batch); None = labeled batch size
    unlabeled_batch_size: Optional[int] = None
    #: fraction of the whole training over which :meth:`rampup` rises from ~0 to 1 (UA-MT / SSL4MIS ramp over
    #: the whole run: consistency_rampup x 150 iterations = max_iterations)
    rampup_fraction: float = 1.0
    #: optimisation passes (forward, loss, backward, optimizer step) over each batch; the :class:`PassContext`
    #: tells :meth:`compute_loss` which one it is
    passes_per_batch: int = 1
    #: True: every pass ends in its own optimizer step; False: the passes' gradients add up (each loss divided by
    #: ``passes_per_batch``: the gradient of their mean) into one optimizer step per batch, nnU-Net's step count
    optimizer_step_per_pass: bool = True
    #: epochs between checkpoint_latest saves (nnU-Net: 50). An SSL epoch costs 2-13x nnU-Net's, so 10 keeps what
    #: a crash can lose to about the wall time nnU-Net risks
    save_every_epochs: int = 10
    #: which U-Nets ``-pretrained_weights`` initialises where a method co-trains two: 'first' (network 1; network 2
    #: keeps its own random initialisation, the difference between the networks that co-training relies on) or
    #: 'all'. A mean teacher always starts equal to its student; LeFeD's second decoder is never in a checkpoint
    pretrained_networks: str = "first"
    #: what the network predicts with in validation and nnUNetv2_predict: 'first' (network 1, decoder 1 or the
    #: student: the U-Net a plain nnU-Net checkpoint corresponds to), 'second' (network 2, decoder 2 or the teacher)
    #: or 'mean' (the mean of both logits)
    inference: str = "first"

    #: allowed values of the settings, merged over the class hierarchy (see :mod:`nnunet_ssl.trainers.settings`)
    settings_checks: Dict[str, Allowed] = {
        "unlabeled_batch_size": optional(count(1)), "rampup_fraction": at_least(0), "passes_per_batch": count(1),
        "optimizer_step_per_pass": BOOLEAN, "save_every_epochs": count(1),
        "pretrained_networks": one_of(*PRETRAINED_NETWORKS), "inference": one_of(*INFERENCE_CHOICES)}
    #: former setting names -> the setting that replaced them
    renamed_settings = {"inference_network": "inference", "inference_decoders": "inference",
                        "inference_mode": "inference"}

    @classmethod
    def check_settings(cls) -> None:
        """Raise SSLConfigError naming the first class attribute outside its ``settings_checks`` entry."""
        table = {}
        for klass in reversed(cls.__mro__):
            table.update(vars(klass).get("settings_checks", {}))
        check_settings(cls, table, cls.renamed_settings)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_cascaded:
            raise SSLConfigError(f"configuration '{configuration}' is a cascade stage; semi-supervised trainers "
                                 f"support 2d, 3d_fullres and 3d_lowres (unlabeled cases have no previous-stage "
                                 f"segmentations)")
        self.check_settings()
        replace_local_logger(self, SSLLocalLogger)
        self.unlabeled_cases: Dict[str, str] = {}
        self.batch_size_unlabeled: Optional[int] = None
        self.step_in_epoch = 0

    # ---- network ----------------------------------------------------------------------------------------
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True):
        """nnU-Net's hook, kept with its signature (nnU-Net's predictor calls it); methods override
        :meth:`build_ssl_network` instead. Checks the settings first, as the predictor makes no trainer."""
        cls.check_settings()
        def new_unet():
            return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                            num_output_channels, enable_deep_supervision)
        return cls.build_ssl_network(new_unet)

    @classmethod
    def build_ssl_network(cls, new_unet: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """The method's network from ``new_unet()``, which builds and initialises a new U-Net from the plans on
        each call (so two calls give two differently initialised networks). Default: one plain U-Net."""
        return new_unet()

    # ---- data -------------------------------------------------------------------------------------------
    def _set_batch_size_and_oversample(self):
        global_labeled = self.configuration_manager.batch_size
        if self.is_ddp and self.configuration_manager.batch_dice and global_labeled % dist.get_world_size():
            # nnU-Net's batch Dice all-gathers per-GPU tensors of the per-GPU batch size: gloo fails, NCCL may hang
            raise SSLConfigError(f"configuration '{self.configuration_name}': batch size {global_labeled} does not "
                                 f"split evenly over {dist.get_world_size()} GPUs, which nnU-Net's batch Dice "
                                 f"(batch_dice in the plans) needs; use a number of GPUs that divides it or a "
                                 f"batch size in the plans that is a multiple of it")
        super()._set_batch_size_and_oversample()
        global_unlabeled = self.unlabeled_batch_size or global_labeled
        if self.is_ddp:
            self.batch_size_unlabeled = split_batch_across_ranks(global_unlabeled, dist.get_world_size(),
                                                                 dist.get_rank())
        else:
            self.batch_size_unlabeled = global_unlabeled

    def do_split(self):
        """nnU-Net's split, after checking that its default 5-fold split can be made (scikit-learn fails inside it
        on fewer cases than folds)."""
        if self.fold != "all" and not os.path.isfile(self._splits_file()):
            if self.dataset_class is None:
                self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
            check_enough_cases_for_default_split(
                self.dataset_class.get_identifiers(self.preprocessed_dataset_folder), self._splits_file(),
                self.plans_manager.dataset_name, self.configuration_name, self.fold, type(self).__name__)
        return super().do_split()

    def _splits_file(self) -> str:
        return os.path.join(self.preprocessed_dataset_folder_base, "splits_final.json")

    def _split_file_unlabeled(self) -> list:
        """The fold's ``unlabeled`` list of splits_final.json (empty if none), checked against train/val."""
        splits_file = self._splits_file()
        try:
            splits = read_splits(splits_file)
        except FileNotFoundError:
            return []
        if self.fold == "all":
            marked = set().union(*(fold.get("unlabeled", []) for fold in splits))
            if marked:
                # nnU-Net's fold 'all' trains on every case, so it would read the labels of the unlabeled ones
                raise SSLConfigError(f"fold 'all' trains on every case of the dataset, but {splits_file} marks "
                                     f"{len(marked)} case(s) unlabeled, whose labels it would read; train one of its "
                                     f"folds (0 to {len(splits) - 1}) instead")
            return []
        if self.fold >= len(splits):
            if any("unlabeled" in fold for fold in splits):
                # nnU-Net would make a random split of all cases, so the split's unlabeled cases become labeled
                raise SSLConfigError(f"fold {self.fold} is not in {splits_file} ({len(splits)} fold(s) with "
                                     f"'unlabeled' lists); train one of its folds or write more with "
                                     f"nnunet_ssl_split --folds")
            return []
        check_fold(splits[self.fold], f"{splits_file}, fold {self.fold}")
        return list(splits[self.fold].get("unlabeled", []))

    def get_unlabeled_dataset(self, labeled_ids) -> UnlabeledImages:
        plans = self.plans_manager.plans_name
        command = (f"nnunet_ssl_preprocess_unlabeled -d {self.plans_manager.dataset_name} "
                   f"-c {self.configuration_name}" + (f" -p {plans}" if plans != "nnUNetPlans" else ""))
        self.unlabeled_cases = collect_unlabeled_cases(self.preprocessed_dataset_folder,
                                                       self._split_file_unlabeled(), labeled_ids, command)
        return UnlabeledImages(self.unlabeled_cases)

    def get_unlabeled_transforms(self, patch_size, rotation_for_DA, mirror_axes, do_dummy_2d_data_aug):
        """nnU-Net's training augmentation without labels. Where the plans normalise within the nonzero mask
        (``use_mask_for_norm``), the loader passes that mask, read from the image, as the segmentation, and
        nnU-Net's masking sets the outside back to 0 after intensity augmentation, as for the labeled patches.
        Override to add views (e.g. a strongly perturbed copy)."""
        return self.get_training_transforms(
            patch_size, rotation_for_DA, None, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            is_cascaded=False, foreground_labels=self.label_manager.foreground_labels, regions=None,
            ignore_label=None)

    def get_labeled_training_transforms(self, patch_size, rotation_for_DA, mirror_axes, do_dummy_2d_data_aug):
        """nnU-Net's training augmentation of the labeled stream, from the trainer's settings."""
        return self.get_training_transforms(
            patch_size, rotation_for_DA, self._get_deep_supervision_scales(), mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            foreground_labels=self.label_manager.foreground_labels,
            regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
            ignore_label=self.label_manager.ignore_label)

    def mask_for_norm_channels(self) -> List[int]:
        """The channels normalised within the nonzero mask (``use_mask_for_norm`` in the plans)."""
        return [c for c, masked in enumerate(self.configuration_manager.use_mask_for_norm) if masked]

    def get_unlabeled_dataloader(self, unlabeled, initial_patch_size, patch_size, rotation_for_DA, mirror_axes,
                                 do_dummy_2d_data_aug):
        """The loader of the second stream (``batch['unlabeled']``): random unlabeled patches, images only."""
        return UnlabeledDataLoader(unlabeled, self.batch_size_unlabeled, initial_patch_size, patch_size,
                                   self.label_manager, self.get_unlabeled_transforms(
                                       patch_size, rotation_for_DA, mirror_axes, do_dummy_2d_data_aug),
                                   self.mask_for_norm_channels())

    def build_dataloaders(self):
        """nnU-Net's loaders, the labeled training loader wrapped in a composite labeled+unlabeled one."""
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        regions = self.label_manager.foreground_regions if self.label_manager.has_regions else None
        tr_transforms = self.get_labeled_training_transforms(patch_size, rotation, mirror_axes, dummy_2d)
        val_transforms = self.get_validation_transforms(
            self._get_deep_supervision_scales(), is_cascaded=self.is_cascaded,
            foreground_labels=self.label_manager.foreground_labels, regions=regions,
            ignore_label=self.label_manager.ignore_label)

        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        unlabeled = self.get_unlabeled_dataset(list(dataset_tr.identifiers) + list(dataset_val.identifiers))
        common = dict(label_manager=self.label_manager, oversample_foreground_percent=self.oversample_foreground_percent,
                      probabilistic_oversampling=self.probabilistic_oversampling)
        dl_tr = CompositeDataLoader(
            nnUNetDataLoader(dataset_tr, self.batch_size, initial_patch_size, patch_size, transforms=tr_transforms,
                             **common),
            self.get_unlabeled_dataloader(unlabeled, initial_patch_size, patch_size, rotation, mirror_axes, dummy_2d))
        dl_val = nnUNetDataLoader(dataset_val, self.batch_size, patch_size, patch_size, transforms=val_transforms,
                                  **common)
        return dl_tr, dl_val

    def get_dataloaders(self):
        """:meth:`build_dataloaders` in nnU-Net's worker pools."""
        return make_augmenters(*self.build_dataloaders(), self.device)

    def on_train_start(self):
        super().on_train_start()
        n_split = sum(folder == self.preprocessed_dataset_folder for folder in self.unlabeled_cases.values())
        self.print_to_log_file(
            f"Semi-supervised training: {len(self.unlabeled_cases)} unlabeled cases ({n_split} from "
            f"splits_final.json, {len(self.unlabeled_cases) - n_split} from the imagesUnlabeled folder); "
            f"{self.batch_size} labeled + {self.batch_size_unlabeled} unlabeled patches per step",
            also_print_to_console=True)

    # ---- training step ----------------------------------------------------------------------------------
    @property
    def network_module(self):
        """``self.network`` without its DDP / torch.compile wrappers (for methods such as ``update_teacher``)."""
        return pretrained.unwrap(self.network)

    def set_deep_supervision_enabled(self, enabled: bool):
        """Sets deep supervision on every decoder inside the network (both decoders, both networks, ...)."""
        for module in self.network_module.modules():
            if hasattr(module, "deep_supervision"):
                module.deep_supervision = enabled

    def autocast(self):
        """Mixed precision as nnU-Net uses it: on CUDA only."""
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def to_device(self, x):
        if isinstance(x, (list, tuple)):
            return [self.to_device(i) for i in x]
        return x.to(self.device, non_blocking=True)

    @property
    def global_step(self) -> int:
        """Training steps (batches) done before the current one, over all epochs: the position for schedules."""
        return self.current_epoch * self.num_iterations_per_epoch + self.step_in_epoch

    def training_progress(self) -> float:
        """Fraction of the training done, from the epoch and the step within it (restored exactly by --c)."""
        done = self.current_epoch + self.step_in_epoch / self.num_iterations_per_epoch
        return done / self.num_epochs

    def rampup(self) -> float:
        """The sigmoid ramp-up factor in [0, 1] at the current step, over ``rampup_fraction`` of training."""
        return sigmoid_rampup(self.training_progress(), self.rampup_fraction)

    def compute_loss(self, data: torch.Tensor, target, data_unlabeled: torch.Tensor, batch: dict,
                     context: PassContext) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The method's loss for one pass: ``(total, {term name: value})``, the terms named by the rule of the module
        docstring. Runs under autocast on CUDA. ``data``/``target`` are the labeled batch (target a
        deep-supervision list), ``data_unlabeled`` the unlabeled one; ``batch['unlabeled']`` holds any extra
        tensors of the unlabeled transforms (on CPU); ``context`` says which pass of the batch this is and carries
        what earlier passes of it left."""
        raise NotImplementedError

    def after_optimizer_step(self, context: PassContext) -> None:
        """Called after each optimizer step (once per pass, or once per batch with ``optimizer_step_per_pass =
        False``), e.g. for an EMA teacher update. Default: nothing."""

    def backward(self, loss: torch.Tensor) -> None:
        """nnU-Net's backward, through the grad scaler on CUDA."""
        (loss if self.grad_scaler is None else self.grad_scaler.scale(loss)).backward()

    def gradient_sync(self, context: PassContext):
        """Under DDP, a pass whose gradients only add up for a later optimizer step (``optimizer_step_per_pass =
        False``, all passes but the last) runs in ``no_sync``: the last pass all-reduces the sum once, as DDP's
        gradient accumulation does, instead of every pass."""
        accumulating = not self.optimizer_step_per_pass and not context.is_last
        if accumulating and isinstance(self.network, DistributedDataParallel):
            return self.network.no_sync()
        return dummy_context()

    def optimizer_step(self) -> None:
        """nnU-Net's gradient clipping (norm 12) and optimizer step, with the grad scaler on CUDA."""
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def train_step(self, batch: dict) -> dict:
        data, target = self.to_device(batch["data"]), self.to_device(batch["target"])
        data_unlabeled = self.to_device(batch["unlabeled"]["data"])
        logged, carry, passes = [], {}, self.passes_per_batch
        for index in range(passes):
            context = PassContext(index, passes, carry)
            if self.optimizer_step_per_pass or index == 0:
                self.optimizer.zero_grad(set_to_none=True)
            with self.gradient_sync(context):
                with self.autocast():
                    loss, terms = self.compute_loss(data, target, data_unlabeled, batch, context)
                self.backward(loss if self.optimizer_step_per_pass else loss / passes)
            if self.optimizer_step_per_pass or context.is_last:
                self.optimizer_step()
                self.after_optimizer_step(context)
            logged.append(torch.stack([torch.as_tensor(v, device=loss.device).detach().float()
                                       for v in (loss, *terms.values())]))
        self.step_in_epoch += 1
        means = torch.stack(logged).mean(0).cpu().tolist()  # one device sync per step, as nnU-Net's loss
        return dict(zip(("loss", *terms), means))

    # ---- logging ----------------------------------------------------------------------------------------
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.step_in_epoch = 0

    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        for term in outputs:
            if term == "loss":
                continue
            value = np.mean(outputs[term])
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, value)
                value = float(np.mean(gathered))
            self.logger.local_logger.add_term(term)
            self.logger.log(term, value, self.current_epoch)
            self.print_to_log_file(f"{term}: {np.round(value, decimals=4)}")
