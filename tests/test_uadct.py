import math

import pytest
import torch
from torch import nn

from e2e import train_resume_predict
from helpers import LN2, LN3, nnunet_loss, tiny_configuration, tiny_unet, trainer_stub, two_voxels
from nnunet_ssl.networks import pretrained
from nnunet_ssl.networks.containers import TwoNetworks
from nnunet_ssl.networks.dropout import (add_head_dropout, full_resolution_head, head_dropout_samples,
                                         take_head_input)
from nnunet_ssl.trainers.base import PassContext
from nnunet_ssl.blocks.uncertainty import normalized_entropy
from nnunet_ssl.nnunet_internals import uncertainty_supervised_loss
from nnunet_ssl.trainers.uadct import nnUNetTrainerUADCT
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss


def build(cls=nnUNetTrainerUADCT, dim=2, architecture="plain", classes=3):
    return cls.build_network_architecture(None, tiny_configuration(dim, architecture), 1, classes, True)


def stub_trainer(network, cls=nnUNetTrainerUADCT, epoch=0):
    """The trainer's own methods on a tiny network, without nnU-Net's dataset machinery; nnU-Net's Dice+CE with
    per-sample Dice and its deep-supervision weights for two outputs."""
    return trainer_stub(cls, network, epoch=epoch, num_epochs=10, loss=nnunet_loss(batch_dice=False, weights=[1, 0]))


# ---- uncertainty ------------------------------------------------------------------------------------------------
def mc_uncertainty(rate, head_weight_scale=1.0, head_bias=None):
    """Monte Carlo mean probabilities (T = 8) of a fresh tiny U-Net with the given head dropout rate, and the
    logits of its training forward."""
    torch.manual_seed(1)
    unet = add_head_dropout(tiny_unet(), rate).train()
    head = full_resolution_head(unet)
    with torch.no_grad():
        head.weight.mul_(head_weight_scale)
        if head_bias is not None:
            head.bias.copy_(torch.tensor(head_bias))
    logits = unet(torch.randn(2, 1, 16, 16))[0]
    return stub_trainer(unet).mc_mean_probabilities(unet, logits), logits


def test_mc_uncertainty_is_zero_for_identical_confident_passes_and_rises_with_dropout():
    # without dropout noise the T passes are identical: their mean is the single pass
    mean, logits = mc_uncertainty(0.0)
    assert torch.allclose(mean, torch.softmax(logits, 1), atol=1e-6)
    # identical confident passes: a head that ignores the (dropped) features and always says class 0
    mean, _ = mc_uncertainty(0.5, head_weight_scale=0.0, head_bias=[30.0, 0.0, 0.0])
    assert normalized_entropy(mean, False).max().item() < 1e-9
    # confident single passes (large head weights) that dropout makes disagree
    uncertainty = [normalized_entropy(mc_uncertainty(rate, 200.0)[0], False).mean().item()
                   for rate in (0.0, 0.25, 0.5, 0.75)]
    assert uncertainty == sorted(uncertainty) and uncertainty[-1] > uncertainty[0] + 0.5


