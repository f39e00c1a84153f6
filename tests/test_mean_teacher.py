import math

import pytest
import torch

from e2e import train_resume_predict
from helpers import FixedBoxes, step_inputs, tiny_unet, trainer_stub
from nnunet_ssl.trainers import nnUNetTrainerMeanTeacher
from nnunet_ssl.trainers.base import PassContext


def mean_teacher(**attributes):
    cls = type("MT", (nnUNetTrainerMeanTeacher,), attributes)
    torch.manual_seed(0)
    trainer = trainer_stub(cls, cls.build_ssl_network(lambda: tiny_unet(2, "plain")), epoch=5, num_epochs=10)
    trainer.network.train()
    for p in trainer.network.teacher.parameters():  # a teacher that differs from the student
        p.data += 0.05 * torch.randn_like(p)
    return trainer


def test_cutmix_student_sees_mixed_patches_against_the_teachers_unmixed_prediction_mixed_alike():
    """An independent rewrite of French et al.'s CutMix Mean Teacher step (noise-free teacher): the teacher predicts
    both source patches, its probabilities are mixed with the mask, the student predicts the mixed image."""
    trainer = mean_teacher(cutmix=FixedBoxes(), teacher_noise_std=0.0)
    data, target, unlabeled = step_inputs()
    total, terms = trainer.compute_loss(data, target, unlabeled, {}, PassContext())
    mask = torch.zeros(3, 1, 8, 8)
    mask[:, :, :, :4] = 1
    partner = unlabeled.roll(1, 0)
    with torch.no_grad():
        teacher = trainer.network.teacher
        target_mixed = (torch.softmax(teacher(unlabeled)[0], 1) * (1 - mask)
                        + torch.softmax(teacher(partner)[0], 1) * mask)
        student = trainer.network.student(torch.cat((data, unlabeled * (1 - mask) + partner * mask)))
        cons = torch.mean((torch.softmax(student[0][2:], 1) - target_mixed) ** 2)
        sup = trainer.loss([o[:2] for o in student], target)
    weight = 0.1 * math.exp(-5 * 0.5 ** 2)
    assert terms["cons"].item() == pytest.approx(cons.item(), rel=1e-5) and cons > 0
    assert terms["sup"].item() == pytest.approx(sup.item(), rel=1e-5), "the labeled patches are not mixed"
    assert total.item() == pytest.approx((sup + weight * cons).item(), rel=1e-5)


def test_cutmix_with_empty_boxes_is_mean_teacher():
    data, target, unlabeled = step_inputs()
    _, mixed = mean_teacher(cutmix=FixedBoxes(empty=True), teacher_noise_std=0.0).compute_loss(
        data, target, unlabeled, {}, PassContext())
    _, plain = mean_teacher(teacher_noise_std=0.0).compute_loss(data, target, unlabeled, {}, PassContext())
    for name in ("sup", "cons"):
        assert mixed[name].item() == pytest.approx(plain[name].item(), rel=1e-6), name

@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_mean_teacher_trains_resumes_and_predicts(ssl_env, tmp_path, configuration):
    checkpoint = train_resume_predict(ssl_env, "nnUNetTrainerMeanTeacher", configuration, tmp_path)
    weights = checkpoint["network_weights"]
    assert any(k.startswith("teacher.") for k in weights) and any(k.startswith("student.") for k in weights)
    assert {"sup", "cons", "cons_weight"} <= set(checkpoint["logging"])
