import math

import pytest
import torch
import torch.nn.functional as F

from e2e import train_resume_predict
from helpers import Recording, assert_gradients_reach, tiny_unet, trainer_stub
from nnunet_ssl.trainers.base import PassContext
from nnunet_ssl.blocks.mixing import CutMix
from nnunet_ssl.blocks.pseudo_labels import confident_pseudo_labels
from nnunet_ssl.data.strong_views import STRONG_VIEW_KEY, StrongIntensity
from nnunet_ssl.networks.feature_perturbation import ChannelDropout, UNetWithFeaturePerturbation
from nnunet_ssl.trainers.unimatch import SECOND_STRONG_VIEW_KEY, nnUNetTrainerUniMatch

KEYS = (STRONG_VIEW_KEY, SECOND_STRONG_VIEW_KEY)


def unimatch_stub(regions=False, residual=False, **attributes):
    torch.manual_seed(0)
    classes = 2 if regions else 3
    unet = tiny_unet(2, "residual" if residual else "plain", classes)
    trainer = trainer_stub(nnUNetTrainerUniMatch, UNetWithFeaturePerturbation(unet, [ChannelDropout(0.5)]), regions,
                           classes, **attributes)
    trainer.build_unlabeled_loss()
    return trainer


def step_inputs(n_l=2, n_u=3, regions=False):
    """Strong views that differ per sample (offsets 10, 20, ...), so CutMix partners can be recognised."""
    torch.manual_seed(1)
    data = torch.randn(n_l, 1, 16, 16)
    seg = torch.rand(n_l, 2, 16, 16) > 0.5 if regions else torch.randint(0, 3, (n_l, 1, 16, 16)).to(torch.int16)
    target = [seg, seg[..., 1::2, 1::2]]
    weak = torch.randn(n_u, 1, 16, 16)
    offsets = torch.arange(1, n_u + 1).view(-1, 1, 1, 1)
    views = {key: torch.randn(n_u, 1, 16, 16) + 10 * k * offsets for k, key in enumerate(KEYS, 1)}
    return data, target, weak, {"unlabeled": {"data": weak, **views}}


def masked_soft_dice(logits, labels, keep):
    """An independent rewrite of the released unlabeled loss as nnU-Net's soft Dice computes it: minus the batch
    Dice of the foreground softmax channels over the voxels ``keep`` (smooth 1e-5), no cross-entropy."""
    p = logits.softmax(1)[:, 1:] * keep
    onehot = F.one_hot(labels[:, 0].long(), logits.shape[1]).movedim(-1, 1)[:, 1:] * keep
    return -((2 * (p * onehot).sum((0, 2, 3)) + 1e-5) / (p.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1e-5)).mean()


def test_network_is_a_plain_unet_for_checkpoints_and_prediction():
    torch.manual_seed(0)
    unet = tiny_unet(2, "residual", deep_supervision=False)
    network = UNetWithFeaturePerturbation(unet, [ChannelDropout(0.5)])
    assert network.state_dict().keys() == unet.state_dict().keys()
    fresh = tiny_unet(2, "residual", deep_supervision=False)
    fresh.load_state_dict(network.state_dict())
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(network.eval()(x, n_perturbed=2), fresh.eval()(x))


def test_step_feeds_labeled_cutmixed_strong_and_weak_views_and_decodes_dropped_weak_features():
    trainer = unimatch_stub(cutmix=CutMix(probability=1.0), confidence_threshold=0.4)
    trainer.network = Recording(trainer.network)
    calls = []
    unlabeled_loss = trainer.unlabeled_loss
    trainer.unlabeled_loss = lambda logits, target: calls.append((logits, target)) or unlabeled_loss(logits, target)
    data, target, weak, batch = step_inputs()
    n_l, n_u = 2, 3
    total, terms = trainer.compute_loss(data, target, weak, batch, PassContext())

    x = trainer.network.input
    assert torch.equal(x[:n_l], data) and torch.equal(x[n_l + 2 * n_u:], weak)
    mixed = []
    for k, key in enumerate(KEYS):
        view, original = x[n_l + k * n_u:n_l + (k + 1) * n_u], batch["unlabeled"][key]
        box = view != original
        assert box.any() and torch.equal(view[box], original.roll(1, 0)[box])
        mixed.append(box)
    assert not torch.equal(mixed[0], mixed[1]), "each strong view has its own CutMix box"

    output, perturbed = trainer.network.outputs
    weak_logits = output[0][n_l + 2 * n_u:]
    labels, confident = confident_pseudo_labels(weak_logits, 0.4, False)
    assert 0 < confident.sum() < confident.numel()
    pseudo = torch.where(confident, labels, 3)
    assert len(calls) == 3
    for k in range(2):
        logits, target_k = calls[k]
        assert torch.equal(logits, output[0][n_l + k * n_u:n_l + (k + 1) * n_u])
        assert torch.equal(target_k, torch.where(mixed[k], pseudo.roll(1, 0), pseudo))
    assert torch.equal(calls[2][0], perturbed[0]) and perturbed[0].shape[0] == n_u
    assert torch.equal(calls[2][1], pseudo)

    # hand values: soft Dice over the confident voxels, weights 1, 0.5, 0.5, 1
    fp = masked_soft_dice(perturbed[0], labels, confident)
    assert terms["fp"].item() == pytest.approx(fp.item(), rel=1e-5)
    s1 = masked_soft_dice(calls[0][0], calls[0][1].clamp(max=2), calls[0][1] != 3)
    s2 = masked_soft_dice(calls[1][0], calls[1][1].clamp(max=2), calls[1][1] != 3)
    assert terms["strong"].item() == pytest.approx(((s1 + s2) / 2).item(), rel=1e-5)
    sup = trainer.loss([o[:n_l] for o in output], target)
    assert total.item() == pytest.approx((sup + 0.5 * (s1 + s2) + fp).item(), rel=1e-5)
    assert terms["confident"].item() == pytest.approx(confident.float().mean().item())


