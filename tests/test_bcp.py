import math

import pytest
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

from e2e import train_resume_predict
from helpers import Recording, assert_gradients_reach, nnunet_loss, tiny_unet, trainer_stub
from nnunet_ssl.trainers.base import PassContext
from nnunet_ssl.networks.containers import StudentTeacher
from nnunet_ssl.trainers.bcp import direction_halves, nnUNetTrainerBCP, nnUNetTrainerBCP_paper

SIDE = 12


def bcp_stub(regions=False, deep_supervision=True, residual=False, dim=2, cls=nnUNetTrainerBCP, **attributes):
    """A BCP trainer on a tiny student/teacher pair, 3 classes (or 2 regions), 8 epochs of 2 steps, a quarter of
    them pre-training (the released schedule): pre-training ends after step round(0.25 * 16) = 4, i.e. at epoch 2."""
    torch.manual_seed(0)
    classes = 2 if regions else 3
    network = StudentTeacher(tiny_unet(dim, "residual" if residual else "plain", classes, deep_supervision))
    loss = nnunet_loss(regions)
    trainer = trainer_stub(cls, network, regions, classes, num_epochs=8, iterations=2,
                           loss=loss if deep_supervision else loss.loss, **{"pretrain_fraction": 0.25, **attributes})
    trainer.build_mixed_loss()
    return trainer


def fixed_box(dim=2):
    """The 2/3 box of a 12-voxel patch (8 voxels per side) at offset 3, 1 (2D) or 2, 3, 1 (3D)."""
    box = torch.zeros((1, 1) + (SIDE,) * dim, dtype=torch.bool)
    box[(0, 0) + tuple(slice(o, o + 8) for o in (3, 1, 2)[:dim])] = True
    return box


def step_inputs(n_l=2, n_u=2, regions=False, dim=2):
    """Labeled patches far from the unlabeled ones in intensity (so pasted voxels can be told apart), their labels
    with nnU-Net's deep-supervision targets, and unlabeled patches."""
    torch.manual_seed(1)
    shape = (SIDE,) * dim
    data = torch.randn(n_l, 1, *shape) + 100
    seg = (torch.rand(n_l, 2, *shape) > 0.5).to(torch.uint8) if regions else \
        torch.randint(0, 3, (n_l, 1, *shape), dtype=torch.int16)
    downsample = DownsampleSegForDSTransform([[1] * dim, [0.5] * dim])
    target = [torch.stack(scales) for scales in zip(*(downsample(segmentation=s)["segmentation"] for s in seg))]
    return data, target, torch.randn(n_u, 1, *shape)


def nnunet_dice_ce(logits, labels, keep):
    """An independent rewrite of nnU-Net's Dice+CE over the voxels ``keep``: cross-entropy averaged over them plus
    minus the batch soft Dice of the foreground classes (smooth 1e-5) counted over them."""
    log_p = F.log_softmax(logits, 1)
    ce = -(log_p.gather(1, labels.long()) * keep).sum() / keep.sum()
    onehot = F.one_hot(labels[:, 0].long(), logits.shape[1]).movedim(-1, 1)[:, 1:] * keep
    p = log_p.exp()[:, 1:] * keep
    axes = (0, *range(2, logits.ndim))
    dice = ((2 * (p * onehot).sum(axes) + 1e-5) / (p.sum(axes) + onehot.sum(axes) + 1e-5)).mean()
    return ce - dice


def test_direction_halves_share_the_middle_pair_when_odd():
    assert [[h.tolist() for h in direction_halves(n)] for n in (1, 2, 3, 4)] == \
        [[[0], [0]], [[0], [1]], [[0, 1], [1, 2]], [[0, 1], [2, 3]]]


def test_pretraining_mixes_labeled_pairs_and_uses_nnunets_loss_on_the_mixed_label():
    trainer = bcp_stub()
    trainer.current_epoch = 1  # step 2 of the 4 pre-training steps
    trainer.paste_box = lambda like: fixed_box()
    trainer.network = Recording(trainer.network)
    data, target, unlabeled = step_inputs()
    total, terms = trainer.compute_loss(data, target, unlabeled, {}, PassContext())
    box = fixed_box()
    images, = trainer.network.inputs  # no teacher input
    assert torch.equal(images, torch.where(box, data.roll(1, 0), data))
    label = torch.where(box, target[0].roll(1, 0), target[0])
    expected_targets = [label, label[..., 1::2, 1::2]]  # nnU-Net's nearest-exact downsampling of 12 to 6 voxels
    output, _ = trainer.network.outputs
    assert total.item() == pytest.approx(trainer.loss(output, expected_targets).item(), rel=1e-6)
    assert terms["self_training"].item() == 0 and terms["unsup"].item() == 0


@pytest.mark.parametrize("n_u", [1, 2, 3])
def test_self_training_pastes_both_directions_and_weights_pseudo_labeled_voxels_by_half(n_u):
    """Hand values: the total equals the independent Dice+CE rewrite over the labeled-content voxels plus 0.5 times
    that over the unlabeled-content voxels, whose labels are the teacher's argmax."""
    trainer = bcp_stub(deep_supervision=False)
    trainer.current_epoch = 2  # step 4: the first self-training step
    trainer.paste_box = lambda like: fixed_box()
    trainer.network = Recording(trainer.network)
    data, target, unlabeled = step_inputs(n_u=n_u)
    total, terms = trainer.compute_loss(data, target[0], unlabeled, {}, PassContext())

    box = fixed_box()
    first, second = direction_halves(n_u)
    expected_images = torch.cat((torch.where(box, data[first % 2], unlabeled[first]),
                                 torch.where(box, unlabeled[second], data[second % 2])))
    images, teacher_input = trainer.network.inputs
    assert torch.equal(images, expected_images) and torch.equal(teacher_input, unlabeled)
    with torch.no_grad():
        pseudo = trainer.network.network.teacher(unlabeled).argmax(1, keepdim=True)
    labels = torch.cat((torch.where(box, target[0][first % 2], pseudo[first]),
                        torch.where(box, pseudo[second], target[0][second % 2])))
    from_unlabeled = torch.cat((~box.expand(len(first), 1, SIDE, SIDE), box.expand(len(second), 1, SIDE, SIDE)))
    output, _ = trainer.network.outputs
    sup, unsup = nnunet_dice_ce(output, labels, ~from_unlabeled), nnunet_dice_ce(output, labels, from_unlabeled)
    assert terms["sup"].item() == pytest.approx(sup.item(), rel=1e-5)
    assert terms["unsup"].item() == pytest.approx(unsup.item(), rel=1e-5)
    assert total.item() == pytest.approx((sup + 0.5 * unsup).item(), rel=1e-5)
    assert terms["self_training"].item() == 1


