"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017), as the SSL medical-imaging field runs it (UA-MT, SSL4MIS).

The student is nnU-Net's U-Net, trained with nnU-Net's Dice+CE (deep supervision) on the labeled patches and a
consistency loss on the unlabeled ones: the mean squared difference between the student's and the teacher's
probabilities, the teacher seeing the same patch plus small Gaussian noise. The teacher is an exponential moving
average of the student. Choices follow SSL4MIS ``train_mean_teacher_*.py``: EMA decay 0.99 with the
``1 - 1/(step + 1)`` warm-up, consistency weight 0.1 with the sigmoid ramp-up over the whole training, noise
``clamp(N(0, 0.1), -0.2, 0.2)``, consistency at full resolution only. Inference uses the student
(``inference = 'first'``; ``'second'`` the teacher, ``'mean'`` the mean of both logits).
``-pretrained_weights`` initialises the student and the teacher alike: the teacher, an average of the student,
starts equal to it.

Mean Teacher + CutMix (French, Laine, Aila, Mackiewicz, Finlayson, "Semi-supervised semantic segmentation needs
strong, varied perturbations", BMVC 2020; off by default, ``cutmix = None``): the student sees each unlabeled
patch mixed with its batch neighbour inside a CutMix box, the teacher the unmixed patches, and its prediction is
mixed with the same boxes into the consistency target. UA-MT inherits the option (its certainty mask is mixed
alike).
"""
from typing import Optional

import torch

from nnunet_ssl.blocks import ema
from nnunet_ssl.blocks.consistency import full_resolution_mse
from nnunet_ssl.blocks.mixing import CutMix, mixed_with_partners
from nnunet_ssl.blocks.outputs import batch_part, full_resolution
from nnunet_ssl.networks.containers import StudentTeacher
from nnunet_ssl.trainers.base import nnUNetTrainerSSLBase
from nnunet_ssl.trainers.settings import at_least, cutmix_setting, fraction, optional


class nnUNetTrainerMeanTeacher(nnUNetTrainerSSLBase):
    ema_decay = 0.99
    consistency_weight = 0.1
    teacher_noise_std = 0.1
    teacher_noise_clip = 0.2
    #: None, or the CutMix of the student's unlabeled patches with their batch neighbours (Mean Teacher + CutMix)
    cutmix: Optional[CutMix] = None

    settings_checks = {"ema_decay": fraction(), "consistency_weight": at_least(0), "teacher_noise_std": at_least(0),
                       "teacher_noise_clip": at_least(0), "cutmix": optional(cutmix_setting())}

    @classmethod
    def build_ssl_network(cls, new_unet):
        return StudentTeacher(new_unet(), inference=cls.inference)

    def teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus the teacher's input noise ``clamp(N(0, std), -clip, clip)``."""
        return x + torch.clamp(torch.randn_like(x) * self.teacher_noise_std, -self.teacher_noise_clip,
                               self.teacher_noise_clip)

    def compute_loss(self, data, target, data_unlabeled, batch, context):
        student_unlabeled, onto_student = mixed_with_partners(self.cutmix, data_unlabeled)
        student_out, teacher_out = self.network(torch.cat((data, student_unlabeled)),
                                                self.teacher_input(data_unlabeled))
        n = data.shape[0]
        sup = self.loss(batch_part(student_out, slice(None, n)), target)
        cons = full_resolution_mse(batch_part(student_out, slice(n, None)), onto_student(full_resolution(teacher_out)),
                                   self.label_manager.has_regions)
        weight = self.consistency_weight * self.rampup()
        return sup + weight * cons, {"sup": sup.detach(), "cons": cons.detach(), "cons_weight": torch.tensor(weight)}

    def after_optimizer_step(self, context):
        self.network_module.update_teacher(ema.ema_decay(self.global_step, self.ema_decay))
