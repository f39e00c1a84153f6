"""LeFeD (Zeng et al., "Discrepancy Matters: Learning from Inconsistent Decoder Features for Consistent
Semi-supervised Medical Image Segmentation", 2023), following the released code (maxwell0027/LeFeD ``train.py``,
``networks/my_net.py``) on nnU-Net's plans-built U-Net.

One encoder and two differentiated decoders (:mod:`nnunet_ssl.networks.lefed`): decoder 1 is nnU-Net's decoder,
decoder 2 upsamples by interpolation + conv and gates its skips with decoder 1's features. Each batch (nnU-Net's
labeled patches + as many unlabeled ones, one concatenated forward) runs ``passes_per_batch`` passes (the base's
loop), each forward -> loss -> backward -> optimizer step (``optimizer_step_per_pass = False``: one optimizer step
per batch, on the gradient of the passes' mean loss). The first pass has no feedback; every later pass adds
``feedback_scale * (f2 - f1)`` of the previous pass's decoder features (detached) to the encoder's stage outputs.
The loss of every pass is nnU-Net's supervised loss (Dice+CE, deep supervision) on the labeled part for both
decoders, plus ``consistency_weight`` times the mean squared difference of the two decoders' probabilities over
the whole batch. Prediction: decoder 1 without feedback, i.e. the plain nnU-Net U-Net inside, which is also what
``-pretrained_weights`` initialises (decoder 2, of another kind, keeps its random initialisation).

As the released code: feedback scale 1e-3 at every stage including the bottleneck (whose term is ``1e-3 * b *
sigmoid(b)``), detached sigmoid gates, interpolation with ``align_corners=True``, consistency weight 1 without
ramp-up (``rampup_fraction = 0``; a positive value ramps the consistency weight up with the base's sigmoid),
inference with decoder 1 (its latest commit; ``inference = 'mean'`` averages both decoders' logits, the earlier
behaviour; ``'second'`` uses decoder 2).

**Our default runs one pass per batch, so without feedback** (``passes_per_batch = 1``), chosen on the validation
cases of the label-efficiency protocol (Hippocampus 2d, 2 labeled cases, fold 0; benchmarks/RESULTS.md): one pass
reached validation Dice 0.708, the released 3 passes with an optimizer step each (3x nnU-Net's optimizer steps per
epoch; ``nnUNetTrainerLeFeD_paper``) 0.653, 3 passes with their feedback and one optimizer step per batch 0.668,
against nnUNetTrainer's 0.689. The default's own run of the same settings then scored 0.649: two LeFeD runs differ
by more than these settings do, so the choice rests on nnU-Net's step count (one optimizer step per batch) more than
on the scores. The two decoders and their consistency stay; the feedback mechanism is in
``nnUNetTrainerLeFeD_paper`` (or any ``passes_per_batch > 1``).

Our choices and deviations (nnU-Net conventions where the released code's V-Net differs):

* backbone: nnU-Net's U-Net from the plans (PlainConvUNet / ResidualEncoderUNet, InstanceNorm, LeakyReLU,
  concatenated skips, 5-7 stages) instead of a 5-level V-Net (BatchNorm, ReLU, added skips); no dropout (the code
  uses 0.3 on the bottleneck and 0.5 before each output conv); decoder 1's transposed convs have no norm/ReLU;
  decoder 2 has nnU-Net's conv stages; its upsampling conv uses the skip stage's kernel size (3 in the code);
* features compared: the upsampled features before skip fusion, per decoder stage, matched to the encoder stage
  of the skip they are fused with (as the code), generalised to any number of stages;
* supervised loss: nnU-Net's Dice+CE with its deep supervision (heads on the fused stage outputs, weights 1, 1/2,
  1/4, ...) for *both* decoders, instead of foreground Dice for both decoders plus weighted Dice deep supervision
  (side convs on the pre-fusion features) for decoder 1 only;
* consistency at full resolution (as the code), in float32, with sigmoids instead of softmax for region datasets;
* optimizer, schedule and batch: nnU-Net's (SGD 1e-2, momentum 0.99, poly decay per epoch; the plans' batch of
  labeled patches plus as many unlabeled) instead of SGD 0.01 / momentum 0.9 / wd 1e-4 / x0.1 every 2,500 batches
  and 2 labeled + 2 unlabeled patches;
* the feedback is kept in float32 under mixed precision; it passes from one pass to the next in the base's
  :class:`~nnunet_ssl.trainers.base.PassContext` (``carry['feedback']``).

The logged terms (``sup1``, ``sup2``, ``cons``, ``discrepancy`` = mean |f2 - f1| over stages, unscaled) and the
loss are means over the passes of a batch.
"""
import torch

from nnunet_ssl.blocks.consistency import full_resolution_mse
from nnunet_ssl.blocks.outputs import batch_part
from nnunet_ssl.networks.lefed import LeFeDNetwork, feature_discrepancy
from nnunet_ssl.trainers.base import nnUNetTrainerSSLBase
from nnunet_ssl.trainers.settings import at_least


class nnUNetTrainerLeFeD(nnUNetTrainerSSLBase):
    #: alpha: scale of the decoder-feature discrepancy fed back to the encoder
    feedback_scale = 1e-3
    #: K: forward/backward/optimizer-step passes per batch; the first one without feedback (the released code: 3)
    passes_per_batch = 1
    #: maximum consistency weight, reached by the sigmoid ramp-up (none: ``rampup_fraction = 0``, as released)
    consistency_weight = 1.0
    rampup_fraction = 0.0

    settings_checks = {"feedback_scale": at_least(0), "consistency_weight": at_least(0)}

    @classmethod
    def build_ssl_network(cls, new_unet):
        return LeFeDNetwork(new_unet(), inference=cls.inference)

    def compute_loss(self, data, target, data_unlabeled, batch, context):
        """One pass over labeled + unlabeled patches; passes after the first feed the previous pass's decoder
        discrepancy back into the encoder."""
        feedback = context.carry.get("feedback")
        out1, out2, features1, features2 = self.network(torch.cat((data, data_unlabeled)), feedback)
        labeled = slice(None, data.shape[0])
        sup1 = self.loss(batch_part(out1, labeled), target)
        sup2 = self.loss(batch_part(out2, labeled), target)
        cons = full_resolution_mse(out1, out2, self.label_manager.has_regions)
        differences = feature_discrepancy(features1, features2)
        if not context.is_last:
            context.carry["feedback"] = [self.feedback_scale * d for d in differences]
        terms = {"sup1": sup1.detach(), "sup2": sup2.detach(), "cons": cons.detach(),
                 "discrepancy": torch.stack([d.abs().mean() for d in differences]).mean()}
        return sup1 + sup2 + self.consistency_weight * self.rampup() * cons, terms


class nnUNetTrainerLeFeD_paper(nnUNetTrainerLeFeD):
    """LeFeD as released: 3 passes per batch, the later two fed back the previous pass's decoder discrepancy, each
    pass with its own optimizer step."""
    passes_per_batch = 3
