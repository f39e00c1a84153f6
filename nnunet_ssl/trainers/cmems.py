"""CMEMS: Cross-model Mutual learning for Exemplar-based Medical image Segmentation (En & Guo, AISTATS 2024,
arXiv 2404.11812), reconstructed: no code was released and only the abstract could be read.

Setting: one annotated case (the exemplar; more also work) and unlabeled cases. Two U-Nets of the same structure
(nnU-Net's, from the plans, independently initialised) learn from each other:

* supervised: each network on the exemplar patches, nnU-Net's Dice+CE with deep supervision;
* synthetic data: exemplar content pasted into unlabeled patches, supervised like labeled data (below);
* cross-model image perturbation: each network's confident pseudo-labels on the weak view of an unlabeled patch
  supervise the other network's prediction on the strong view of it;
* cross-model multi-level feature perturbation: the same pseudo-labels supervise the other network's predictions
  decoded from perturbed features of the weak view at every resolution.

Pseudo-labels carry no gradient; the weak-view predictions are used only to make them.

Our choices where the paper is unknown (all class attributes):

* weak view = nnU-Net's training augmentation of the unlabeled patch, as for the labeled patches; strong view = the
  weak view plus strong intensity perturbations (:class:`~nnunet_ssl.data.strong_views.StrongIntensity`) and,
  with probability 0.5, a CutMix box from the previous unlabeled patch of the batch (UniMatch's ``cutmix_box``: volume
  fraction 0.02-0.4, here with equal relative sides), the pseudo-labels mixed with the same box. With one
  unlabeled patch per step the CutMix is a no-op;
* pseudo-labels: argmax (regions: p > 0.5), used where the confidence (max probability; regions: every region's
  max(p, 1-p)) reaches 0.95 (FixMatch/UniMatch); the rest is ignored. Pseudo-label terms use nnU-Net's Dice+CE
  (Dice+BCE for regions) with ignored voxels, at full resolution;
* feature perturbation: CCT's channel dropout (p 0.5) and uniform feature noise (x + x U(-0.3, 0.3)) on every skip
  and the bottleneck of the weak view, each decoded by the network's own decoder (no extra parameters); the term
  is the mean over both perturbations;
* synthetic pairs (the copy-paste of BCP, in one direction): a box of 2/3 of each side of an exemplar patch (image
  and label) pasted at the same place into a weak-view unlabeled patch (BCP draws one box per batch, we draw one
  per sample); outside the box the label is the other network's confident pseudo-label, the rest ignored; one
  synthetic pair per unlabeled patch (exemplar patches reused cyclically), supervised at full resolution;
* weights (UniMatch's balance: labeled 1, image perturbation 0.5, feature perturbation 0.5; synthetic 1 as labeled
  data); the two perturbation terms ramp up with the base's sigmoid ramp-up over the whole training (SSL4MIS);
* ``-pretrained_weights`` initialises network 1 only; network 2 keeps its random initialisation, so that the
  two networks' pseudo-labels differ (``pretrained_networks = 'all'`` loads both);
* inference: network 1 (``inference = 'mean'`` averages both, ``'second'`` uses network 2).

Per step and network: one encoder pass over exemplar + synthetic + strong + weak patches, one decoder pass over
those and one over the perturbed weak features (``B_l + 3 B_u`` encoder and ``B_l + 5 B_u`` decoder samples).
"""
from typing import Tuple

import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

from nnunet_ssl.blocks.mixing import CutMix, paste, random_boxes, with_partner
from nnunet_ssl.blocks.outputs import batch_part, full_resolution
from nnunet_ssl.blocks.pseudo_labels import confident_pseudo_labels, with_ignored
from nnunet_ssl.data.strong_views import STRONG_VIEW_KEY, StrongIntensity, StrongView, strong_intensity_transforms
from nnunet_ssl.nnunet_internals import as_masked_target, masked_segmentation_loss, pseudo_label_ignore_value
from nnunet_ssl.networks.feature_perturbation import (ChannelDropout, TwoNetworksWithFeaturePerturbation,
                                                      UniformFeatureNoise)
from nnunet_ssl.trainers.base import nnUNetTrainerSSLBase
from nnunet_ssl.trainers.settings import at_least, cutmix_setting, fraction, instance_of


