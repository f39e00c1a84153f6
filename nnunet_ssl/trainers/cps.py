"""CPS, cross pseudo supervision (Chen, Yuan, Zeng, Wang, "Semi-Supervised Semantic Segmentation with Cross Pseudo
Supervision", CVPR 2021; code charlesCXK/TorchSemiSeg, and SSL4MIS ``train_cross_pseudo_supervision_2D/3D.py`` for
medical images).

Two segmentation networks of the same architecture, initialised differently (the only perturbation between them),
see the same patches. Each is supervised on the labeled patches by the ground truth, and each is supervised by the
other's hard pseudo-label, the one-hot argmax of the other's prediction, through a cross-entropy. The pseudo-label
is a class index, so no gradient flows through it: network 1 learns from network 2's decision and vice versa.

    L = sup(z1, y) + sup(z2, y) + lambda * (CE(z1, argmax z2) + CE(z2, argmax z1))

Default: CPS + CutMix, the paper's stronger setting (below), at lambda = 1 with the field's sigmoid ramp-up over
the whole training (``cps_weight = 1.0``, ``rampup_fraction = 1``, ``cutmix = CutMix(1.0, (0.25, 0.5))``), chosen
on the validation cases of the label-efficiency protocol (Hippocampus 2d, 2 labeled cases, fold 0; RESULTS.md):
validation Dice 0.754 against 0.690 for SSL4MIS's medical setting (lambda = 0.1 ramped, no CutMix; our earlier
default) and 0.702 for lambda = 1 without CutMix; labeled-only nnUNetTrainer 0.689. Without CutMix the two
networks, seeing the same patches, agreed so well that the pseudo supervision hardly acted (its CE ended at 0.02).
The paper's setting without CutMix (TorchSemiSeg, PASCAL VOC: lambda = 1.5 from the first step, on every patch,
labeled and unlabeled) is ``nnUNetTrainerCPS_paper``; SSL4MIS applies the pseudo supervision to the unlabeled
patches only (``cutmix = None, cps_on_labeled = False``).

Our choices and deviations:

* Networks: two nnU-Net U-Nets from the plans (plain or residual-encoder), not DeepLabv3+ or SSL4MIS's U-Net;
  ``-pretrained_weights`` initialises network 1 only, network 2 keeping its own random initialisation, since that
  difference is all CPS relies on (``pretrained_networks = 'all'`` loads both). One nnU-Net optimizer over both
  networks (the code keeps two SGD optimizers with the same schedule: the same steps, except that nnU-Net clips the
  joint gradient norm at 12).
* ``sup`` is nnU-Net's Dice+CE with deep supervision, per network (the paper: CE; SSL4MIS: (Dice + CE) / 2).
* The pseudo supervision is at full resolution only, its CE averaged over the voxels of all patches it covers.
  Region datasets (sigmoid outputs) use the other network's ``p > 0.5`` per region channel and the binary CE.
* CPS + CutMix, the paper's stronger setting (TorchSemiSeg ``CPS+CutMix``: lambda = 1, no ramp-up; ``cutmix``):
  each unlabeled patch is mixed with its batch neighbour inside a CutMix box (the code: a second unlabeled batch;
  three boxes of random aspect ratio covering 25-50 % of the image, always applied); the pseudo-labels are each
  network's predictions on the unmixed patches (a forward without gradient), mixed with the same boxes, and the
  pseudo supervision covers the mixed unlabeled patches only (``cps_on_labeled`` does not apply). We use one box
  with equal relative sides (:class:`~nnunet_ssl.blocks.mixing.CutMix`, as UniMatch), for 2d and 3d alike.
* Inference: network 1, as SSL4MIS evaluates ``model1`` (``inference = 'first'``); ``'second'`` predicts with
  network 2 and ``'mean'`` with the mean of both networks' logits (the paper reports either network).
* Logged: ``sup1``, ``sup2``, ``cps1`` (network 1's CE against network 2's pseudo-label), ``cps2``, ``cps_weight``.
"""
from typing import Optional, Tuple