class FixedChannelMask(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask


@pytest.mark.parametrize("dim", [2, 3])
def test_head_samples_equal_full_forward_passes_with_the_same_mask(dim):
    torch.manual_seed(0)
    unet = add_head_dropout(tiny_unet(dim), 0.5).train()
    head = full_resolution_head(unet)
    head.mc_dropout.dropout = FixedChannelMask(torch.tensor([1.0, 0.0, 2.0, 0.0]).view(1, 4, *[1] * dim))
    x = torch.randn(2, 1, *[8] * dim)
    full_pass = unet(x)[0]
    chunks = list(head_dropout_samples(unet, take_head_input(unet), samples=7, chunk_size=3))
    assert [c.shape[:2] for c in chunks] == [(2, 3), (2, 3), (2, 1)]  # 3 + 3 + 1 samples of a batch of 2
    for chunk in chunks:
        for sample in chunk.unbind(1):
            assert torch.allclose(sample, full_pass, atol=1e-6)


def materialised_head_samples(unet, head_input, samples, chunk_size):
    """The straightforward formula: the head on ``k`` dropout-masked copies of its input per chunk, in the layout
    of :func:`head_dropout_samples`."""
    head = full_resolution_head(unet)
    with torch.no_grad():
        for start in range(0, samples, chunk_size):
            k = min(chunk_size, samples - start)
            copies = head_input.repeat(k, *[1] * (head_input.ndim - 1))
            yield head.forward(head.mc_dropout.dropout(copies)).unflatten(0, (k, -1)).transpose(0, 1)


@pytest.mark.parametrize("dim", [2, 3])
def test_head_samples_are_the_head_on_masked_copies_with_the_same_random_masks(dim):
    torch.manual_seed(0)
    unet = add_head_dropout(tiny_unet(dim), 0.5).train()
    unet(torch.randn(3, 1, *[8] * dim))
    head_input = take_head_input(unet)
    torch.manual_seed(7)
    samples = list(head_dropout_samples(unet, head_input, samples=5, chunk_size=2))
    torch.manual_seed(7)
    expected = list(materialised_head_samples(unet, head_input, samples=5, chunk_size=2))
    assert [s.shape for s in samples] == [e.shape for e in expected]
    assert [s.shape[1] for s in samples] == [2, 2, 1]
    for sample, reference in zip(samples, expected):
        assert torch.allclose(sample, reference, atol=1e-5)
    all_samples = torch.cat(samples, 1)
    assert not torch.allclose(all_samples[:, 0], all_samples[:, 1], atol=1e-3), "masks differ between samples"
    assert not torch.allclose(all_samples[0], all_samples[1], atol=1e-3), "and between batch elements"
    # dropout is Bernoulli(1 - p) per channel, scaled by 1 / (1 - p)
    torch.manual_seed(3)
    masks = full_resolution_head(unet).mc_dropout.dropout(torch.ones(4000, 4, *[1] * dim))
    assert set(masks.unique().tolist()) == {0.0, 2.0} and masks.mean().item() == pytest.approx(1.0, abs=0.03)


def test_mc_samples_carry_no_gradient():
    unet = add_head_dropout(tiny_unet(), 0.5).train()
    output = unet(torch.randn(2, 1, 8, 8))[0]
    assert output.requires_grad
    head_input = full_resolution_head(unet).mc_dropout.head_input
    assert head_input.requires_grad
    assert not take_head_input(unet).requires_grad
    # even from a head input that needs a gradient, the samples are built without a graph
    samples = next(head_dropout_samples(unet, head_input, samples=2, chunk_size=2))
    assert not samples.requires_grad and samples.grad_fn is None
    with pytest.raises(RuntimeError, match="no training-mode forward"):
        take_head_input(unet)  # forgotten after use
    with pytest.raises(RuntimeError, match="training mode"):
        next(head_dropout_samples(unet.eval(), head_input, 1, 1))


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    network = build()
    x = torch.randn(2, 1, 16, 16)
    network.train()
    assert not torch.equal(network(x)[0][0], network(x)[0][0])
    take_head_input(network.net1)
    network.eval()
    with torch.no_grad():
        first, second = network(x), network(x)
    assert torch.equal(first[0], second[0])
    assert full_resolution_head(network.net1).mc_dropout.head_input is None  # eval keeps nothing
    plain = tiny_unet().eval()
    plain.load_state_dict(network.net1.state_dict())
    with torch.no_grad():
        assert torch.equal(plain(x)[0], first[0])


# ---- networks and checkpoints ----------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ["plain", "residual"])
def test_state_dict_keys_are_nnunets_and_pretrained_weights_load_into_network_1(tmp_path, architecture):
    torch.manual_seed(0)
    network = build(architecture=architecture, dim=3)
    plain = tiny_unet(architecture=architecture, dim=3)
    plain_keys = set(plain.state_dict())
    assert set(network.state_dict()) == {f"net{i}.{k}" for i in (1, 2) for k in plain_keys}
    assert not torch.equal(next(network.net1.parameters()), next(network.net2.parameters()))  # own initialisation

    checkpoint = tmp_path / "supervised.pth"
    torch.save({"network_weights": plain.state_dict()}, checkpoint)
    pretrained.load_pretrained_weights(network, str(checkpoint))
    for key, value in network.net1.state_dict().items():
        if ".seg_layers." not in key:
            assert torch.equal(value, plain.state_dict()[key]), key
    for unet in (network.net1, network.net2):
        plain.load_state_dict(unet.state_dict())  # strict: a UA-DCT network exports to a plain nnU-Net


def test_inference_uses_network_one_or_the_mean():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 16)
    first = build().eval()
    mean = type("UADCTMean", (nnUNetTrainerUADCT,), {"inference": "mean"})
    averaged = build(cls=mean).eval()
    averaged.load_state_dict(first.state_dict())
    with torch.no_grad():
        assert torch.equal(first(x)[0], first.net1(x)[0])
        assert torch.allclose(averaged(x)[0], (first.net1(x)[0] + first.net2(x)[0]) / 2)
    assert isinstance(first, TwoNetworks)