class nnUNetTrainerCMEMS(nnUNetTrainerSSLBase):
    confidence_threshold = 0.95
    image_perturbation_weight = 0.5
    feature_perturbation_weight = 0.5
    synthetic_weight = 1.0
    strong_intensity = StrongIntensity()
    cutmix = CutMix()
    #: side of the pasted exemplar box relative to the patch, per axis (BCP's 2/3)
    paste_side_fraction = 2 / 3
    #: channel dropout probability on the features (0 disables this perturbation)
    feature_dropout = 0.5
    #: half-width r of the multiplicative feature noise U(-r, r) (0 disables this perturbation)
    feature_noise = 0.3

    settings_checks = {"confidence_threshold": fraction(), "image_perturbation_weight": at_least(0),
                       "feature_perturbation_weight": at_least(0), "synthetic_weight": at_least(0),
                       "strong_intensity": instance_of(StrongIntensity), "cutmix": cutmix_setting(),
                       "paste_side_fraction": fraction(),
                       "feature_dropout": fraction(closed_above=False), "feature_noise": at_least(0)}
    renamed_settings = {**nnUNetTrainerSSLBase.renamed_settings, "cutmix_probability": "cutmix",
                        "cutmix_volume": "cutmix"}

    @classmethod
    def build_ssl_network(cls, new_unet):
        perturbations = ([ChannelDropout(cls.feature_dropout)] if cls.feature_dropout > 0 else []) + \
                        ([UniformFeatureNoise(cls.feature_noise)] if cls.feature_noise > 0 else [])
        return TwoNetworksWithFeaturePerturbation(new_unet(), new_unet(), perturbations, inference=cls.inference,
                                                  pretrained=cls.pretrained_networks)

    def initialize(self):
        super().initialize()
        self.masked_loss = masked_segmentation_loss(self.label_manager.has_regions,
                                                    self.configuration_manager.batch_dice,
                                                    pseudo_label_ignore_value(self.label_manager))

    def get_unlabeled_transforms(self, patch_size, rotation_for_DA, mirror_axes, do_dummy_2d_data_aug):
        """nnU-Net's augmentation (the weak view, ``image``), then a strongly perturbed copy (``image_strong``)."""
        weak = super().get_unlabeled_transforms(patch_size, rotation_for_DA, mirror_axes, do_dummy_2d_data_aug)
        return ComposeTransforms([weak, StrongView(strong_intensity_transforms(self.strong_intensity),
                                                   mask_channels=self.mask_for_norm_channels())])

    def pseudo_label_target(self, logits: torch.Tensor, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The confident pseudo-labels of ``logits`` as a masked-loss target of ``like``'s dtype, and the
        fraction of confident voxels."""
        regions = self.label_manager.has_regions
        labels, confident = confident_pseudo_labels(logits, self.confidence_threshold, regions)
        target = with_ignored(labels.to(like.dtype), confident, regions, pseudo_label_ignore_value(self.label_manager))
        return target, confident.float().mean()

    def compute_loss(self, data, target, data_unlabeled, batch, context):
        n_l, n_u, spatial, device = data.shape[0], data_unlabeled.shape[0], data.shape[2:], data.device
        mix = self.cutmix.boxes_for(data_unlabeled)
        strong = with_partner(self.to_device(batch["unlabeled"][STRONG_VIEW_KEY]), mix)
        pasted = random_boxes(torch.full((n_u,), self.paste_side_fraction, device=device), spatial)
        source = torch.arange(n_u, device=device) % n_l
        synthetic = paste(data[source], data_unlabeled, pasted)

        # per network: (output over exemplar, synthetic, strong, weak; output per feature perturbation of the weak)
        outputs = self.network(torch.cat((data, synthetic, strong, data_unlabeled)), n_perturbed=n_u)
        # per network: synthetic, strong, weak, then one part per feature perturbation (full resolution)
        views = [full_resolution(out).split([n_l] + [n_u] * 3)[1:]
                 + (() if perturbed is None else full_resolution(perturbed).split(n_u)) for out, perturbed in outputs]
        exemplar = as_masked_target(full_resolution(target), self.label_manager)[source]
        pseudo = [self.pseudo_label_target(v[2], exemplar) for v in views]

        terms = {name: [] for name in ("sup", "syn", "img", "fp")}
        for k, other in ((0, 1), (1, 0)):
            labels = pseudo[other][0]
            terms["sup"].append(self.loss(batch_part(outputs[k][0], slice(None, n_l)), target))
            terms["syn"].append(self.masked_loss(views[k][0], paste(exemplar, labels, pasted)))
            terms["img"].append(self.masked_loss(views[k][1], with_partner(labels, mix)))
            perturbed = [self.masked_loss(v, labels) for v in views[k][3:]]
            terms["fp"].append(torch.stack(perturbed).mean() if perturbed else data.new_zeros(()))
        sums = {name: sum(values) for name, values in terms.items()}
        weight = self.rampup()
        total = sums["sup"] + self.synthetic_weight * sums["syn"] + weight * (
            self.image_perturbation_weight * sums["img"] + self.feature_perturbation_weight * sums["fp"])
        logged = {name: value.detach() / 2 for name, value in sums.items()}
        logged["confident"] = (pseudo[0][1] + pseudo[1][1]) / 2
        logged["unsup_weight"] = torch.tensor(weight)
        return total, logged
