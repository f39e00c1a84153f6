import glob
import math
import os

import numpy as np
import pytest
import torch

from conftest import bin_path, clone_dataset, run_cli
from e2e import output_folder, train_resume_predict
from helpers import Recording, tiny_configuration, tiny_unet, trainer_stub
from nnunet_ssl.data.strong_views import STRONG_VIEW_KEY, StrongIntensity, StrongView, strong_intensity_transforms
from nnunet_ssl.networks.containers import TwoNetworks
from nnunet_ssl.networks.feature_perturbation import (ChannelDropout, TwoNetworksWithFeaturePerturbation,
                                                      UniformFeatureNoise)
from nnunet_ssl.blocks.mixing import CutMix
from nnunet_ssl.blocks.pseudo_labels import confident_pseudo_labels, with_ignored
from nnunet_ssl.nnunet_internals import masked_segmentation_loss, pseudo_label_ignore_value
from nnunet_ssl.trainers.base import PassContext
from nnunet_ssl.trainers.cmems import nnUNetTrainerCMEMS


# ---- the masked loss of pseudo-labels --------------------------------------------------------------------------
@pytest.mark.parametrize("regions", [False, True])
def test_masked_loss_ignores_unconfident_voxels(regions):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    labels, confident = confident_pseudo_labels(torch.randn(2, 3, 6, 6) * 4, 0.9, regions)
    assert 0 < confident.sum() < confident.numel()
    loss = masked_segmentation_loss(regions, batch_dice=True, ignore_label=3)
    target = with_ignored(labels.float() if not regions else labels, confident, regions, 3)
    loss(logits, target).backward()
    ignored_grad = logits.grad * ~confident
    assert ignored_grad.abs().sum() == 0 and logits.grad.abs().sum() > 0
    changed = logits.detach() + 5 * torch.randn_like(logits) * ~confident  # change only ignored voxels
    assert loss(changed, target).item() == pytest.approx(loss(logits.detach(), target).item(), rel=1e-6)