# ---- losses -----------------------------------------------------------------------------------------------------
def test_supervised_loss_is_nnunets_with_full_resolution_ce_weighted_one_plus_gain_u():
    logits = two_voxels([0.0, 0.0], [LN3, 0.0])
    target = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1)
    low_logits, low_target = torch.tensor([[[[0.0]], [[LN3]]]]), torch.tensor([[[[1.0]]]])  # CE = ln(4/3)
    ce_only = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False,
                                                     "ddp": False}, {}, weight_ce=1, weight_dice=0,
                                                    dice_class=MemoryEfficientSoftDiceLoss), [2 / 3, 1 / 3])
    u = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1)
    loss = uncertainty_supervised_loss(ce_only, [logits, low_logits], [target, low_target], u, gain=1.0,
                                       regions=False)
    full_resolution_ce = (1 * LN2 + (1 + 1.0) * 2 * LN2) / 2  # voxel weights 1 + u
    assert loss.item() == pytest.approx(2 / 3 * full_resolution_ce + 1 / 3 * math.log(4 / 3))
    loss = uncertainty_supervised_loss(ce_only, [logits, low_logits], [target, low_target], u, gain=0.5,
                                       regions=False)
    assert loss.item() == pytest.approx(2 / 3 * (LN2 + 1.5 * 2 * LN2) / 2 + 1 / 3 * math.log(4 / 3))
    # with u = 0 it is nnU-Net's loss, Dice included
    dice_ce = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                             dice_class=MemoryEfficientSoftDiceLoss)
    assert uncertainty_supervised_loss(dice_ce, logits, target, torch.zeros_like(u), 1.0, False).item() == \
        pytest.approx(dice_ce(logits, target).item())


# ---- the training step ------------------------------------------------------------------------------------------
def step_inputs(classes=3):
    torch.manual_seed(0)
    data, unlabeled = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    labels = torch.randint(0, classes, (2, 1, 16, 16)).float()
    return data, [labels, labels[:, :, ::2, ::2]], unlabeled


def gradient_norms(network):
    return [sum(p.grad.abs().sum().item() for p in unet.parameters() if p.grad is not None)
            for unet in (network.net1, network.net2)]


