"""Deep Mutual Distillation, DMD (Xie, Yin, Li, Wang, MICCAI 2023; code SilenceMonk/Dual-Mutual-Distillation).

Two nnU-Net U-Nets of the same architecture, initialised independently (the only perturbation between them), are
trained together with one optimizer. Each is supervised on the labeled patches, and each distils into the other on
all patches (labeled and unlabeled) through temperature-softened, high-entropy predictions ``softmax(z / T)``. The
distillation loss is a soft Dice rather than KL, so the networks are not forced to agree voxel by voxel in
ambiguous regions. It is symmetric: neither side is detached, so both networks learn from it.

    L = sup(z1, y) + sup(z2, y) + lambda * D(softmax(z1 / T), softmax(z2 / T))

Paper and released code, LA setting: lambda = 4, T = 2, no ramp-up (``nnUNetTrainerDMD_paper``). Our default ramps
lambda up with the field's sigmoid over the whole training (``rampup_fraction = 1``): with lambda = 4 on a
scale-invariant Dice from the first step, "both networks predict nothing" is a cheap state, and a network that finds
a structure first is held back until the other follows (on the tests' synthetic data the paper setting reached
validation Dice 0.78 where nnUNetTrainer reached 0.90 and the ramped default 0.90; the Hippocampus validation runs
are in benchmarks/RESULTS.md).

Our choices and deviations:

* ``sup`` is nnU-Net's Dice+CE with deep supervision (Dice+BCE for region datasets). The released code uses a
  Dice-only loss. That loss also has a broadcasting bug: ``dice_loss(outputs_soft[:labeled_bs], label)`` multiplies
  a (B, 1, D, H, W) prediction by a (B, D, H, W) label. The product broadcasts to (B, B, D, H, W), so the
  intersection compares every prediction with every label of the labeled sub-batch. We compute the intended
  per-class Dice.
* ``D`` takes the released code's Dice (SASSNet ``dice_loss``): ``1 - (2 sum pq + s) / (sum p^2 + sum q^2 + s)``
  with s = 1e-5. Squared terms are in the denominator, and sums run over the whole batch and all voxels. It is
  computed per channel and averaged over channels (see :func:`nnunet_ssl.blocks.distillation.soft_dice_loss`). With identical inputs the
  numerator and denominator are the same floating-point number, so the loss is exactly 0. The paper's binary case
  (one sigmoid output) becomes the paper's eq. 4 ``softmax(z / T)`` over nnU-Net's channels. Only the foreground
  channels are distilled (``distill_background``). For a two-class softmax this is exactly the released sigmoid
  form, because ``softmax(z / T)[1] = sigmoid((z1 - z0) / T)``. Region (sigmoid) datasets use ``sigmoid(z / T)``
  per region channel, as the paper does for binary problems.
* Distillation at full resolution only; ``distill_deep_supervision = True`` adds it at every deep-supervision
  scale, weighted like nnU-Net's supervised deep-supervision terms (the paper's V-Net has no deep supervision).
* ``distillation = 'kl'`` reproduces the paper's ablation: the two-way KL of the temperature-softened predictions
  (:func:`nnunet_ssl.blocks.distillation.kl_distillation`). As in the released ``--kd_type kl`` it uses no T^2 factor and no detach. Unlike that
  code, ours is the full categorical (or per-region Bernoulli) KL, where the released code keeps only the
  foreground term ``p log(p / q)`` of its single sigmoid channel.
* nnU-Net's training recipe: SGD with Nesterov, momentum 0.99, poly lr, one optimizer over both networks, with
  gradients clipped jointly at norm 12. No dropout; the released V-Net uses dropout 0.5.
* ``-pretrained_weights`` initialises network 1 only; network 2 keeps its random initialisation, since that
  difference is DMD's only perturbation (``pretrained_networks = 'all'`` loads both).
* Inference uses network 1, as the released code saves only ``model_1`` (``inference = 'first'``); ``'mean'``
  averages the logits of both networks, ``'second'`` uses network 2.
"""
import torch

from nnunet_ssl.blocks.distillation import dice_distillation, kl_distillation
from nnunet_ssl.blocks.outputs import batch_part, full_resolution
from nnunet_ssl.networks.containers import TwoNetworks
from nnunet_ssl.trainers.base import nnUNetTrainerSSLBase
from nnunet_ssl.trainers.settings import BOOLEAN, above, at_least, one_of


class nnUNetTrainerDMD(nnUNetTrainerSSLBase):
    #: lambda, the weight of the distillation term, reached by the sigmoid ramp-up over ``rampup_fraction``
    distillation_weight = 4.0
    #: T, the softening temperature of both networks' predictions
    temperature = 2.0
    #: 'dice' (DMD) or 'kl' (the paper's ablation)
    distillation = "dice"
    #: also distil at the deep-supervision scales (weighted like nnU-Net's supervised terms)
    distill_deep_supervision = False
    #: include the softmax background channel in the distillation Dice
    distill_background = False
    #: smoothing term of the distillation Dice (SASSNet / DMD code)
    dice_smooth = 1e-5

    settings_checks = {"distillation_weight": at_least(0), "temperature": above(0),
                       "distillation": one_of("dice", "kl"), "distill_deep_supervision": BOOLEAN,
                       "distill_background": BOOLEAN, "dice_smooth": at_least(0)}

    @classmethod
    def build_ssl_network(cls, new_unet):
        return TwoNetworks(new_unet(), new_unet(), inference=cls.inference,
                           pretrained=cls.pretrained_networks)  # two initialisations

    def distillation_term(self, logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
        regions = self.label_manager.has_regions
        if self.distillation == "kl":
            return kl_distillation(logits1, logits2, self.temperature, regions)
        return dice_distillation(logits1, logits2, self.temperature, regions, self.distill_background,
                                 self.dice_smooth)

    def distillation_loss(self, out1, out2) -> torch.Tensor:
        """The distillation term at full resolution, or at every deep-supervision scale."""
        if self.distill_deep_supervision and isinstance(out1, (list, tuple)):
            return sum(w * self.distillation_term(a, b) for w, a, b in zip(self.loss.weight_factors, out1, out2))
        return self.distillation_term(full_resolution(out1), full_resolution(out2))

    def compute_loss(self, data, target, data_unlabeled, batch, context):
        out1, out2 = self.network(torch.cat((data, data_unlabeled)))
        labeled = slice(None, data.shape[0])
        sup1 = self.loss(batch_part(out1, labeled), target)
        sup2 = self.loss(batch_part(out2, labeled), target)
        distill = self.distillation_loss(out1, out2)
        total = sup1 + sup2 + self.distillation_weight * self.rampup() * distill
        return total, {"sup1": sup1.detach(), "sup2": sup2.detach(), "distill": distill.detach()}


class nnUNetTrainerDMD_paper(nnUNetTrainerDMD):
    """DMD as published: lambda = 4 from the first step, no ramp-up."""
    rampup_fraction = 0.0
