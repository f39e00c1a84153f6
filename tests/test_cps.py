import math

import pytest
import torch
from torch import nn

from e2e import train_resume_predict
from helpers import FixedBoxes, step_inputs, tiny_unet, trainer_stub
from nnunet_ssl.blocks.pseudo_labels import hard_pseudo_labels
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.trainers.base import PassContext
from nnunet_ssl.trainers.cps import cross_pseudo_supervision, nnUNetTrainerCPS, nnUNetTrainerCPS_paper
from nnunet_ssl.trainers.settings import check_settings


def log1p_exp(x):
    return math.log(1 + math.exp(x))


# ---- the loss --------------------------------------------------------------------------------------------------
def test_cross_pseudo_supervision_hand_values_softmax():
    # one sample, two classes, two voxels: z1 votes (1, 0), z2 votes (0, 1)
    z1 = torch.tensor([[[0.0, 2.0], [1.0, 0.0]]])
    z2 = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])
    cps1, cps2 = cross_pseudo_supervision(z1, z2, regions=False)
    # CE(z, y) = log sum_c exp(z_c) - z_y
    assert cps1.item() == pytest.approx((log1p_exp(1) + log1p_exp(2)) / 2)  # z1 against (0, 1)
    assert cps2.item() == pytest.approx((log1p_exp(3) + log1p_exp(1)) / 2)  # z2 against (1, 0)


def test_cross_pseudo_supervision_hand_values_regions():
    # one region channel: pseudo-label p > 0.5, binary cross-entropy
    z1, z2 = torch.tensor([[[-1.0, 2.0]]]), torch.tensor([[[0.5, -3.0]]])
    cps1, cps2 = cross_pseudo_supervision(z1, z2, regions=True)
    assert cps1.item() == pytest.approx((log1p_exp(1) + log1p_exp(2)) / 2)  # z1 against (1, 0)
    assert cps2.item() == pytest.approx((log1p_exp(0.5) + log1p_exp(3)) / 2)  # z2 against (0, 1)
    assert hard_pseudo_labels(torch.sigmoid(z2), regions=True).tolist() == [[[True, False]]]


def test_cross_pseudo_supervision_is_torchsemiseg_formula():
    """An independent rewrite of TorchSemiSeg's ``criterion(pred_l, max_r) + criterion(pred_r, max_l)``."""
    torch.manual_seed(0)
    pred_l, pred_r = torch.randn(3, 4, 5, 6, requires_grad=True), torch.randn(3, 4, 5, 6, requires_grad=True)
    criterion = nn.CrossEntropyLoss()
    _, max_l = torch.max(pred_l, dim=1)
    _, max_r = torch.max(pred_r, dim=1)
    released = criterion(pred_l, max_r) + criterion(pred_r, max_l)
    ours = sum(cross_pseudo_supervision(pred_l, pred_r, regions=False))
    assert ours.item() == pytest.approx(released.item(), rel=1e-6)
    grads = torch.autograd.grad(released, (pred_l, pred_r))
    for expected, got in zip(grads, torch.autograd.grad(ours, (pred_l, pred_r))):
        torch.testing.assert_close(got, expected)


# ---- the trainer's loss on two small U-Nets ----------------------------------------------------------------------
def build(cls=nnUNetTrainerCPS, dim=2, architecture="plain"):
    """The trainer's network from its hook, on tiny plans U-Nets."""
    return cls.build_ssl_network(lambda: tiny_unet(dim, architecture))


def cps_trainer(cls=nnUNetTrainerCPS, architecture="plain", dim=2, **attributes):
    torch.manual_seed(0)
    cls = type(cls.__name__, (cls,), attributes)
    return trainer_stub(cls, build(cls, dim, architecture), epoch=5, num_epochs=10)  # halfway: ramp exp(-5 / 4)


@pytest.mark.parametrize("architecture", ["plain", "residual"])
@pytest.mark.parametrize("variant, on_labeled", [(nnUNetTrainerCPS, True), (nnUNetTrainerCPS, False),
                                                 (nnUNetTrainerCPS_paper, True)])
def test_step_loss_is_both_supervised_terms_plus_weighted_cross_pseudo_supervision(architecture, variant, on_labeled):
    trainer = cps_trainer(variant, architecture, cps_on_labeled=on_labeled, cutmix=None)
    data, target, unlabeled = step_inputs()
    total, terms = trainer.compute_loss(data, target, unlabeled, {}, PassContext())
    assert set(terms) == {"sup1", "sup2", "cps1", "cps2", "cps_weight"}
    with torch.no_grad():  # the same networks on the same inputs, by hand
        out1, out2 = trainer.network(torch.cat((data, unlabeled)))
        sup1, sup2 = (trainer.loss([o[:2] for o in out], target) for out in (out1, out2))
        covered = slice(None) if on_labeled else slice(2, None)
        z1, z2 = out1[0][covered], out2[0][covered]
        cps1 = nn.functional.cross_entropy(z1, z2.argmax(1))
        cps2 = nn.functional.cross_entropy(z2, z1.argmax(1))
    weight = 1.5 if variant is nnUNetTrainerCPS_paper else 1.0 * math.exp(-5 * 0.5 ** 2)
    assert terms["cps_weight"].item() == pytest.approx(weight)
    for name, value in (("sup1", sup1), ("sup2", sup2), ("cps1", cps1), ("cps2", cps2)):
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5), name
    assert total.item() == pytest.approx((sup1 + sup2 + weight * (cps1 + cps2)).item(), rel=1e-5)
    assert terms["sup1"].item() != pytest.approx(terms["sup2"].item()), "the networks are initialised differently"


