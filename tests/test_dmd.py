import math
import os

import pytest
import torch

from e2e import output_folder, train_resume_predict
from helpers import tiny_unet, trainer_stub
from nnunet_ssl.networks.containers import TwoNetworks
from nnunet_ssl.blocks.distillation import dice_distillation
from nnunet_ssl.trainers.base import PassContext
from nnunet_ssl.trainers.dmd import nnUNetTrainerDMD, nnUNetTrainerDMD_paper


# ---- the trainer's loss on two tiny U-Nets ---------------------------------------------------------------------
def trainer_without_data(**attributes):
    """A DMD trainer holding only what compute_loss needs (no plans, no data), halfway through training: the
    default's sigmoid ramp-up is at exp(-5 (1 - 0.5)^2)."""
    torch.manual_seed(0)
    return trainer_stub(nnUNetTrainerDMD, TwoNetworks(tiny_unet(), tiny_unet()), epoch=1, num_epochs=2,
                        iterations=10, **attributes)


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
    total, terms = trainer.compute_loss(data, [seg, seg[:, :, ::2, ::2]], unlabeled, {}, PassContext())
    assert total.item() == pytest.approx((terms["sup1"] + terms["sup2"] + weight * terms["distill"]).item(),
                                         rel=1e-6)


def test_compute_loss_supervises_each_network_and_distils_over_all_samples():
    trainer = trainer_without_data()
    data, unlabeled = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    seg = torch.randint(0, 3, (2, 1, 8, 8)).float()
    target = [seg, seg[:, :, ::2, ::2]]
    total, terms = trainer.compute_loss(data, target, unlabeled, {}, PassContext())
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
