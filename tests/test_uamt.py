import math

import pytest
import torch

from e2e import train_resume_predict
from helpers import FixedBoxes, step_inputs, tiny_unet, trainer_stub
from nnunet_ssl.blocks.consistency import masked_probability_mse
from nnunet_ssl.blocks.uncertainty import certainty_mask
from nnunet_ssl.trainers.base import PassContext
from nnunet_ssl.trainers.uamt import nnUNetTrainerUAMT, nnUNetTrainerUAMT_paper

HALFWAY_RAMP = math.exp(-5 * 0.5 ** 2)  # the sigmoid ramp-up at epoch 5 of 10


# ---- the loss --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ramp", [0.0, 0.4, 0.8])
def test_masked_consistency_is_the_released_formula(ramp):
    """An independent rewrite of the released UA-MT consistency for two classes (train_LA_meanteacher_certainty_
    unlabel.py): entropy with log(p + 1e-6), threshold (0.75 + 0.25 ramp) ln 2, sum(mask mse) / (2 sum(mask))."""
    torch.manual_seed(0)
    T, B = 8, 2
    preds = torch.softmax(torch.randn(T * B, 2, 6, 5, 4) * 2, dim=1).reshape(T, B, 2, 6, 5, 4).mean(0)
    outputs, ema_output = torch.randn(B, 2, 6, 5, 4), torch.randn(B, 2, 6, 5, 4)
    uncertainty = -1.0 * torch.sum(preds * torch.log(preds + 1e-6), dim=1, keepdim=True)
    threshold = (0.75 + 0.25 * ramp) * math.log(2)
    mask = (uncertainty < threshold).float()
    consistency_dist = (torch.softmax(outputs, 1) - torch.softmax(ema_output, 1)) ** 2
    released = torch.sum(mask * consistency_dist) / (2 * torch.sum(mask) + 1e-16)

    ours_mask = certainty_mask(preds, 0.75 + 0.25 * ramp, regions=False)
    assert 0 < ours_mask.mean() < 1
    assert (ours_mask != mask).float().mean() < 1e-3  # only log(p + 1e-6) against log p can differ, at the border
    ours = masked_probability_mse(outputs, torch.softmax(ema_output, 1), ours_mask, regions=False)
    assert ours.item() == pytest.approx(released.item(), rel=1e-3)


# ---- the teacher's passes and the step ---------------------------------------------------------------------------
def uamt_trainer(architecture="plain", dim=2, **attributes):
    cls = type("UAMT", (nnUNetTrainerUAMT,), attributes)
    torch.manual_seed(0)
    trainer = trainer_stub(cls, cls.build_ssl_network(lambda: tiny_unet(dim, architecture)), epoch=5, num_epochs=10)
    trainer.network.train()
    return trainer


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_teacher_passes_are_noisy_forwards_of_the_teacher_batched_in_chunks(chunk):
    trainer = uamt_trainer(mc_chunk_size=chunk)
    _, _, unlabeled = step_inputs()
    torch.manual_seed(2)
    target, mean = trainer.teacher_passes(unlabeled)
    torch.manual_seed(2)  # by hand: 8 separate forwards, each with its own clamped noise, drawn in the same order
    passes = []
    with torch.no_grad():
        for _ in range(8):
            noise = torch.clamp(torch.randn_like(unlabeled) * 0.1, -0.2, 0.2)
            passes.append(torch.softmax(trainer.network.teacher(unlabeled + noise)[0], 1))
    torch.testing.assert_close(target, passes[0])
    torch.testing.assert_close(mean, torch.stack(passes).mean(0))
    assert not torch.allclose(passes[0], passes[1]), "the passes differ by their noise"


@pytest.mark.parametrize("architecture", ["plain", "residual"])
@pytest.mark.parametrize("dim", [2, 3])
def test_step_loss_is_supervision_plus_ramped_masked_consistency(architecture, dim):
    trainer = uamt_trainer(architecture, dim)
    data, target, unlabeled = step_inputs(dim)
    torch.manual_seed(3)
    total, terms = trainer.compute_loss(data, target, unlabeled, {}, PassContext())
    assert set(terms) == {"sup", "cons", "cons_weight", "certain", "uncertainty"}
    torch.manual_seed(3)
    with torch.no_grad():  # the same teacher passes (same noise) and the student by hand
        teacher_target, teacher_mean = trainer.teacher_passes(unlabeled)
        student = trainer.network.student(torch.cat((data, unlabeled)))
        sup = trainer.loss([o[:2] for o in student], target)
        mask = certainty_mask(teacher_mean, 0.75 + 0.25 * HALFWAY_RAMP, False)
        cons = masked_probability_mse(student[0][2:], teacher_target, mask, False)
    weight = 0.1 * HALFWAY_RAMP
    assert terms["cons_weight"].item() == pytest.approx(weight)
    assert terms["sup"].item() == pytest.approx(sup.item(), rel=1e-5)
    assert terms["cons"].item() == pytest.approx(cons.item(), rel=1e-5) and cons > 0
    assert terms["certain"].item() == pytest.approx(mask.mean().item())
    assert total.item() == pytest.approx((sup + weight * cons).item(), rel=1e-5)