import torch

from nnunet_ssl.blocks.mixing import CutMix, mixed_with_partners
from nnunet_ssl.blocks.outputs import batch_part, full_resolution, probabilities
from nnunet_ssl.blocks.pseudo_labels import pseudo_label_ce
from nnunet_ssl.networks.containers import TwoNetworks
from nnunet_ssl.trainers.base import nnUNetTrainerSSLBase
from nnunet_ssl.trainers.settings import BOOLEAN, at_least, cutmix_setting, optional


def cross_pseudo_supervision(logits1: torch.Tensor, logits2: torch.Tensor, regions: bool,
                             targets: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
    """``(CE(z1, argmax t2), CE(z2, argmax t1))``: each network's loss against the other's hard pseudo-label,
    averaged over the voxels; the pseudo-labels come from ``targets`` (t1, t2), the networks' logits on the same
    content (CPS + CutMix: on the unmixed patches, mixed afterwards), by default from (z1, z2) themselves. No
    gradient reaches the pseudo-labels."""
    t1, t2 = targets if targets is not None else (logits1, logits2)
    p1, p2 = (probabilities(logits.detach(), regions) for logits in (t1, t2))
    return pseudo_label_ce(logits1, p2, 1.0, regions), pseudo_label_ce(logits2, p1, 1.0, regions)


class nnUNetTrainerCPS(nnUNetTrainerSSLBase):
    #: lambda, the weight of the pseudo supervision, reached by the sigmoid ramp-up over ``rampup_fraction``
    cps_weight = 1.0
    #: without CutMix: pseudo-supervise the labeled patches too (the paper), or only the unlabeled ones (SSL4MIS)
    cps_on_labeled = True
    #: CPS + CutMix: the CutMix of each unlabeled patch with its batch neighbour (the released boxes cover 25-50 %
    #: of the image, always), or None for CPS without CutMix
    cutmix: Optional[CutMix] = CutMix(probability=1.0, volume=(0.25, 0.5))

    settings_checks = {"cps_weight": at_least(0), "cps_on_labeled": BOOLEAN, "cutmix": optional(cutmix_setting())}

    @classmethod
    def build_ssl_network(cls, new_unet):
        return TwoNetworks(new_unet(), new_unet(), inference=cls.inference, pretrained=cls.pretrained_networks)

    def compute_loss(self, data, target, data_unlabeled, batch, context):
        targets = None
        if self.cutmix is not None:  # pseudo-labels from the unmixed patches, mixed like the networks' input
            mixed, onto_mixed = mixed_with_partners(self.cutmix, data_unlabeled)
            with torch.no_grad():
                targets = tuple(onto_mixed(full_resolution(out)) for out in self.network(data_unlabeled))
            data_unlabeled = mixed
        out1, out2 = self.network(torch.cat((data, data_unlabeled)))
        labeled = slice(None, data.shape[0])
        sup1 = self.loss(batch_part(out1, labeled), target)
        sup2 = self.loss(batch_part(out2, labeled), target)
        on_labeled = self.cps_on_labeled and self.cutmix is None
        pseudo_supervised = slice(None) if on_labeled else slice(data.shape[0], None)
        cps1, cps2 = cross_pseudo_supervision(full_resolution(out1)[pseudo_supervised],
                                              full_resolution(out2)[pseudo_supervised], self.label_manager.has_regions,
                                              targets)
        weight = self.cps_weight * self.rampup()
        total = sup1 + sup2 + weight * (cps1 + cps2)
        return total, {"sup1": sup1.detach(), "sup2": sup2.detach(), "cps1": cps1.detach(), "cps2": cps2.detach(),
                       "cps_weight": torch.tensor(weight)}


class nnUNetTrainerCPS_paper(nnUNetTrainerCPS):
    """CPS as published without CutMix (TorchSemiSeg, PASCAL VOC): lambda = 1.5 from the first step, on every
    patch."""
    cps_weight = 1.5
    rampup_fraction = 0.0
    cutmix = None
