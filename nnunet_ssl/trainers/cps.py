"""CPS, cross pseudo supervision (Chen, Yuan, Zeng, Wang, "Semi-Supervised Semantic Segmentation with Cross Pseudo
Supervision", CVPR 2021; code charlesCXK/TorchSemiSeg, and SSL4MIS ``train_cross_pseudo_supervision_2D/3D.py`` for
medical images).

Two segmentation networks of the same architecture, initialised differently (the only perturbation between them),
see the same patches. Each is supervised on the labeled patches by the ground truth, and each is supervised by the
other's hard pseudo-label, the one-hot argmax of the other's prediction, through a cross-entropy. The pseudo-label
is a class index, so no gradient flows through it: network 1 learns from network 2's decision and vice versa.

    L = sup(z1, y) + sup(z2, y) + lambda * (CE(z1, argmax z2) + CE(z2, argmax z1))

Settings. The paper and TorchSemiSeg apply the pseudo supervision to every patch, labeled and unlabeled, with
lambda = 1.5 (PASCAL VOC) and no ramp-up (``nnUNetTrainerCPS_paper``). SSL4MIS, which runs CPS on medical images
(ACDC, LA), uses lambda = 0.1 with the field's sigmoid ramp-up over the whole training; our default follows it
(``cps_weight = 0.1``, ``rampup_fraction = 1``), the medical setting, on every patch as in the paper (SSL4MIS
applies it to the unlabeled patches only: ``cps_on_labeled = False``).

Our choices and deviations:

* Networks: two nnU-Net U-Nets from the plans (plain or residual-encoder), not DeepLabv3+ or SSL4MIS's U-Net;
  ``-pretrained_weights`` initialises network 1 only, network 2 keeping its own random initialisation, since that
  difference is all CPS relies on (``pretrained_networks = 'all'`` loads both). One nnU-Net optimizer over both
  networks (the code keeps two SGD optimizers with the same schedule: the same steps, except that nnU-Net clips the
  joint gradient norm at 12).
* ``sup`` is nnU-Net's Dice+CE with deep supervision, per network (the paper: CE; SSL4MIS: (Dice + CE) / 2).
* The pseudo supervision is at full resolution only, its CE averaged over the voxels of all patches it covers.
  Region datasets (sigmoid outputs) use the other network's ``p > 0.5`` per region channel and the binary CE.
* Inference: network 1, as SSL4MIS evaluates ``model1`` (``inference = 'first'``); ``'second'`` predicts with
  network 2 and ``'mean'`` with the mean of both networks' logits (the paper reports either network).
* Logged: ``sup1``, ``sup2``, ``cps1`` (network 1's CE against network 2's pseudo-label), ``cps2``, ``cps_weight``.
"""
import torch

from nnunet_ssl.blocks.outputs import batch_part, full_resolution, probabilities
from nnunet_ssl.blocks.pseudo_labels import pseudo_label_ce
from nnunet_ssl.networks.containers import TwoNetworks
from nnunet_ssl.trainers.base import nnUNetTrainerSSLBase
from nnunet_ssl.trainers.settings import BOOLEAN, at_least


def cross_pseudo_supervision(logits1: torch.Tensor, logits2: torch.Tensor, regions: bool):
    """``(CE(z1, argmax z2), CE(z2, argmax z1))``: each network's loss against the other's hard pseudo-label, averaged
    over the voxels; no gradient reaches the pseudo-labels."""
    p1, p2 = (probabilities(logits.detach(), regions) for logits in (logits1, logits2))
    return pseudo_label_ce(logits1, p2, 1.0, regions), pseudo_label_ce(logits2, p1, 1.0, regions)


class nnUNetTrainerCPS(nnUNetTrainerSSLBase):
    #: lambda, the weight of the pseudo supervision, reached by the sigmoid ramp-up over ``rampup_fraction``
    cps_weight = 0.1
    #: pseudo-supervise the labeled patches too (the paper), or only the unlabeled ones (SSL4MIS)
    cps_on_labeled = True

    settings_checks = {"cps_weight": at_least(0), "cps_on_labeled": BOOLEAN}

    @classmethod
    def build_ssl_network(cls, new_unet):
        return TwoNetworks(new_unet(), new_unet(), inference=cls.inference, pretrained=cls.pretrained_networks)

    def compute_loss(self, data, target, data_unlabeled, batch, context):
        out1, out2 = self.network(torch.cat((data, data_unlabeled)))
        labeled = slice(None, data.shape[0])
        sup1 = self.loss(batch_part(out1, labeled), target)
        sup2 = self.loss(batch_part(out2, labeled), target)
        pseudo_supervised = slice(None) if self.cps_on_labeled else slice(data.shape[0], None)
        cps1, cps2 = cross_pseudo_supervision(full_resolution(out1)[pseudo_supervised],
                                              full_resolution(out2)[pseudo_supervised], self.label_manager.has_regions)
        weight = self.cps_weight * self.rampup()
        total = sup1 + sup2 + weight * (cps1 + cps2)
        return total, {"sup1": sup1.detach(), "sup2": sup2.detach(), "cps1": cps1.detach(), "cps2": cps2.detach(),
                       "cps_weight": torch.tensor(weight)}


class nnUNetTrainerCPS_paper(nnUNetTrainerCPS):
    """CPS as published (TorchSemiSeg, PASCAL VOC): lambda = 1.5 from the first step, on every patch."""
    cps_weight = 1.5
    rampup_fraction = 0.0