@pytest.mark.parametrize("residual", [False, True])
def test_every_parameter_gets_a_gradient_and_the_pseudo_labels_none(residual):
    trainer = unimatch_stub(residual=residual, confidence_threshold=0.4)
    data, target, weak, batch = step_inputs()
    total, _ = trainer.compute_loss(data, target, weak, batch, PassContext())
    total.backward()
    assert_gradients_reach(trainer.network)
    # the weak view's own prediction only makes pseudo-labels: no loss term sends it a gradient
    trainer.network = Recording(trainer.network)
    total, _ = trainer.compute_loss(data, target, weak, batch, PassContext())
    (grad,) = torch.autograd.grad(total, trainer.network.outputs[0][0])
    n_l, n_u = 2, 3
    assert grad[n_l + 2 * n_u:].abs().sum() == 0 and grad[:n_l + 2 * n_u].abs().sum() > 0


def test_unlabeled_terms_have_full_weight_as_released_or_ramp_up_when_asked():
    data, target, weak, batch = step_inputs()
    for rampup_fraction, expected in ((0.0, 1.0), (1.0, math.exp(-5 * (1 - 3 / 8) ** 2))):  # epoch 3 of 8
        trainer = unimatch_stub(rampup_fraction=rampup_fraction)
        trainer.current_epoch, trainer.num_epochs = 3, 8
        _, terms = trainer.compute_loss(data, target, weak, batch, PassContext())
        assert terms["unsup_weight"].item() == pytest.approx(expected)


def test_regions_step_runs_with_ignore_channels():
    trainer = unimatch_stub(regions=True, confidence_threshold=0.55)
    data, target, weak, batch = step_inputs(regions=True)
    total, terms = trainer.compute_loss(data, target, weak, batch, PassContext())
    assert torch.isfinite(total) and 0 < terms["confident"] < 1


def test_unlabeled_transforms_make_two_independent_strong_views_of_the_weak_view():
    trainer = unimatch_stub(strong_intensity=StrongIntensity(p_brightness=1, p_contrast=1, p_gamma=0, p_blur=0,
                                                              p_noise=0))
    trainer.configuration_manager.use_mask_for_norm = [False]
    trainer.label_manager.foreground_regions = None
    trainer.label_manager.all_labels = [0, 1, 2]
    torch.manual_seed(0)
    transforms = trainer.get_unlabeled_transforms((12, 12), (0, 0), (), False)
    out = transforms(image=torch.rand(1, 12, 12) + 1)
    first, second = out[STRONG_VIEW_KEY], out[SECOND_STRONG_VIEW_KEY]
    assert first.shape == second.shape == out["image"].shape
    assert not torch.allclose(first, second) and not torch.allclose(first, out["image"])
    for view in (first, second):  # intensity remaps of the weak view: same ordering of the voxels
        ordered = view.flatten()[out["image"].flatten().argsort()]
        assert (ordered[1:] - ordered[:-1] >= -1e-5).all()


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_unimatch_trains_resumes_and_predicts(ssl_env, tmp_path, configuration):
    checkpoint = train_resume_predict(ssl_env, "nnUNetTrainerUniMatch", configuration, tmp_path)
    assert {k.split(".")[0] for k in checkpoint["network_weights"]} == {"encoder", "decoder"}
    assert {"sup", "strong", "fp", "confident"} <= set(checkpoint["logging"])
