import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from e2e import output_folder, train_resume_predict
from nnunet_ssl.networks.containers import TwoNetworks
from nnunet_ssl.trainers.dmd import (dice_distillation, kl_distillation, nnUNetTrainerDMD, nnUNetTrainerDMD_paper,
                                     soft_dice_loss, temperature_probabilities)
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss


# ---- losses ---------------------------------------------------------------------------------------------------
def test_soft_dice_of_identical_inputs_is_exactly_zero():
    torch.manual_seed(0)
    p = torch.rand(2, 3, 5, 6)
    assert soft_dice_loss(p, p).item() == 0.0
    assert soft_dice_loss(p, p.clone(), smooth=0.0).item() == 0.0


def test_soft_dice_matches_hand_computation_over_the_whole_batch():
    # two samples, two channels, two voxels each
    p = torch.tensor([[[0.5, 1.0], [1.0, 1.0]],
                      [[0.0, 0.5], [1.0, 1.0]]])
    q = torch.tensor([[[1.0, 0.0], [1.0, 0.0]],
                      [[0.5, 0.5], [0.0, 0.0]]])
    # channel 0: sum pq = 0.75, sum p^2 = 1.5, sum q^2 = 1.5; channel 1: sum pq = 1, sum p^2 = 4, sum q^2 = 1
    assert soft_dice_loss(p, q, smooth=0.0).item() == pytest.approx(1 - (1.5 / 3 + 2 / 5) / 2)
    s = 1e-5
    assert soft_dice_loss(p, q).item() == pytest.approx(1 - ((1.5 + s) / (3 + s) + (2 + s) / (5 + s)) / 2, abs=1e-7)
    assert soft_dice_loss(q, p).item() == pytest.approx(soft_dice_loss(p, q).item(), abs=1e-7)
    # per-sample Dice of channel 0 would be (1/2.25 + 0.5/0.75) / 2, not 0.5: the batch is one Dice
    per_sample = 1 - ((1 / 2.25 + 0.5 / 0.75) / 2 + 2 / 5) / 2
    assert soft_dice_loss(p, q, smooth=0.0).item() != pytest.approx(per_sample)


def test_temperature_softens_the_targets():
    z = torch.tensor([[[0.0], [2.0]]])  # one voxel, two classes
    e = math.e
    assert temperature_probabilities(z, 2.0, False).flatten().tolist() == pytest.approx([1 / (1 + e), e / (1 + e)])
    assert temperature_probabilities(z, 1.0, False).flatten().tolist() == pytest.approx(
        [1 / (1 + e ** 2), e ** 2 / (1 + e ** 2)])
    assert temperature_probabilities(z, 2.0, True).flatten().tolist() == pytest.approx(
        [0.5, 1 / (1 + math.exp(-1))])

    def entropy(p):
        return -(p * p.log()).sum().item()
    assert entropy(temperature_probabilities(z, 2.0, False)) > entropy(temperature_probabilities(z, 1.0, False))
    assert entropy(temperature_probabilities(z, 50.0, False)) == pytest.approx(math.log(2), abs=1e-3)


def test_dice_distillation_uses_softened_foreground_as_the_released_sigmoid_form():
    torch.manual_seed(0)
    z1, z2 = torch.randn(2, 2, 4, 5) * 3, torch.randn(2, 2, 4, 5) * 3
    # the released code: one logit z, Dice between sigmoid(z1 / T) and sigmoid(z2 / T)
    released = soft_dice_loss(torch.sigmoid((z1[:, 1:] - z1[:, :1]) / 2), torch.sigmoid((z2[:, 1:] - z2[:, :1]) / 2))
    assert dice_distillation(z1, z2, 2.0, regions=False).item() == pytest.approx(released.item(), abs=1e-6)
    # a different temperature gives a different target
    assert dice_distillation(z1, z2, 1.0, regions=False).item() != pytest.approx(released.item(), abs=1e-4)
    with_bg = soft_dice_loss(torch.softmax(z1 / 2, 1), torch.softmax(z2 / 2, 1))
    assert dice_distillation(z1, z2, 2.0, False, include_background=True).item() == pytest.approx(with_bg.item())
    # region datasets: sigmoid(z / T) on every channel
    regions = soft_dice_loss(torch.sigmoid(z1 / 2), torch.sigmoid(z2 / 2))
    assert dice_distillation(z1, z2, 2.0, regions=True).item() == pytest.approx(regions.item())
    assert dice_distillation(z1, z1.clone(), 2.0, regions=False).item() == 0.0


def test_kl_distillation_is_the_two_way_kl_of_softened_predictions():
    torch.manual_seed(0)
    z1, z2 = torch.randn(2, 3, 4, 5) * 2, torch.randn(2, 3, 4, 5) * 2
    T = 2.0

    def kl(p_log, q_log):  # KL(q || p) summed over classes, mean over voxels
        return F.kl_div(p_log, q_log, reduction="none", log_target=True).sum(1).mean()
    l1, l2 = F.log_softmax(z1 / T, 1), F.log_softmax(z2 / T, 1)
    assert kl_distillation(z1, z2, T, regions=False).item() == pytest.approx((kl(l1, l2) + kl(l2, l1)).item(), rel=1e-5)

    def bernoulli_log(z):  # per region: the two outcomes as two classes
        return torch.stack((F.logsigmoid(z / T), F.logsigmoid(-z / T)), dim=1)
    b1, b2 = bernoulli_log(z1), bernoulli_log(z2)
    expected = (kl(b1, b2) + kl(b2, b1)) * 3  # summed over the 3 region channels
    assert kl_distillation(z1, z2, T, regions=True).item() == pytest.approx(expected.item(), rel=1e-5)
    assert kl_distillation(z1, z1.clone(), T, regions=False).item() == 0.0


