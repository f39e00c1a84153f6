"""UA-MT, uncertainty-aware mean teacher (Yu, Wang, Li, Fu, Heng, "Uncertainty-aware Self-ensembling Model for
Semi-supervised 3D Left Atrium Segmentation", MICCAI 2019; code yulequan/UA-MT
``train_LA_meanteacher_certainty_unlabel.py``, and SSL4MIS ``train_uncertainty_aware_mean_teacher_2D/3D.py``).

Mean Teacher (:mod:`nnunet_ssl.trainers.mean_teacher`: the student learns from the labels and from its EMA
teacher's predictions on the unlabeled patches), with the consistency restricted to the voxels where the teacher
is certain. The teacher makes T = 8 stochastic forward passes of each unlabeled patch, each with its own input noise
``clamp(N(0, 0.1), -0.2, 0.2)``; the uncertainty is the predictive entropy of their mean probabilities. A voxel
counts when its uncertainty is below a threshold that rises over training, so the student first learns from the
teacher's most reliable predictions and gradually from more of them:

    H = -sum_c mean_c log mean_c,  mask = H < (0.75 + 0.25 * rampup(t)) * ln C
    cons = sum(mask * (p_student - p_teacher)^2) / (C * sum(mask) + 1e-16)
    L = sup + w(t) * cons

As released: T = 8 passes, noise as above, the threshold ramp ``0.75 + 0.25 * sigmoid_rampup`` over the whole
training, the mask-normalised mean squared difference of the probabilities (``2 * sum(mask)`` in the code for its
two classes: the mean over the kept voxels and the channels), consistency weight 0.1 with the sigmoid ramp-up over
the whole training, EMA decay 0.99 with the ``1 - 1/(step + 1)`` warm-up (Mean Teacher's settings, inherited).

Our choices and deviations:

* C classes: the released threshold is ``ln 2``, the largest entropy of its two classes (SSL4MIS's 2D script keeps
  ``ln 2`` for ACDC's four). We use ``ln C``, the largest entropy of C classes, so the threshold is the same
  fraction of it for any dataset: the mask is ``H / ln C < 0.75 + 0.25 * rampup(t)``. Region datasets (sigmoid
  outputs) use the binary entropy averaged over the region channels, divided by ``ln 2``, and their sigmoid
  probabilities in the squared difference. The threshold follows the base's ramp-up (``rampup_fraction``), which
  is the released schedule, the whole training, by default.
* Stochasticity of the passes: the released V-Net has channel dropout (p = 0.5) on its bottleneck and on the
  last decoder features, in student and teacher alike, active in the teacher's passes too. nnU-Net's U-Net has
  no dropout and nnU-Net trains without it. Dropout on the teacher alone would sample a network the student never
  trained under, and dropout on both changes how the student learns (UA-DCT's p = 0.5 on the last features
  reached validation Dice 0.72 on the tests' synthetic data where p = 0.1 and nnUNetTrainer reached 0.90). Our
  default therefore draws the passes by input noise only (``mc_dropout_rate = 0``), the released code's other
  source of randomness; ``mc_dropout_rate = 0.5`` puts the V-Net's decoder dropout on the last decoder features of
  both U-Nets (:mod:`nnunet_ssl.networks.dropout`), where it also acts in the student's training forward.
* ``nnUNetTrainerUAMT_paper``: the released uncertainty, dropout 0.5 as above and the threshold on ``ln 2``
  whatever the number of classes.
* The consistency target is the teacher's first pass; the released code draws a ninth pass from the same
  distribution for it, which costs one more teacher forward. The passes run ``mc_chunk_size`` at a time, batched.
* Student: nnU-Net's U-Net, Dice+CE with deep supervision on the labeled patches (the code: (Dice + CE) / 2, no
  deep supervision); consistency at full resolution only. nnU-Net's optimizer and schedule.
* Inference: the student, as the code saves and tests ``model`` (``inference = 'first'``); ``'second'`` predicts
  with the teacher, ``'mean'`` with the mean of both logits.
* ``cutmix`` (Mean Teacher's option, off by default) mixes the student's unlabeled patches with their batch
  neighbours; the teacher's target and certainty mask, computed on the unmixed patches, are mixed alike.
* Logged: ``sup``, ``cons``, ``cons_weight``, ``certain`` (the share of unlabeled voxels the mask keeps) and
  ``uncertainty`` (the mean normalised entropy).
"""
import math

import torch

