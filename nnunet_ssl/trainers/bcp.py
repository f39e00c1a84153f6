"""BCP: Bidirectional Copy-Paste for semi-supervised medical image segmentation (Bai et al., CVPR 2023; code
DeepMed-Lab-ECNU/BCP, ``ACDC_BCP_train.py`` and ``LA_BCP_train.py``).

Labeled and unlabeled patches are mixed with one box covering 2/3 of each side of the patch, in both directions,
so that the network learns the same mixtures from labeled and unlabeled data alike:

* **pre-training** (the first ``pretrain_fraction`` of the training steps, half by default): the U-Net learns from labeled patches
  that carry a box of another labeled patch, image and label (nnU-Net's Dice+CE with deep supervision);
* **self-training** (the rest): a mean teacher, initialised from the pre-trained network when this stage starts
  and then its exponential moving average (decay 0.99), predicts hard pseudo-labels of the unlabeled patches. The
  student learns from labeled content pasted into unlabeled patches and unlabeled content pasted into labeled
  patches, the same box in both directions. Each voxel is supervised by the ground truth where its content is
  labeled and by the teacher's pseudo-label where it is unlabeled, the latter with weight ``unlabeled_weight``
  (released ``u_weight`` 0.5): ``L = L_labeled + 0.5 L_unlabeled``, each nnU-Net's Dice+CE (Dice+BCE for regions)
  over its voxels, with deep supervision.

Pseudo-labels and the teacher carry no gradient. Inference is the student, a plain U-Net (``inference = 'second'``
predicts with the teacher, ``'mean'`` with both).

Choices and deviations (class attributes where they are settings):

* one nnU-Net training: one SGD optimizer and poly learning rate over both stages; the self-training stage starts
  from the last pre-training step (the released code restarts from the best validation checkpoint of pre-training,
  with a new learning-rate schedule). ``pretrain_fraction`` is 0.5 by default, against the released 0.25 for ACDC
  (10k of 40k iterations; LA: 2k of 17k): the teacher, an average over about the last 100 steps, starts from the
  pre-trained network, and in our short synthetic test (100 steps) 0.25 reached a validation Dice of 0.79 against
  nnUNetTrainer's 0.90, 0.5 reached 0.87; ``nnUNetTrainerBCP_paper`` keeps 0.25. The stage follows from the step (epoch and step in epoch), so ``--c`` resumes it, and
  the teacher lives in the network, so nnU-Net's checkpoints hold it (it becomes a copy of the student after the
  last pre-training step, before any checkpoint of the self-training stage);
* batches: pre-training pairs each labeled patch with the previous one of the batch (the released code mixes the
  first half of the batch with the second). Self-training pairs unlabeled patch ``i`` with labeled patch
  ``i mod B_l``; the first half of the pairs (rounded up) has labeled content pasted into the unlabeled patch, the
  second half unlabeled content pasted into the labeled patch, the halves sharing one pair when the unlabeled batch
  is odd (with one unlabeled patch, both directions use it). So a step trains the student on about ``B_u`` mixed
  patches, nnU-Net's cost, plus the teacher's forward pass without gradient;
* one box per step (as released) at a uniformly random position, ``round(2/3 * size)`` voxels along every axis;
* losses: nnU-Net's Dice+CE with deep supervision (targets downsampled as nnU-Net's) instead of the released
  ``(Dice + CE) / 2`` at full resolution with background in the Dice, and labeled and unlabeled voxels as two
  terms over the whole mixed batch instead of one pair of terms per direction. Pre-training uses nnU-Net's loss
  on the mixed label (as released for LA);
* pseudo-labels: the teacher's argmax (regions: p > 0.5). The released code keeps only the largest connected
  component of each class (per 2D slice for ACDC, per volume for LA); that fits one-component anatomy and removes
  real structure elsewhere (lesions, vessels, paired organs), and nnU-Net decides such post-processing per dataset
  from validation, so it is off by default: ``nnUNetTrainerBCP_paper`` (``largest_component = True``) keeps it;
* the unlabeled weight is constant, as released; ``rampup_fraction`` ramps it up (sigmoid) over that fraction of
  the training (0.83 in the short test with 1.0, pre-training 0.25).
"""
import math

import torch

from nnunet_ssl.blocks.mixing import paste, random_boxes, with_partner
from nnunet_ssl.blocks.outputs import deep_supervision_targets, full_resolution, probabilities
from nnunet_ssl.blocks.pseudo_labels import also_ignored, hard_pseudo_labels, largest_components, with_ignored
from nnunet_ssl.networks.containers import StudentTeacher
from nnunet_ssl.nnunet_internals import (as_masked_target, deep_supervision_like, masked_segmentation_loss,
                                         pseudo_label_ignore_value)
from nnunet_ssl.trainers.base import nnUNetTrainerSSLBase
from nnunet_ssl.trainers.settings import BOOLEAN, at_least, fraction


