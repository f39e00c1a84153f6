"""UA-DCT, uncertainty-aware deep co-training (Zheng et al., "Uncertainty-Aware Deep Co-training for
Semi-supervised Medical Image Segmentation", Computers in Biology and Medicine 149, 2022; arXiv 2111.11629).

From the paper (only its abstract and overview figure could be read; no code was released): two complete
segmentation networks are co-trained, and labeled and unlabeled batches go through both. Monte Carlo dropout gives
an uncertainty map that guides the supervised loss on the labeled predictions. A second Monte Carlo dropout map
guides a cross-model consistency loss between the two networks' predictions on the unlabeled images. The two
losses are weighted "according to the characteristics" of supervised and unsupervised learning, and they are
back-propagated jointly.

Everything else is our reconstruction. Each item is a class attribute:

* Networks: two nnU-Net U-Nets from the plans, initialised independently, trained with nnU-Net's one optimizer and
  one backward of all terms; ``-pretrained_weights`` initialises network 1 only, network 2 keeping its random
  initialisation so that the co-trained networks differ (``pretrained_networks = 'all'`` loads both). Channel
  dropout (``mc_dropout_rate``) sits on the last decoder feature map, where UA-MT puts its decoder dropout (see
  :mod:`nnunet_ssl.networks.dropout`). It is active in the training forward too, so its rate also perturbs what the
  networks learn from: our default p = 0.1; UA-MT's p = 0.5, which we first took, is ``nnUNetTrainerUADCT_paper``
  (UA-DCT's own rate is not published). With p = 0.5 half of the last features are dropped in every training
  forward; on the tests' synthetic data it reached validation Dice 0.72 where nnUNetTrainer reached 0.90 and
  p = 0.1 0.91 (a tenfold smaller consistency weight did not help: 0.75). The Hippocampus validation runs are in
  benchmarks/RESULTS.md.
* Uncertainty: ``mc_samples`` = 8 Monte Carlo dropout samples (UA-MT's T) per network. The training forward is
  one of them, and the other T - 1 come from the head alone, without gradient, ``mc_chunk_size`` at a time.
  ``u`` is the normalised predictive entropy of their mean, in [0, 1] (:func:`normalized_entropy`).
* Supervised term, per network: nnU-Net's Dice+CE with deep supervision, with the voxel weight of the
  full-resolution cross-entropy raised from 1 to ``1 + supervised_uncertainty_gain * u``, using the network's own
  ``u`` on the labeled patches. Uncertain regions get more attention; Dice is unweighted.
* Consistency term, per network: its full-resolution logits on the unlabeled patches against the other network's
  Monte Carlo mean prediction, detached. With ``consistency_loss = 'ce'`` the target is the other network's hard
  pseudo-label (argmax, or > 0.5 per region); with ``'mse'`` it is the other network's probabilities. The voxel
  weight is ``exp(-consistency_uncertainty_decay * u)``, so uncertain pseudo-labels count less. By default
  (``consistency_uncertainty = 'joint'``) ``u`` comes from both networks' samples pooled, one map as in the
  figure; with ``'target'`` each term uses the map of the network that gives the target.
* Total: ``sup_1 + sup_2 + consistency_weight * rampup * (cons_1 + cons_2)``. ``consistency_weight`` = 1, the
  scale of a cross-entropy pseudo-label term (CPS); the field's 0.1 belongs to MSE terms. ``rampup`` is the field's
  sigmoid ramp over ``rampup_fraction`` of training.
* Inference: network 1, or the mean of both with ``inference = 'mean'`` (``'second'``: network 2).
* Logged: ``sup`` and ``cons`` are the means over the two networks (the loss has their sums).
"""
import torch

from nnunet_ssl.blocks.outputs import batch_part, full_resolution, probabilities
from nnunet_ssl.blocks.pseudo_labels import pseudo_label_ce
from nnunet_ssl.blocks.uncertainty import normalized_entropy, probability_mse, uncertainty_downweight
from nnunet_ssl.networks.containers import TwoNetworks
from nnunet_ssl.networks.dropout import add_head_dropout, head_dropout_samples, take_head_input
from nnunet_ssl.nnunet_internals import uncertainty_supervised_loss
from nnunet_ssl.trainers.base import nnUNetTrainerSSLBase
from nnunet_ssl.trainers.settings import at_least, count, fraction, one_of


CONSISTENCY_LOSSES = {"ce": pseudo_label_ce, "mse": probability_mse}
CONSISTENCY_UNCERTAINTIES = ("joint", "target")