# ---- strong views ------------------------------------------------------------------------------------------------
def weak_and_strong(trainer, dim, seed=0):
    """One unlabeled patch through the trainer's unlabeled transforms (rotation always on, so geometry changes)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    patch = (12,) * dim
    transforms = trainer.get_unlabeled_transforms(patch, (-math.pi, math.pi), tuple(range(dim)), False)
    transforms.transforms[0].transforms[0].p_rotation = 1.0  # the spatial transform of nnU-Net's pipeline
    blob = torch.zeros((1,) + (20,) * dim)
    blob[(0,) + (slice(4, 12),) * dim] = 3.0
    out = transforms(image=blob + 0.5 * torch.rand_like(blob))
    return out["image"], out[STRONG_VIEW_KEY]


@pytest.mark.parametrize("dim", [2, 3])
def test_strong_view_is_an_intensity_remap_of_the_weak_view_with_the_same_geometry(dim):
    """Without blur and noise the strong view is a monotone function of the weak view: nothing moved."""
    remap_only = StrongIntensity(p_brightness=1, p_contrast=1, p_gamma=1, p_blur=0, p_noise=0)
    trainer = trainer_without_data(strong_intensity=remap_only)
    for seed in range(4):
        weak, strong = weak_and_strong(trainer, dim, seed)
        assert weak.shape == strong.shape == (1,) + (12,) * dim
        in_weak_order = strong.flatten()[weak.flatten().argsort()]
        assert (in_weak_order[1:] - in_weak_order[:-1] >= -1e-5).all()
        assert not torch.allclose(weak, strong)


def test_strong_view_without_perturbations_is_an_exact_copy_and_the_weak_view_is_untouched():
    nothing = StrongIntensity(p_brightness=0, p_contrast=0, p_gamma=0, p_blur=0, p_noise=0)
    trainer = trainer_without_data(strong_intensity=nothing)
    weak, strong = weak_and_strong(trainer, 2)
    assert torch.equal(weak, strong) and weak.data_ptr() != strong.data_ptr()

    image = torch.randn(1, 10, 10)
    out = StrongView(strong_intensity_transforms(StrongIntensity(p_blur=1, p_noise=1)))(image=image.clone())
    assert torch.equal(out["image"], image) and not torch.allclose(out[STRONG_VIEW_KEY], image)


# ---- feature perturbation ----------------------------------------------------------------------------------------
def test_channel_dropout_drops_whole_channels_in_training_only():
    torch.manual_seed(0)
    x = torch.rand(4, 16, 5, 5) + 1
    dropout = ChannelDropout(0.5)
    y = dropout(x)
    ratio = (y / x).flatten(2)
    assert torch.all((ratio == 0) | torch.isclose(ratio, torch.tensor(2.0)))
    assert torch.all(ratio.min(2).values == ratio.max(2).values)  # a channel is dropped or kept as a whole
    assert 0 < (ratio[..., 0] == 0).float().mean() < 1
    assert dropout.eval()(x) is x


def test_uniform_noise_scales_each_element_by_at_most_r_in_training_only():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)
    noise = UniformFeatureNoise(0.3)
    y = noise(x)
    assert not torch.equal(y, x) and torch.all((y - x).abs() <= 0.3 * x.abs() + 1e-6)
    assert noise.eval()(x) is x


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dim", [2, 3])
def test_feature_perturbation_changes_predictions_only_in_training_and_adds_no_parameters(dim, residual):
    torch.manual_seed(0)
    net1, net2 = (tiny_unet(dim, "residual" if residual else "plain") for _ in range(2))
    plain = TwoNetworks(net1, net2)
    net = TwoNetworksWithFeaturePerturbation(net1, net2, [ChannelDropout(0.5), UniformFeatureNoise(0.3)])
    assert net.state_dict().keys() == plain.state_dict().keys() and net.pretrainable_unets() == [net1]
    x = torch.randn((3, 1) + (8,) * dim)

    (out1, perturbed1), (out2, perturbed2) = net.train()(x, n_perturbed=2)
    ref1, ref2 = plain.train()(x)
    for out, perturbed, ref in ((out1, perturbed1, ref1), (out2, perturbed2, ref2)):
        assert all(torch.allclose(o, r, atol=1e-5) for o, r in zip(out, ref))  # clean output unchanged
        assert [p.shape[0] for p in perturbed] == [2 * 2] * len(ref)
        for part in perturbed[0].split(2):  # perturbed features of the last two samples
            assert not torch.allclose(part, ref[0][1:], atol=1e-3)
    assert all(torch.allclose(o, r, atol=1e-5) for o, r in zip(net(x)[0], ref1))  # n_perturbed = 0

    net.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(net(x)[0], plain(x)[0]) and torch.equal(net(x)[0], net1(x)[0])


def test_trainer_builds_two_differently_initialised_unets_that_predict_one_tensor():
    cm = tiny_configuration(2)
    net = nnUNetTrainerCMEMS.build_network_architecture(None, cm, 1, 3, enable_deep_supervision=False)
    assert [type(p) for p in net.perturbations] == [ChannelDropout, UniformFeatureNoise]
    assert not torch.equal(next(net.net1.parameters()), next(net.net2.parameters()))
    with torch.no_grad():
        out = net.eval()(torch.randn(2, 1, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 16, 16)
    without = type("NoFP", (nnUNetTrainerCMEMS,), {"feature_dropout": 0, "feature_noise": 0})
    assert len(without.build_network_architecture(None, cm, 1, 3).perturbations) == 0


# ---- the trainer's step ------------------------------------------------------------------------------------------
def trainer_without_data(regions=False, **attributes):
    """A CMEMS trainer holding only what compute_loss and the unlabeled transforms need (no plans, no data)."""
    torch.manual_seed(0)
    heads = 2 if regions else 3
    network = TwoNetworksWithFeaturePerturbation(tiny_unet(classes=heads), tiny_unet(classes=heads),
                                                 [ChannelDropout(0.5), UniformFeatureNoise(0.3)])
    trainer = trainer_stub(nnUNetTrainerCMEMS, network, regions, classes=heads, epoch=3, num_epochs=8, **attributes)
    trainer.masked_loss = masked_segmentation_loss(regions, True, pseudo_label_ignore_value(trainer.label_manager))
    return trainer


def step_inputs(regions, n_l=2, n_u=3, spatial=(16, 16)):
    """Exemplar patches far from the unlabeled ones in intensity, and strong views that differ per sample, so that
    pasted and mixed voxels can be recognised in the network input."""
    torch.manual_seed(1)
    data = torch.randn(n_l, 1, *spatial) + 100
    seg = torch.rand(n_l, 2, *spatial) > 0.5 if regions else torch.randint(0, 3, (n_l, 1, *spatial)).to(torch.int16)
    target = [seg, seg[(..., *[slice(None, None, 2)] * len(spatial))]]
    weak = torch.randn(n_u, 1, *spatial)
    strong = torch.randn(n_u, 1, *spatial) + 10 * torch.arange(1, n_u + 1).view(-1, *[1] * (len(spatial) + 1))
    return data, target, weak, {"unlabeled": {"data": weak, STRONG_VIEW_KEY: strong}}


@pytest.mark.parametrize("regions", [False, True])
def test_step_supervises_each_network_with_the_other_networks_pseudo_labels_on_pasted_and_mixed_views(regions):
    trainer = trainer_without_data(regions, confidence_threshold=0.6, cutmix=CutMix(probability=1.0))
    trainer.network = Recording(trainer.network)
    calls = []
    masked_loss = trainer.masked_loss
    trainer.masked_loss = lambda logits, target: calls.append((logits, target)) or masked_loss(logits, target)
    data, target, weak, batch = step_inputs(regions)
    n_l, n_u = data.shape[0], weak.shape[0]
    total, terms = trainer.compute_loss(data, target, weak, batch, PassContext())

    x, outputs = trainer.network.input, trainer.network.outputs
    synthetic, strong = x[n_l:n_l + n_u], x[n_l + n_u:n_l + 2 * n_u]
    assert torch.equal(x[n_l + 2 * n_u:], weak)
    source = torch.arange(n_u) % n_l
    pasted = synthetic == data[source]  # where the exemplar's image content is
    assert pasted.flatten(1).sum(1).tolist() == [11 * 11] * n_u  # 2/3 of each side of the 16 x 16 patch
    assert torch.equal(synthetic[~pasted], weak[~pasted])
    mixed = strong != batch["unlabeled"][STRONG_VIEW_KEY]
    assert mixed.any() and torch.equal(strong[mixed], batch["unlabeled"][STRONG_VIEW_KEY].roll(1, 0)[mixed])

    exemplar = target[0][source]
    if regions:
        exemplar = torch.cat((exemplar, torch.zeros_like(exemplar[:, :1])), 1)
    pseudo = []
    for out, _ in outputs:
        labels, confident = confident_pseudo_labels(out[0][n_l + 2 * n_u:n_l + 3 * n_u], 0.6, regions)
        assert 0 < confident.sum() < confident.numel()
        pseudo.append(with_ignored(labels.to(exemplar.dtype), confident, regions, 3))
    assert len(calls) == 2 * 4  # per network: synthetic, strong, two feature perturbations
    for k, other in ((0, 1), (1, 0)):
        (syn_logits, syn_target), (img_logits, img_target), *fp = calls[4 * k:4 * k + 4]
        full, perturbed = outputs[k][0][0], outputs[k][1][0]
        assert torch.equal(syn_logits, full[n_l:n_l + n_u]) and torch.equal(img_logits, full[n_l + n_u:n_l + 2 * n_u])
        # the synthetic label is the exemplar's exactly where its image content was pasted, else pseudo-labels
        assert torch.equal(syn_target, torch.where(pasted, exemplar, pseudo[other]))
        assert torch.equal(img_target, torch.where(mixed, pseudo[other].roll(1, 0), pseudo[other]))
        assert perturbed.shape[0] == 2 * n_u
        for j, (fp_logits, fp_target) in enumerate(fp):
            assert torch.equal(fp_logits, perturbed[j * n_u:(j + 1) * n_u]) and torch.equal(fp_target, pseudo[other])

    weight = trainer.rampup()
    assert terms["unsup_weight"].item() == pytest.approx(weight) and 0 < weight < 1
    expected = 2 * (terms["sup"] + terms["syn"] + weight * (0.5 * terms["img"] + 0.5 * terms["fp"]))
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def one_batch_decode(unet, x, n_perturbed, perturbations):
    """The straightforward formula: the clean skips and their perturbed tails concatenated into one batch, decoded
    at once, the output split into the clean part and the perturbed one."""
    skips = [torch.cat([s] + [perturb(s[-n_perturbed:]) for perturb in perturbations]) for s in unet.encoder(x)]
    output = unet.decoder(skips)
    return [o[:len(x)] for o in output], [o[len(x):] for o in output]


@pytest.mark.parametrize("dim", [2, 3])
def test_step_losses_and_gradients_are_those_of_one_batch_decoding(monkeypatch, dim):
    trainer = trainer_without_data(confidence_threshold=0.6, cutmix=CutMix(probability=1.0))
    if dim == 3:
        torch.manual_seed(0)
        trainer.network = TwoNetworksWithFeaturePerturbation(tiny_unet(3), tiny_unet(3),
                                                             [ChannelDropout(0.5), UniformFeatureNoise(0.3)])
    data, target, weak, batch = step_inputs(False, spatial=(16, 16) if dim == 2 else (8, 16, 16))
    results = []
    for decode in (None, one_batch_decode):
        if decode is not None:
            monkeypatch.setattr("nnunet_ssl.networks.feature_perturbation.decode_with_perturbed_features", decode)
        trainer.network.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        total, terms = trainer.compute_loss(data, target, weak, batch, PassContext())
        total.backward()
        results.append((total, terms, [p.grad for p in trainer.network.parameters()]))
    (total, terms, grads), (expected_total, expected_terms, expected_grads) = results
    assert total.item() == pytest.approx(expected_total.item(), rel=1e-5)
    for name in ("sup", "syn", "img", "fp", "confident"):
        assert terms[name].item() == pytest.approx(expected_terms[name].item(), rel=1e-5, abs=1e-7), name
    assert expected_terms["fp"].item() > 0 and 0 < expected_terms["confident"].item() < 1
    for grad, expected in zip(grads, expected_grads):
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_every_parameter_of_both_networks_gets_a_gradient():
    trainer = trainer_without_data()
    data, target, weak, batch = step_inputs(False)
    total, _ = trainer.compute_loss(data, target, weak, batch, PassContext())
    total.backward()
    for name, parameter in trainer.network.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_one_exemplar_patch_serves_every_unlabeled_patch():
    trainer = trainer_without_data(feature_dropout=0)
    data, target, weak, batch = step_inputs(False, n_l=1, n_u=3)
    total, terms = trainer.compute_loss(data, target, weak, batch, PassContext())
    assert torch.isfinite(total) and set(terms) == {"sup", "syn", "img", "fp", "confident", "unsup_weight"}


# ---- nnU-Net's commands, exemplar setting ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exemplar_env(ssl_env):
    """Dataset990 cloned as 993 with a split of exactly one labeled case per fold (unlabeled cases from the split)."""
    clone_dataset(ssl_env, 993, "Exemplar")
    run_cli([bin_path("nnunet_ssl_split"), "-d", "993", "--num-labeled", "1"], ssl_env)
    return ssl_env


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_cmems_trains_from_one_labeled_case_resumes_and_predicts(exemplar_env, tmp_path, configuration):
    checkpoint = train_resume_predict(exemplar_env, "nnUNetTrainerCMEMS", configuration, tmp_path, dataset_id=993)
    assert {k.split(".")[0] for k in checkpoint["network_weights"]} == {"net1", "net2"}
    assert {"sup", "syn", "img", "fp", "confident", "unsup_weight"} <= set(checkpoint["logging"])
    folder = output_folder(exemplar_env, "nnUNetTrainerCMEMS_tiny", configuration, dataset_id=993)
    first_log = sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[0]
    with open(first_log) as f:
        log = f.read()
    assert "This split has 1 training and" in log
    assert "Semi-supervised training: " in log and " 0 unlabeled cases" not in log