@pytest.mark.parametrize("residual", [False, True])
def test_only_the_student_gets_gradients_in_both_stages(residual):
    for epoch in (0, 2):  # pre-training, self-training
        trainer = bcp_stub(residual=residual)
        trainer.current_epoch = epoch
        data, target, unlabeled = step_inputs()
        total, _ = trainer.compute_loss(data, target, unlabeled, {}, PassContext())
        total.backward()
        assert_gradients_reach(trainer.network.student)
        assert all(p.grad is None and not p.requires_grad for p in trainer.network.teacher.parameters())


def test_teacher_becomes_the_pretrained_student_after_the_last_pretraining_step_then_its_moving_average():
    trainer = bcp_stub()
    data, target, unlabeled = step_inputs()
    batch = {"data": data, "target": target, "unlabeled": {"data": unlabeled}}
    student, teacher = trainer.network.student, trainer.network.teacher
    initial_teacher = [p.clone() for p in teacher.parameters()]
    for epoch, step_in_epoch in ((1, 0), (1, 1), (2, 0), (2, 1)):  # steps 2 and 3 pre-train, 4 and 5 self-train
        trainer.current_epoch, trainer.step_in_epoch = epoch, step_in_epoch
        before = [p.clone() for p in teacher.parameters()]
        trainer.train_step(batch)
        step = 2 * epoch + step_in_epoch
        if step == 2:
            assert all(torch.equal(p, q) for p, q in zip(teacher.parameters(), initial_teacher))
        elif step == 3:
            assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))
        else:
            for t, b, s in zip(teacher.parameters(), before, student.parameters()):
                assert torch.allclose(t, 0.99 * b + 0.01 * s, atol=1e-7)
            assert any(not torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))


def test_stage_follows_from_epoch_and_step_so_resuming_restores_it():
    trainer = bcp_stub()
    assert trainer.pretrain_steps == 4
    stages = []
    for epoch in range(4):
        for trainer.step_in_epoch in range(2):
            trainer.current_epoch = epoch
            data, target, unlabeled = step_inputs()
            stages.append(int(trainer.compute_loss(data, target, unlabeled, {}, PassContext())[1]["self_training"]))
    assert stages == [0, 0, 0, 0, 1, 1, 1, 1]


def test_unlabeled_weight_is_constant_as_released_or_ramped_up_when_asked():
    data, target, unlabeled = step_inputs()
    for rampup_fraction, expected in ((0.0, 0.5), (1.0, 0.5 * math.exp(-5 * (1 - 5 / 16) ** 2))):
        trainer = bcp_stub(rampup_fraction=rampup_fraction)
        trainer.current_epoch, trainer.step_in_epoch = 2, 1  # step 5 of 16
        _, terms = trainer.compute_loss(data, target, unlabeled, {}, PassContext())
        assert terms["unsup_weight"].item() == pytest.approx(expected)


def test_regions_mix_region_targets_and_ignore_channels():
    trainer = bcp_stub(regions=True)
    trainer.current_epoch = 2
    data, target, unlabeled = step_inputs(regions=True, n_u=3)
    total, terms = trainer.compute_loss(data, target, unlabeled, {}, PassContext())
    assert torch.isfinite(total) and terms["unsup"] > 0 and terms["sup"] > 0


def test_paper_variant_keeps_the_largest_component_of_each_pseudo_label_class():
    trainer = bcp_stub(cls=nnUNetTrainerBCP_paper)
    logits = torch.zeros(1, 3, 6, 6)
    logits[0, 1, 0:2, 0:3] = 5  # class 1: 6 voxels
    logits[0, 1, 4:6, 5] = 5    # class 1: 2 voxels, removed
    logits[0, 2, 3, 0] = 5      # class 2: its only component, kept
    pseudo = trainer.pseudo_labels(logits, torch.zeros(1, dtype=torch.int16))
    expected = torch.zeros(1, 1, 6, 6, dtype=torch.int16)
    expected[0, 0, 0:2, 0:3], expected[0, 0, 3, 0] = 1, 2
    assert torch.equal(pseudo, expected)
    plain = bcp_stub().pseudo_labels(logits, torch.zeros(1, dtype=torch.int16))
    assert plain.sum() == 6 + 2 + 2


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_bcp_trains_resumes_and_predicts(ssl_env, tmp_path, configuration):
    """2 epochs of 2 steps: pre-training is epoch 0, so the run resumed at epoch 1 self-trains, from the teacher
    that the checkpoint of epoch 0 holds."""
    checkpoint = train_resume_predict(ssl_env, "nnUNetTrainerBCP", configuration, tmp_path)
    assert {k.split(".")[0] for k in checkpoint["network_weights"]} == {"student", "teacher"}
    assert checkpoint["logging"]["self_training"] == [0.0, 1.0]