class nnUNetTrainerUADCT(nnUNetTrainerSSLBase):
    #: channel-dropout probability on the last decoder features (UA-MT's decoder dropout)
    mc_dropout_rate = 0.1
    #: Monte Carlo samples per network and step, the training forward included (UA-MT's T)
    mc_samples = 8
    #: Monte Carlo samples per batched head call (memory bound)
    mc_chunk_size = 4
    #: labeled full-resolution CE voxel weight 1 + gain * u
    supervised_uncertainty_gain = 1.0
    #: unlabeled consistency voxel weight exp(-decay * u)
    consistency_uncertainty_decay = 1.0
    #: 'ce' (hard pseudo-label of the other network) or 'mse' (its probabilities)
    consistency_loss = "ce"
    #: 'joint' (entropy of both networks' pooled samples) or 'target' (of the network that gives the target)
    consistency_uncertainty = "joint"
    #: maximum consistency weight, reached by the sigmoid ramp-up
    consistency_weight = 1.0

    settings_checks = {"mc_dropout_rate": fraction(closed_above=False), "mc_samples": count(1),
                       "mc_chunk_size": count(1), "supervised_uncertainty_gain": at_least(0),
                       "consistency_uncertainty_decay": at_least(0), "consistency_loss": one_of(*CONSISTENCY_LOSSES),
                       "consistency_uncertainty": one_of(*CONSISTENCY_UNCERTAINTIES), "consistency_weight": at_least(0)}

    @classmethod
    def build_ssl_network(cls, new_unet):
        unets = [add_head_dropout(new_unet(), cls.mc_dropout_rate) for _ in range(2)]
        return TwoNetworks(*unets, inference=cls.inference, pretrained=cls.pretrained_networks)

    def mc_mean_probabilities(self, unet, logits: torch.Tensor) -> torch.Tensor:
        """Mean probabilities over ``mc_samples`` dropout samples of ``unet``, without gradient: the training
        forward's full-resolution ``logits`` and ``mc_samples - 1`` samples of the head on that forward's input."""
        regions = self.label_manager.has_regions
        total = probabilities(logits.detach(), regions)
        for chunk in head_dropout_samples(unet, take_head_input(unet), self.mc_samples - 1, self.mc_chunk_size):
            total += probabilities(chunk, regions, channel_dim=2).sum(1)
        return total / self.mc_samples

    def losses(self, data, target, data_unlabeled):
        """``(supervised, consistency, terms to log)`` for one step, before weighting, with their graphs: one
        training forward of both networks over the labeled and unlabeled patches, plus the Monte Carlo samples."""
        regions, ignore_label = self.label_manager.has_regions, self.label_manager.ignore_label
        labeled, unlabeled = slice(None, data.shape[0]), slice(data.shape[0], None)
        outputs = self.network(torch.cat((data, data_unlabeled)))
        unets = (self.network_module.net1, self.network_module.net2)
        means = [self.mc_mean_probabilities(unet, full_resolution(out)) for unet, out in zip(unets, outputs)]

        sup_uncertainties = [normalized_entropy(mean[labeled], regions) for mean in means]
        sup = sum(uncertainty_supervised_loss(self.loss, batch_part(out, labeled), target, u,
                                              self.supervised_uncertainty_gain, regions, ignore_label)
                  for out, u in zip(outputs, sup_uncertainties))

        targets = (means[1][unlabeled], means[0][unlabeled])  # each network learns from the other
        if self.consistency_uncertainty == "joint":
            joint = normalized_entropy((targets[0] + targets[1]) / 2, regions)
            cons_uncertainties = (joint, joint)
        else:
            cons_uncertainties = tuple(normalized_entropy(t, regions) for t in targets)
        consistency = CONSISTENCY_LOSSES[self.consistency_loss]
        cons = sum(consistency(full_resolution(out)[unlabeled], t,
                               uncertainty_downweight(u, self.consistency_uncertainty_decay), regions)
                   for out, t, u in zip(outputs, targets, cons_uncertainties))

        terms = {"uncertainty_labeled": torch.stack([u.mean() for u in sup_uncertainties]).mean(),
                 "uncertainty_unlabeled": torch.stack([u.mean() for u in cons_uncertainties]).mean()}
        return sup, cons, terms

    def compute_loss(self, data, target, data_unlabeled, batch, context):
        sup, cons, terms = self.losses(data, target, data_unlabeled)
        weight = self.consistency_weight * self.rampup()
        return sup + weight * cons, {"sup": sup.detach() / 2, "cons": cons.detach() / 2,
                                     "cons_weight": torch.tensor(weight), **terms}


class nnUNetTrainerUADCT_paper(nnUNetTrainerUADCT):
    """UA-DCT as first reconstructed, with UA-MT's decoder dropout rate p = 0.5 (UA-DCT's own is not published)."""
    mc_dropout_rate = 0.5