def test_cps_cutmix_pseudo_labels_are_both_networks_predictions_on_the_unmixed_patches_mixed_alike():
    """An independent rewrite of TorchSemiSeg's CPS+CutMix step: teacher logits on the two source batches, mixed
    with the mask; argmax; each student's CE on the mixed images against the other's label."""
    trainer = cps_trainer(cutmix=FixedBoxes())
    data, target, unlabeled = step_inputs()
    total, terms = trainer.compute_loss(data, target, unlabeled, {}, PassContext())
    mask = torch.zeros(3, 1, 8, 8)
    mask[..., :4] = 1  # inside the box: the partner, the previous patch of the batch
    unsup_imgs_0, unsup_imgs_1 = unlabeled, unlabeled.roll(1, 0)
    with torch.no_grad():
        net1, net2 = trainer.network.net1, trainer.network.net2
        ps_label_1 = (net1(unsup_imgs_0)[0] * (1 - mask) + net1(unsup_imgs_1)[0] * mask).argmax(1)
        ps_label_2 = (net2(unsup_imgs_0)[0] * (1 - mask) + net2(unsup_imgs_1)[0] * mask).argmax(1)
        mixed = unsup_imgs_0 * (1 - mask) + unsup_imgs_1 * mask
        out1, out2 = net1(torch.cat((data, mixed))), net2(torch.cat((data, mixed)))
        cps1 = nn.functional.cross_entropy(out1[0][2:], ps_label_2)
        cps2 = nn.functional.cross_entropy(out2[0][2:], ps_label_1)
        sup1 = trainer.loss([o[:2] for o in out1], target)
    assert terms["cps1"].item() == pytest.approx(cps1.item(), rel=1e-5)
    assert terms["cps2"].item() == pytest.approx(cps2.item(), rel=1e-5)
    assert terms["sup1"].item() == pytest.approx(sup1.item(), rel=1e-5), "the labeled patches are not mixed"
    expected = terms["sup1"] + terms["sup2"] + terms["cps_weight"] * (cps1 + cps2)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_cps_cutmix_with_empty_boxes_is_cps_on_the_unlabeled_patches():
    data, target, unlabeled = step_inputs()
    _, mixed = cps_trainer(cutmix=FixedBoxes(empty=True)).compute_loss(data, target, unlabeled, {}, PassContext())
    _, plain = cps_trainer(cps_on_labeled=False, cutmix=None).compute_loss(data, target, unlabeled, {},
                                                                           PassContext())
    for name in ("sup1", "sup2", "cps1", "cps2"):
        assert mixed[name].item() == pytest.approx(plain[name].item(), rel=1e-5), name


def test_cps_cutmix_setting_is_checked():
    with pytest.raises(SSLConfigError, match="cutmix"):
        check_settings(type("Bad", (nnUNetTrainerCPS,), {"cutmix": (0.5, 0.2)}), nnUNetTrainerCPS.settings_checks, {})


@pytest.mark.parametrize("dim", [2, 3])
def test_each_network_learns_from_the_others_pseudo_label_which_carries_no_gradient(dim):
    trainer = cps_trainer(dim=dim)
    net1, net2 = trainer.network.net1, trainer.network.net2
    out1, out2 = trainer.network(torch.randn(2, 1, *(8,) * dim))
    cps1, cps2 = cross_pseudo_supervision(out1[0], out2[0], regions=False)
    for loss, learner, teacher in ((cps1, net1, net2), (cps2, net2, net1)):
        trainer.network.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        # a full-resolution term: every parameter of the learner but the half-resolution head gets gradient
        for name, parameter in learner.named_parameters():
            learned = parameter.grad is not None and parameter.grad.abs().sum() > 0
            assert learned != name.startswith("decoder.seg_layers.0."), name
        assert all(p.grad is None for p in teacher.parameters()), "gradient flowed through the pseudo-label"


def test_networks_inference_and_pretrained_weights():
    network = build()
    assert network.pretrainable_unets() == [network.net1]
    assert any(not torch.equal(a, b) for a, b in zip(network.net1.parameters(), network.net2.parameters()))
    x = torch.randn(1, 1, 8, 8)
    for inference, expected in (("first", lambda n: n.net1(x)[0]), ("second", lambda n: n.net2(x)[0]),
                                ("mean", lambda n: (n.net1(x)[0] + n.net2(x)[0]) / 2)):
        network = build(type("CPS", (nnUNetTrainerCPS,), {"inference": inference})).eval()
        torch.testing.assert_close(network(x)[0], expected(network))


# ---- nnU-Net's commands -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_cps_trains_resumes_and_predicts(ssl_env, tmp_path, configuration):
    checkpoint = train_resume_predict(ssl_env, "nnUNetTrainerCPS", configuration, tmp_path)
    assert {"sup1", "sup2", "cps1", "cps2", "cps_weight"} <= set(checkpoint["logging"])
    weights = checkpoint["network_weights"]
    assert {k.split(".")[0] for k in weights} == {"net1", "net2"}