from nnunet_ssl.blocks.consistency import masked_probability_mse
from nnunet_ssl.blocks.mixing import mixed_with_partners
from nnunet_ssl.blocks.outputs import batch_part, full_resolution, probabilities
from nnunet_ssl.blocks.uncertainty import certainty_mask, normalized_entropy
from nnunet_ssl.networks.containers import StudentTeacher
from nnunet_ssl.networks.dropout import add_head_dropout
from nnunet_ssl.trainers.mean_teacher import nnUNetTrainerMeanTeacher
from nnunet_ssl.trainers.settings import count, fraction


class nnUNetTrainerUAMT(nnUNetTrainerMeanTeacher):
    #: T, stochastic forward passes of the teacher per step (the first is the consistency target)
    mc_samples = 8
    #: teacher passes per batched forward (bounds the memory of the passes)
    mc_chunk_size = 4
    #: channel dropout on the last decoder features of student and teacher (the released V-Net: 0.5); 0 = the
    #: passes differ by input noise only
    mc_dropout_rate = 0.0
    #: the uncertainty threshold, as a fraction of the largest entropy, rises from start to end with the ramp-up
    threshold_start = 0.75
    threshold_end = 1.0

    settings_checks = {"mc_samples": count(1), "mc_chunk_size": count(1),
                       "mc_dropout_rate": fraction(closed_above=False), "threshold_start": fraction(),
                       "threshold_end": fraction()}

    @classmethod
    def build_ssl_network(cls, new_unet):
        student = new_unet()
        if cls.mc_dropout_rate > 0:
            add_head_dropout(student, cls.mc_dropout_rate, keep_input=False)  # the teacher, a copy, gets it too
        return StudentTeacher(student, inference=cls.inference)

    def uncertainty_threshold(self) -> float:
        return self.threshold_start + (self.threshold_end - self.threshold_start) * self.rampup()

    @torch.no_grad()
    def teacher_passes(self, data_unlabeled: torch.Tensor):
        """``(target, mean)``: the teacher's probabilities in its first noisy pass and their mean over
        ``mc_samples`` passes, each pass with its own input noise, ``mc_chunk_size`` passes per batched forward."""
        regions, n = self.label_manager.has_regions, data_unlabeled.shape[0]
        target, total = None, 0
        for start in range(0, self.mc_samples, self.mc_chunk_size):
            k = min(self.mc_chunk_size, self.mc_samples - start)
            copies = data_unlabeled.repeat(k, *(1,) * (data_unlabeled.ndim - 1))
            _, teacher_out = self.network(None, self.teacher_input(copies))
            passes = probabilities(full_resolution(teacher_out), regions).unflatten(0, (k, n))
            target = passes[0] if target is None else target
            total = total + passes.sum(0)
        return target, total / self.mc_samples

    def compute_loss(self, data, target, data_unlabeled, batch, context):
        regions = self.label_manager.has_regions
        student_unlabeled, onto_student = mixed_with_partners(self.cutmix, data_unlabeled)
        teacher_target, teacher_mean = map(onto_student, self.teacher_passes(data_unlabeled))
        student_out, _ = self.network(torch.cat((data, student_unlabeled)))
        n = data.shape[0]
        sup = self.loss(batch_part(student_out, slice(None, n)), target)
        mask = certainty_mask(teacher_mean, self.uncertainty_threshold(), regions)
        cons = masked_probability_mse(full_resolution(student_out)[n:], teacher_target, mask, regions)
        weight = self.consistency_weight * self.rampup()
        return sup + weight * cons, {"sup": sup.detach(), "cons": cons.detach(), "cons_weight": torch.tensor(weight),
                                     "certain": mask.mean(), "uncertainty": normalized_entropy(teacher_mean,
                                                                                               regions).mean()}


class nnUNetTrainerUAMT_paper(nnUNetTrainerUAMT):
    """UA-MT's released uncertainty: channel dropout p = 0.5 on the last decoder features of student and teacher
    (the V-Net's decoder dropout; its bottleneck dropout is not added), so the teacher's passes differ by dropout as
    well as by input noise, and the threshold ``(0.75 + 0.25 * rampup(t)) * ln 2`` on the entropy whatever the
    number of classes (the release's two classes; SSL4MIS's 2D script keeps it for ACDC's four): with more than
    two classes it keeps fewer voxels than the default's fraction of ``ln C``."""
    mc_dropout_rate = 0.5

    def uncertainty_threshold(self) -> float:
        # the mask compares entropy / ln C (binary entropy / ln 2 per region) with the threshold
        classes = 2 if self.label_manager.has_regions else self.label_manager.num_segmentation_heads
        return super().uncertainty_threshold() * math.log(2) / math.log(classes)