def test_cutmix_mixes_the_student_input_and_the_teachers_target_and_certainty_alike():
    trainer = uamt_trainer(cutmix=FixedBoxes(), teacher_noise_std=0.0)  # noise-free: every pass is the same
    data, target, unlabeled = step_inputs()
    total, terms = trainer.compute_loss(data, target, unlabeled, {}, PassContext())
    mask = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    mask[:, :, :, :4] = True
    mix = lambda x: torch.where(mask, x.roll(1, 0), x)  # noqa: E731 (the box from the previous patch)
    with torch.no_grad():
        teacher = mix(torch.softmax(trainer.network.teacher(unlabeled)[0], 1))
        student = trainer.network.student(torch.cat((data, mix(unlabeled))))
        certain = certainty_mask(teacher, 0.75 + 0.25 * HALFWAY_RAMP, False)
        cons = masked_probability_mse(student[0][2:], teacher, certain, False)
    assert terms["cons"].item() == pytest.approx(cons.item(), rel=1e-5) and cons > 0
    assert terms["certain"].item() == pytest.approx(certain.mean().item())
    assert total.item() == pytest.approx((terms["sup"] + 0.1 * HALFWAY_RAMP * cons).item(), rel=1e-5)


def test_student_learns_teacher_gets_no_gradient_and_follows_by_ema():
    trainer = uamt_trainer()
    data, target, unlabeled = step_inputs()
    student, teacher = trainer.network.student, trainer.network.teacher
    teacher_before = [p.detach().clone() for p in teacher.parameters()]
    trainer.train_step({"data": data, "target": target, "unlabeled": {"data": unlabeled}})
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    decay = min(1 - 1 / (5 * 2 + 1), 0.99)  # step 10 of the run
    for before, t, s in zip(teacher_before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, decay * before + (1 - decay) * s.detach())


def test_dropout_option_makes_the_passes_differ_without_noise_and_keeps_nnunets_weights():
    noiseless = dict(teacher_noise_std=0.0)
    _, _, unlabeled = step_inputs()
    target, mean = uamt_trainer(**noiseless).teacher_passes(unlabeled)
    torch.testing.assert_close(target, mean)  # no randomness: eight equal passes
    trainer = uamt_trainer(mc_dropout_rate=0.5, **noiseless)
    target, mean = trainer.teacher_passes(unlabeled)
    assert not torch.allclose(target, mean)
    assert trainer.network.student.state_dict().keys() == tiny_unet().state_dict().keys()
    assert trainer.network.teacher.decoder.seg_layers[-1].mc_dropout.dropout.p == 0.5
    trainer.network.eval()
    torch.testing.assert_close(trainer.network(unlabeled)[0], trainer.network(unlabeled)[0])


@pytest.mark.parametrize("classes", [2, 3, 4])
def test_paper_variant_thresholds_the_entropy_at_the_released_ln2_and_samples_with_dropout(classes):
    """The released mask, rewritten independently: entropy < (0.75 + 0.25 ramp) ln 2 for any number of classes
    (SSL4MIS keeps ln 2 for ACDC's four), where the default uses that fraction of ln C."""
    cls = type("UAMT", (nnUNetTrainerUAMT_paper,), {})
    torch.manual_seed(0)
    trainer = trainer_stub(cls, cls.build_ssl_network(lambda: tiny_unet(classes=classes)), classes=classes, epoch=5,
                           num_epochs=10)
    probabilities = torch.softmax(torch.randn(2, classes, 16, 16) * 1.5, dim=1)
    entropy = -torch.sum(probabilities * torch.log(probabilities), dim=1, keepdim=True)
    released = (entropy < (0.75 + 0.25 * HALFWAY_RAMP) * math.log(2)).float()
    ours = certainty_mask(probabilities, trainer.uncertainty_threshold(), regions=False)
    assert 0 < released.mean() < 1 and (ours != released).float().mean() < 1e-3
    default = certainty_mask(probabilities, uamt_trainer().uncertainty_threshold(), regions=False)
    assert (ours.mean() < default.mean()) == (classes > 2), "more classes: the ln 2 threshold keeps fewer voxels"
    assert trainer.network.teacher.decoder.seg_layers[-1].mc_dropout.dropout.p == 0.5
    assert trainer.network.student.decoder.seg_layers[-1].mc_dropout.dropout.p == 0.5


# ---- nnU-Net's commands -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_uamt_trains_resumes_and_predicts(ssl_env, tmp_path, configuration):
    checkpoint = train_resume_predict(ssl_env, "nnUNetTrainerUAMT", configuration, tmp_path)
    assert {"sup", "cons", "cons_weight", "certain", "uncertainty"} <= set(checkpoint["logging"])
    assert {k.split(".")[0] for k in checkpoint["network_weights"]} == {"student", "teacher"}