@pytest.mark.parametrize("consistency_loss,consistency_uncertainty", [("ce", "joint"), ("mse", "target")])
def test_both_terms_reach_both_networks_and_combine_with_the_rampup(consistency_loss, consistency_uncertainty):
    cls = type("UADCTVariant", (nnUNetTrainerUADCT,), {"consistency_loss": consistency_loss,
                                                       "consistency_uncertainty": consistency_uncertainty})
    torch.manual_seed(0)
    network = build(cls=cls).train()
    trainer = stub_trainer(network, cls, epoch=5)
    data, target, unlabeled = step_inputs()
    for term in (0, 1):  # supervised, consistency
        network.zero_grad(set_to_none=True)
        trainer.losses(data, target, unlabeled)[term].backward()
        assert all(norm > 0 for norm in gradient_norms(network)), f"term {term}: {gradient_norms(network)}"

    torch.manual_seed(3)
    sup, cons, terms = trainer.losses(data, target, unlabeled)
    torch.manual_seed(3)
    total, logged = trainer.compute_loss(data, target, unlabeled, batch={}, context=PassContext())
    rampup = math.exp(-5 * (1 - 0.5) ** 2)  # epoch 5 of 10, ramp over the whole training
    assert logged["cons_weight"].item() == pytest.approx(rampup)
    assert total.item() == pytest.approx(sup.item() + rampup * cons.item(), rel=1e-5)
    assert 0 < terms["uncertainty_labeled"].item() <= 1 and 0 < terms["uncertainty_unlabeled"].item() <= 1
    assert {"sup", "cons", "cons_weight", "uncertainty_labeled", "uncertainty_unlabeled"} == set(logged)


def test_step_losses_and_gradients_are_those_of_materialised_head_samples(monkeypatch):
    torch.manual_seed(0)
    network = build().train()
    trainer = stub_trainer(network, epoch=5)
    data, target, unlabeled = step_inputs()
    results = []
    for samples in (head_dropout_samples, materialised_head_samples):
        monkeypatch.setattr("nnunet_ssl.trainers.uadct.head_dropout_samples", samples)
        network.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        total, logged = trainer.compute_loss(data, target, unlabeled, batch={}, context=PassContext())
        total.backward()
        results.append((logged, [p.grad for p in network.parameters()]))
    (logged, grads), (expected_logged, expected_grads) = results
    for name in ("sup", "cons", "uncertainty_labeled", "uncertainty_unlabeled"):
        assert logged[name].item() == pytest.approx(expected_logged[name].item(), rel=1e-5), name
    assert expected_logged["uncertainty_unlabeled"].item() > 0.01, "the Monte Carlo samples matter"
    assert [g is None for g in grads] == [g is None for g in expected_grads]
    assert sum(g is not None for g in grads) > len(grads) / 2
    for grad, expected in zip(grads, expected_grads):
        assert grad is None or torch.allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_compiled_unet_keeps_its_head_input():
    """nnU-Net compiles the network on CUDA: the hook must keep the head input of a compiled forward (the dropout
    layer runs outside the compiled graph; an inductor-compiled graph kept none, see tests/test_compile_amp.py)."""
    torch.manual_seed(0)
    unet = add_head_dropout(tiny_unet(), 0.5).train()
    x = torch.randn(2, 1, 16, 16)
    torch.manual_seed(5)
    output = torch.compile(unet, backend="eager")(x)[0]
    head_input = take_head_input(unet)
    assert head_input.shape == (2, 4, 16, 16)
    torch.manual_seed(5)  # the dropout mask is the forward's first random draw
    head = full_resolution_head(unet)
    assert torch.allclose(head.forward(head.mc_dropout.dropout(head_input)), output, atol=1e-6)
    assert not torch.allclose(head.forward(head_input), output, atol=1e-3)


# ---- end to end -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_uadct_trains_resumes_and_predicts(ssl_env, tmp_path, configuration):
    checkpoint = train_resume_predict(ssl_env, "nnUNetTrainerUADCT", configuration, tmp_path)
    weights = checkpoint["network_weights"]
    net1 = {k[len("net1."):]: v for k, v in weights.items() if k.startswith("net1.")}
    net2 = {k[len("net2."):]: v for k, v in weights.items() if k.startswith("net2.")}
    assert net1 and net1.keys() == net2.keys() and len(net1) + len(net2) == len(weights)
    assert any(not torch.equal(net1[k], net2[k]) for k in net1)
    logging = checkpoint["logging"]
    assert {"sup", "cons", "cons_weight", "uncertainty_labeled", "uncertainty_unlabeled"} <= set(logging)
    assert all(0 <= u <= 1 for u in logging["uncertainty_unlabeled"])