def direction_halves(n: int):
    """Indices of the pairs mixed in each direction: the first half (rounded up) and the second half, sharing the
    middle pair when ``n`` is odd (both are ``[0]`` for ``n = 1``)."""
    return torch.arange(0, math.ceil(n / 2)), torch.arange(n // 2, n)


class nnUNetTrainerBCP(nnUNetTrainerSSLBase):
    #: fraction of the training steps spent in supervised pre-training on copy-pasted labeled pairs (released 0.25)
    pretrain_fraction = 0.5
    #: EMA decay of the teacher during self-training
    ema_decay = 0.99
    #: side of the pasted box relative to the patch, per axis
    paste_side_fraction = 2 / 3
    #: weight of the voxels whose content comes from an unlabeled patch (pseudo-labeled)
    unlabeled_weight = 0.5
    #: keep only the largest connected component of each pseudo-label class (released code; off by default)
    largest_component = False
    #: the unlabeled weight ramps up (sigmoid) over this fraction of the training; 0: constant, as released
    rampup_fraction = 0.0

    settings_checks = {"pretrain_fraction": fraction(), "ema_decay": fraction(), "paste_side_fraction": fraction(),
                       "unlabeled_weight": at_least(0), "largest_component": BOOLEAN}

    @classmethod
    def build_ssl_network(cls, new_unet):
        return StudentTeacher(new_unet(), inference=cls.inference)

    def initialize(self):
        super().initialize()
        self.build_mixed_loss()

    def build_mixed_loss(self):
        """``self.masked_loss``: nnU-Net's Dice+CE with ignored voxels and the deep supervision of ``self.loss``."""
        masked = masked_segmentation_loss(self.label_manager.has_regions, self.configuration_manager.batch_dice,
                                          pseudo_label_ignore_value(self.label_manager))
        self.masked_loss = deep_supervision_like(self.loss, masked)

    @property
    def pretrain_steps(self) -> int:
        return round(self.pretrain_fraction * self.num_epochs * self.num_iterations_per_epoch)

    def paste_box(self, like: torch.Tensor) -> torch.Tensor:
        """One box for the whole batch, (1, 1, *spatial)."""
        return random_boxes(torch.full((1,), self.paste_side_fraction, device=like.device), like.shape[2:])

    def pseudo_labels(self, teacher_logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The teacher's hard pseudo-labels in the masked-loss target format (nothing ignored), ``like``'s dtype."""
        regions = self.label_manager.has_regions
        labels = hard_pseudo_labels(probabilities(teacher_logits.detach(), regions), regions)
        labels = labels if regions else labels[:, None]
        if self.largest_component:
            labels = largest_components(labels)
        everywhere = torch.ones_like(labels[:, :1], dtype=torch.bool)
        return with_ignored(labels.to(like.dtype), everywhere, regions, pseudo_label_ignore_value(self.label_manager))

    def compute_loss(self, data, target, data_unlabeled, batch, context):
        box = self.paste_box(data)
        if self.global_step < self.pretrain_steps:
            output, _ = self.network(with_partner(data, box))
            loss = self.loss(output, deep_supervision_targets(with_partner(full_resolution(target), box), output))
            return loss, {"sup": loss.detach(), "unsup": torch.zeros(()), "self_training": torch.zeros(()),
                          "unsup_weight": torch.zeros(())}

        n_l, n_u = data.shape[0], data_unlabeled.shape[0]
        into_unlabeled, into_labeled = direction_halves(n_u)
        images = torch.cat((paste(data[into_unlabeled % n_l], data_unlabeled[into_unlabeled], box),
                            paste(data_unlabeled[into_labeled], data[into_labeled % n_l], box)))
        output, teacher_output = self.network(images, data_unlabeled)

        labeled = as_masked_target(full_resolution(target), self.label_manager)
        pseudo = self.pseudo_labels(full_resolution(teacher_output), labeled)
        mixed = torch.cat((paste(labeled[into_unlabeled % n_l], pseudo[into_unlabeled], box),
                           paste(pseudo[into_labeled], labeled[into_labeled % n_l], box)))
        from_unlabeled = torch.cat((~box.expand(len(into_unlabeled), *box.shape[1:]),
                                    box.expand(len(into_labeled), *box.shape[1:])))
        regions, ignore = self.label_manager.has_regions, pseudo_label_ignore_value(self.label_manager)
        sup = self.masked_loss(output, deep_supervision_targets(
            also_ignored(mixed, from_unlabeled, regions, ignore), output))
        unsup = self.masked_loss(output, deep_supervision_targets(
            also_ignored(mixed, ~from_unlabeled, regions, ignore), output))
        weight = self.unlabeled_weight * self.rampup()
        return sup + weight * unsup, {"sup": sup.detach(), "unsup": unsup.detach(), "self_training": torch.ones(()),
                                      "unsup_weight": torch.tensor(weight)}

    def after_optimizer_step(self, context):
        if self.global_step == self.pretrain_steps - 1:
            self.network_module.update_teacher(0.0)  # the teacher starts as the pre-trained network
        elif self.global_step >= self.pretrain_steps:
            self.network_module.update_teacher(self.ema_decay)


class nnUNetTrainerBCP_paper(nnUNetTrainerBCP):
    """The released ACDC schedule (a quarter of the steps pre-training) and pseudo-label post-processing (largest
    connected component per class)."""
    pretrain_fraction = 0.25
    largest_component = True