# ---- the trainer's loss on two small U-Nets -------------------------------------------------------------------
def tiny_unet(num_classes=3):
    return PlainConvUNet(1, 3, (4, 8, 8), nn.Conv2d, 3, (1, 2, 2), 1, num_classes, 1, conv_bias=True,
                         norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)


def trainer_without_data(**attributes):
    """A DMD trainer holding only what compute_loss needs (no plans, no data)."""
    trainer = object.__new__(type("DMD", (nnUNetTrainerDMD,), attributes))
    torch.manual_seed(0)
    trainer.network = TwoNetworks(tiny_unet(), tiny_unet())
    trainer.label_manager = SimpleNamespace(has_regions=False)
    trainer.loss = DeepSupervisionWrapper(
        DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                       dice_class=MemoryEfficientSoftDiceLoss), (2 / 3, 1 / 3))
    # halfway through training: the default's sigmoid ramp-up is at exp(-5 (1 - 0.5)^2)
    trainer.__dict__.update(current_epoch=1, step_in_epoch=0, num_epochs=2, num_iterations_per_epoch=10)
    return trainer


@pytest.mark.parametrize("distillation", ["dice", "kl"])
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_distillation_reaches_both_networks(distillation, deep_supervision):
    trainer = trainer_without_data(distillation=distillation, distill_deep_supervision=deep_supervision)
    x = torch.randn(4, 1, 8, 8)
    out1, out2 = trainer.network(x)
    trainer.distillation_loss(out1, out2).backward()
    for net in (trainer.network.net1, trainer.network.net2):
        low_resolution_head = net.decoder.seg_layers[0]
        for name, parameter in net.named_parameters():
            if name.startswith("decoder.seg_layers.0."):
                continue
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        # the half-resolution output enters the distillation only with distill_deep_supervision
        assert (low_resolution_head.weight.grad is not None) == deep_supervision


@pytest.mark.parametrize("variant, weight", [(nnUNetTrainerDMD, 4 * math.exp(-5 * 0.5 ** 2)),
                                             (nnUNetTrainerDMD_paper, 4.0)])
def test_distillation_weight_is_ramped_up_except_in_the_paper_variant(variant, weight):
    trainer = trainer_without_data()
    trainer.__class__ = type("DMD", (variant,), {})
    data, unlabeled = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    seg = torch.randint(0, 3, (2, 1, 8, 8)).float()
    total, terms = trainer.compute_loss(data, [seg, seg[:, :, ::2, ::2]], unlabeled, {})
    assert total.item() == pytest.approx((terms["sup1"] + terms["sup2"] + weight * terms["distill"]).item(),
                                         rel=1e-6)


def test_compute_loss_supervises_each_network_and_distils_over_all_samples():
    trainer = trainer_without_data()
    data, unlabeled = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    seg = torch.randint(0, 3, (2, 1, 8, 8)).float()
    target = [seg, seg[:, :, ::2, ::2]]
    total, terms = trainer.compute_loss(data, target, unlabeled, {})
    assert set(terms) == {"sup1", "sup2", "distill"}

    with torch.no_grad():  # same networks, same inputs: the terms computed by hand
        out1, out2 = trainer.network(torch.cat((data, unlabeled)))
        assert terms["sup1"].item() == pytest.approx(trainer.loss([o[:2] for o in out1], target).item(), rel=1e-5)
        assert terms["sup2"].item() == pytest.approx(trainer.loss([o[:2] for o in out2], target).item(), rel=1e-5)
        assert terms["distill"].item() == pytest.approx(dice_distillation(out1[0], out2[0], 2.0, False).item(),
                                                        rel=1e-5)
        assert terms["distill"].item() != pytest.approx(
            dice_distillation(out1[0][:2], out2[0][:2], 2.0, False).item(), rel=1e-3)
    assert terms["sup1"].item() != pytest.approx(terms["sup2"].item())


# ---- nnU-Net's commands ---------------------------------------------------------------------------------------
def state_of(state_dict, prefix):
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key].cpu(), b[key].cpu()), key


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_dmd_trains_resumes_and_predicts(ssl_env, tmp_path, configuration, monkeypatch):
    checkpoint = train_resume_predict(ssl_env, "nnUNetTrainerDMD", configuration, tmp_path)
    assert {"sup1", "sup2", "distill"} <= set(checkpoint["logging"])
    weights = checkpoint["network_weights"]
    net1, net2 = state_of(weights, "net1."), state_of(weights, "net2.")
    assert net1 and net1.keys() == net2.keys() and len(net1) + len(net2) == len(weights)
    assert any(not torch.equal(net1[k], net2[k]) for k in net1 if net1[k].is_floating_point())

    # nnU-Net's load_checkpoint (what --c runs) restores both networks into a freshly built trainer
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, ssl_env[variable])
    init = checkpoint["init_args"]
    trainer = nnUNetTrainerDMD(dict(init["plans"], continue_training=True), configuration, init["fold"],
                               init["dataset_json"], device=torch.device("cpu"))
    trainer.initialize()
    fresh = trainer.network.state_dict()
    assert any(not torch.equal(fresh[k], weights[k]) for k in weights if weights[k].is_floating_point())
    trainer.load_checkpoint(os.path.join(output_folder(ssl_env, "nnUNetTrainerDMD_tiny", configuration),
                                         "checkpoint_final.pth"))
    assert_same_weights(trainer.network.net1.state_dict(), net1)
    assert_same_weights(trainer.network.net2.state_dict(), net2)
