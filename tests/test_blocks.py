"""The building blocks of :mod:`nnunet_ssl.blocks`, each alone, on small tensors: values computed by hand or by an
independent rewrite of the formula, and gradients where they matter."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import LN2, LN3, two_voxels
from nnunet_ssl.blocks.consistency import full_resolution_mse, masked_probability_mse, softmax_mse
from nnunet_ssl.blocks.distillation import (dice_distillation, kl_distillation, soft_dice_loss,
                                            temperature_probabilities)
from nnunet_ssl.blocks.ema import ema_decay, ema_update
from nnunet_ssl.blocks.mixing import CutMix, cutmix_boxes, paste, random_boxes, with_partner
from nnunet_ssl.blocks.outputs import batch_part, deep_supervision_targets, full_resolution, probabilities
from nnunet_ssl.blocks.pseudo_labels import (also_ignored, confident_pseudo_labels, hard_pseudo_labels,
                                             largest_components, pseudo_label_ce, voxel_cross_entropy, with_ignored)
from nnunet_ssl.blocks.schedules import sigmoid_rampup
from nnunet_ssl.blocks.uncertainty import (certainty_mask, normalized_entropy, probability_mse,
                                           uncertainty_downweight, uncertainty_weighted_ce)


# ---- outputs -------------------------------------------------------------------------------------------------------
def test_probabilities_are_float32_softmax_over_the_channel_dimension_or_sigmoid_per_region():
    logits = torch.tensor([[0.0, math.log(3.0)]]).half().T[None]  # (1, 2 channels, 1 voxel)
    p = probabilities(logits, regions=False)
    assert p.dtype == torch.float32 and p.flatten().tolist() == pytest.approx([0.25, 0.75], abs=1e-3)
    assert probabilities(logits, regions=True).flatten().tolist() == pytest.approx([0.5, 0.75], abs=1e-3)
    samples = torch.zeros(1, 3, 2, 1)  # (B, samples, C, voxels): softmax over dimension 2
    assert probabilities(samples, False, channel_dim=2).flatten().tolist() == [0.5] * 6


def test_full_resolution_and_batch_part_take_lists_and_tensors_alike():
    full, low = torch.arange(8.0).view(4, 2), torch.arange(4.0).view(4, 1)
    assert full_resolution([full, low]) is full and full_resolution(full) is full
    assert torch.equal(batch_part(full, slice(1, 3)), full[1:3])
    parts = batch_part((full, low), slice(None, 2))
    assert isinstance(parts, list) and [p.tolist() for p in parts] == [[[0, 1], [2, 3]], [[0], [1]]]


# ---- schedules -----------------------------------------------------------------------------------------------------
def test_sigmoid_rampup_matches_hand_values():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(10, 10) == 1.0 and sigmoid_rampup(20, 10) == 1.0 and sigmoid_rampup(3, 0) == 1.0


# ---- consistency ---------------------------------------------------------------------------------------------------
def test_softmax_mse_matches_hand_computation():
    a = torch.tensor([[[0.0]], [[0.0]]]).reshape(1, 2, 1)  # softmax -> (0.5, 0.5)
    b = torch.tensor([math.log(3.0), 0.0]).reshape(1, 2, 1)  # softmax -> (0.75, 0.25)
    assert softmax_mse(a, b).item() == pytest.approx(0.25 ** 2)
    assert softmax_mse(a, b, regions=True).item() == pytest.approx(((0.5 - 0.75) ** 2 + 0) / 2)
    # neither side is detached
    a, b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    softmax_mse(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_full_resolution_mse_compares_full_resolution_probabilities_only():
    # sample 0: logits (ln 3, 0) -> softmax (0.75, 0.25) against (0.5, 0.5); sample 1 agrees
    out1 = torch.zeros(2, 2, 2, 2)
    out1[0, 0] = math.log(3)
    out2 = torch.zeros(2, 2, 2, 2)
    low_res = [torch.randn(2, 2, 1, 1), torch.randn(2, 2, 1, 1)]
    # 8 of 16 values differ by 0.25 -> mean 8 * 0.0625 / 16
    assert torch.isclose(full_resolution_mse([out1, low_res[0]], [out2, low_res[1]]), torch.tensor(0.03125))
    # regions: sigmoid(ln 3) = 0.75 against 0.5 on channel 0 of sample 0 only -> 4 of 16 values
    assert torch.isclose(full_resolution_mse(out1, out2, regions=True), torch.tensor(0.015625))


# ---- pseudo-labels -------------------------------------------------------------------------------------------------
def logits_of(probabilities):
    """(B, C, N) logits whose softmax is ``probabilities`` (given per voxel as rows)."""
    return torch.log(torch.tensor(probabilities)).T[None]


def test_pseudo_labels_are_argmax_and_confident_exactly_at_or_above_the_threshold():
    logits = logits_of([[0.96, 0.02, 0.02], [0.03, 0.94, 0.03], [0.10, 0.05, 0.85], [0.01, 0.01, 0.98]])
    labels, confident = confident_pseudo_labels(logits, 0.95, regions=False)
    assert labels.tolist() == [[[0, 1, 2, 2]]]
    assert confident.tolist() == [[[True, False, False, True]]]
    assert confident_pseudo_labels(logits, 0.9, regions=False)[1].tolist() == [[[True, True, False, True]]]
    assert with_ignored(labels, confident, False, ignore_label=7).tolist() == [[[0, 7, 7, 2]]]


def test_region_pseudo_labels_need_every_region_confident():
    p = torch.tensor([[0.97, 0.02], [0.97, 0.50], [0.03, 0.99], [0.60, 0.99]]).T[None]  # (1, regions, voxels)
    labels, confident = confident_pseudo_labels(torch.logit(p), 0.95, regions=True)
    assert labels.tolist() == [[[True, True, False, True], [False, False, True, True]]]
    assert confident.tolist() == [[[True, False, True, False]]]
    target = with_ignored(labels, confident, True, ignore_label=-1)
    assert target.shape == (1, 3, 4) and target[:, -1].tolist() == [[False, True, False, True]]


def test_hard_pseudo_labels_are_the_argmax_or_regions_above_one_half():
    p = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]]).T[None]  # (1, 3, 2 voxels)
    assert hard_pseudo_labels(p, regions=False).tolist() == [[1, 0]]
    assert hard_pseudo_labels(p, regions=True).tolist() == [[[False, True], [False, False], [False, False]]]


def test_voxel_cross_entropy_is_per_voxel_and_averages_region_channels():
    logits = two_voxels([0.0, 0.0], [LN3, 0.0])  # p(class 1) = 1/2 and 1/4
    ce = voxel_cross_entropy(logits, torch.tensor([[1, 1]]).view(1, 2, 1), regions=False)
    assert ce.shape == (1, 1, 2, 1) and ce.flatten().tolist() == pytest.approx([LN2, math.log(4)])
    bce = voxel_cross_entropy(logits, torch.ones(1, 2, 2, 1), regions=True)  # sigmoid: 1/2, 1/2; 3/4, 1/2
    assert bce.flatten().tolist() == pytest.approx([LN2, (math.log(4 / 3) + LN2) / 2])


def test_consistency_losses_hand_values():
    logits = two_voxels([0.0, 0.0], [LN3, 0.0])
    other = two_voxels([0.2, 0.8], [0.6, 0.4])  # pseudo-labels 1 and 0
    weight = torch.tensor([1.0, 0.5]).view(1, 1, 2, 1)
    assert pseudo_label_ce(logits, other, weight, False).item() == pytest.approx((LN2 + 0.5 * math.log(4 / 3)) / 2)
    # mse: probabilities (1/2, 1/2) and (3/4, 1/4) against the other network's
    mse = ((0.3 ** 2 + 0.3 ** 2) / 2 + 0.5 * (0.15 ** 2 + 0.15 ** 2) / 2) / 2
    assert probability_mse(logits, other, weight, False).item() == pytest.approx(mse)
    # regions: a region's pseudo-label is other > 0.5; voxel 1: labels (0, 1) vs logits (0, 0), BCE ln 2 each;
    # voxel 2: labels (1, 0) vs logits (ln 3, 0), BCE ln(4/3) and ln 2
    assert pseudo_label_ce(logits, other, weight, True).item() == pytest.approx(
        (LN2 + 0.5 * (math.log(4 / 3) + LN2) / 2) / 2)


def test_pseudo_label_ce_sends_no_gradient_to_the_target():
    logits, other = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 3, 4, 4).softmax(1)
    other.requires_grad_(True)
    pseudo_label_ce(logits, other, 1.0, regions=False).backward()
    assert logits.grad.abs().sum() > 0 and other.grad is None


# ---- mixing --------------------------------------------------------------------------------------------------------
def test_random_boxes_have_the_rounded_relative_side_on_every_axis():
    torch.manual_seed(0)
    boxes = random_boxes(torch.tensor([2 / 3, 0.0, 1.0, 0.5]), (9, 12, 7))
    assert boxes.shape == (4, 1, 9, 12, 7)
    assert boxes.flatten(1).sum(1).tolist() == [6 * 8 * 5, 0, 9 * 12 * 7, 4 * 6 * 4]  # torch rounds halves to even
    for box in boxes[[0, 3], 0]:  # a box: the product of its extents along the axes
        extents = [box.any(dim=tuple(d for d in range(3) if d != axis)) for axis in range(3)]
        assert torch.equal(box, extents[0][:, None, None] & extents[1][None, :, None] & extents[2][None, None, :])


def test_cutmix_boxes_follow_probability_and_volume_range():
    torch.manual_seed(0)
    assert not cutmix_boxes(8, (16, 16), 0.0, (0.02, 0.4), torch.device("cpu")).any()
    fractions = cutmix_boxes(64, (40, 40), 1.0, (0.1, 0.3), torch.device("cpu")).flatten(1).float().mean(1)
    assert fractions.min() >= 0.08 and fractions.max() <= 0.32  # volume range up to the rounding of the sides


def test_cutmix_setting_draws_the_boxes_of_its_probability_and_volume():
    torch.manual_seed(1)
    expected = cutmix_boxes(16, (12, 10), 0.7, (0.1, 0.3), torch.device("cpu"))
    torch.manual_seed(1)
    assert torch.equal(CutMix(0.7, (0.1, 0.3)).boxes_for(torch.zeros(16, 2, 12, 10)), expected)
    assert not CutMix(probability=0.0).boxes_for(torch.zeros(8, 1, 16, 16)).any()


def test_cutmix_takes_the_box_from_the_previous_sample_for_images_and_pseudo_labels_alike():
    torch.manual_seed(0)
    images = torch.arange(3.0)[:, None, None, None].expand(3, 1, 8, 8) * 10 + torch.rand(3, 1, 8, 8)
    labels = torch.arange(3)[:, None, None, None].expand(3, 1, 8, 8)
    boxes = random_boxes(torch.tensor([0.5, 0.25, 0.75]), (8, 8))
    mixed_images, mixed_labels = with_partner(images, boxes), with_partner(labels, boxes)
    for i in range(3):
        inside = boxes[i, 0]
        assert torch.equal(mixed_images[i, 0][inside], images[i - 1, 0][inside])
        assert torch.equal(mixed_images[i, 0][~inside], images[i, 0][~inside])
        expected = torch.where(inside, torch.full_like(inside, (i - 1) % 3, dtype=torch.long), i)
        assert torch.equal(mixed_labels[i, 0], expected)


def test_paste_puts_content_inside_and_background_outside():
    boxes = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    boxes[..., 1:3, 2:4] = True
    pasted = paste(torch.ones(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), boxes)
    assert torch.equal(pasted, boxes.expand(1, 2, 4, 4).float())


# ---- uncertainty ---------------------------------------------------------------------------------------------------
def mean_of(*samples):
    return torch.stack([torch.tensor(s, dtype=torch.float).view(1, -1, 1, 1) for s in samples]).mean(0)


def test_normalized_entropy_is_zero_for_agreeing_confident_samples_and_rises_with_disagreement():
    agree = mean_of([0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0])
    split_two = mean_of([1, 0, 0, 0], [0, 1, 0, 0])
    split_four = mean_of([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1])
    assert normalized_entropy(agree, False).item() == 0.0
    assert normalized_entropy(split_two, False).item() == pytest.approx(LN2 / math.log(4))  # 0.5
    assert normalized_entropy(split_four, False).item() == pytest.approx(1.0)
    # identical soft samples keep their own (aleatoric) entropy: H(0.5, 0.25, 0.25) / log 3
    soft = mean_of([0.5, 0.25, 0.25], [0.5, 0.25, 0.25])
    assert normalized_entropy(soft, False).item() == pytest.approx(1.5 * LN2 / LN3)
    # regions: mean binary entropy over channels / log 2; channel 0 split 50/50, channel 1 agreeing
    regions = mean_of([1, 1], [0, 1])
    assert normalized_entropy(regions, True).item() == pytest.approx(0.5)
    assert normalized_entropy(regions, True).shape == (1, 1, 1, 1)


def test_consistency_weight_is_exp_of_minus_uncertainty():
    u = torch.tensor([0.0, 0.5, 1.0])
    assert uncertainty_downweight(u, 1.0).tolist() == pytest.approx([1.0, math.exp(-0.5), math.exp(-1)])
    assert uncertainty_downweight(u, 2.0).tolist() == pytest.approx([1.0, math.exp(-1), math.exp(-2)])


def test_uncertainty_weighted_ce_hand_values():
    logits = two_voxels([0.0, 0.0], [LN3, 0.0])  # p(target) = 1/2 and 1/4: CE = ln 2 and ln 4
    target = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1)
    weight = torch.tensor([1.0, 2.0]).view(1, 1, 2, 1)
    assert uncertainty_weighted_ce(logits, target, weight, False).item() == pytest.approx((LN2 + 2 * 2 * LN2) / 2)
    ignored = torch.tensor([0.0, 5.0]).view(1, 1, 2, 1)  # voxel 2 carries the ignore label 5
    assert uncertainty_weighted_ce(logits, ignored, weight, False, ignore_label=5).item() == pytest.approx(LN2)
    # regions: BCE averaged over channels; voxel 1: targets (1, 0), logits (0, 0); voxel 2: targets (1, 1)
    region_target = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(1, 2, 2, 1)
    bce_voxel2 = (math.log(4 / 3) + LN2) / 2
    assert uncertainty_weighted_ce(logits, region_target, weight, True).item() == pytest.approx(
        (LN2 + 2 * bce_voxel2) / 2)
    with_ignore_channel = torch.cat([region_target, torch.tensor([0.0, 1.0]).view(1, 1, 2, 1)], 1)
    assert uncertainty_weighted_ce(logits, with_ignore_channel, weight, True, ignore_label=3).item() == \
        pytest.approx(LN2)


# ---- distillation --------------------------------------------------------------------------------------------------
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


@pytest.mark.parametrize("distillation", [dice_distillation, kl_distillation])
def test_distillation_reaches_both_sides(distillation):
    torch.manual_seed(0)
    z1, z2 = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 3, 4, 4, requires_grad=True)
    distillation(z1, z2, 2.0, False).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


# ---- EMA -----------------------------------------------------------------------------------------------------------
def test_ema_update_averages_parameters_and_float_buffers_and_copies_counters():
    torch.manual_seed(0)
    source, target = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        source.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        target.weight.copy_(torch.tensor([3.0, 2.0, 1.0]))
        source.running_mean.fill_(4.0)
    source.num_batches_tracked.fill_(7)
    ema_update(target, source, 0.75)
    assert target.weight.tolist() == pytest.approx([0.75 * 3 + 0.25 * 1, 2.0, 0.75 * 1 + 0.25 * 3])
    assert target.running_mean.tolist() == pytest.approx([0.25 * 4] * 3)  # target's own running mean was 0
    assert target.num_batches_tracked.item() == 7
    assert source.weight.tolist() == [1.0, 2.0, 3.0] and target.weight.grad is None


def test_ema_decay_warms_up_as_one_minus_one_over_step_plus_one():
    assert [ema_decay(step, 0.99) for step in (0, 1, 3, 99, 1000)] == pytest.approx([0.0, 0.5, 0.75, 0.99, 0.99])
    assert ema_decay(9, 0.5) == 0.5


# ---- additions for BCP and UniMatch: deep-supervision targets, ignored voxels, largest components -------------------
def test_deep_supervision_targets_are_nnunets_downsampled_labels():
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

    torch.manual_seed(0)
    seg = torch.randint(0, 4, (2, 1, 10, 12, 6), dtype=torch.int16)
    outputs = [torch.zeros(2, 4, 10, 12, 6), torch.zeros(2, 4, 5, 6, 3), torch.zeros(2, 4, 2, 3, 2)]
    targets = deep_supervision_targets(seg, outputs)
    nnunet = DownsampleSegForDSTransform([[1, 1, 1], [0.5, 0.5, 0.5], [0.2, 0.25, 1 / 3]])
    expected = zip(*(nnunet(segmentation=s)["segmentation"] for s in seg))
    for target, reference in zip(targets, expected):
        assert target.dtype == seg.dtype and torch.equal(target, torch.stack(reference))
    assert deep_supervision_targets(seg, outputs[0]) is seg


def test_also_ignored_adds_ignored_voxels_to_label_maps_and_region_ignore_channels():
    labels = torch.tensor([[[[0, 1], [2, 3]]]])  # 3: already ignored
    drop = torch.tensor([[[[True, False], [False, False]]]])
    assert also_ignored(labels, drop, False, 3).tolist() == [[[[3, 1], [2, 3]]]]
    regions = torch.tensor([[[[1, 0], [1, 1]], [[0, 0], [0, 1]]]], dtype=torch.uint8)  # region, ignore channel
    out = also_ignored(regions, drop, True, 3)
    assert out.dtype == torch.uint8 and out.tolist() == [[[[1, 0], [1, 1]], [[1, 0], [0, 1]]]]


def test_largest_components_keeps_one_fully_connected_component_per_label_and_region():
    labels = torch.tensor([[[[1, 1, 0, 0, 1],
                             [0, 0, 1, 0, 0],     # the diagonal joins (0, 0..1) and (1, 2): 3 voxels
                             [2, 0, 0, 0, 1],
                             [2, 0, 0, 0, 1]]]])  # label 1 elsewhere: 1 + 2 voxels, removed; label 2 kept
    expected = torch.tensor([[[[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [2, 0, 0, 0, 0], [2, 0, 0, 0, 0]]]])
    assert torch.equal(largest_components(labels), expected)
    regions = torch.stack((labels[:, 0] == 1, labels[:, 0] == 2), 1)
    assert torch.equal(largest_components(regions), torch.stack((expected[:, 0] == 1, expected[:, 0] == 2), 1))
    assert torch.equal(largest_components(torch.zeros(2, 1, 3, 3, 3, dtype=torch.long)), torch.zeros(2, 1, 3, 3, 3,
                                                                                                      dtype=torch.long))


@pytest.mark.parametrize("spatial", [(12, 10), (6, 7, 5)])
def test_largest_components_of_a_batch_match_acvl_utils_per_image(spatial):
    """The batched version against nnU-Net's post-processing helper, one image and label (region) at a time."""
    from acvl_utils.morphology.morphology_helper import remove_all_but_largest_component

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (4, 1, *spatial), generator=generator) * (torch.rand(4, 1, *spatial,
                                                                                  generator=generator) < 0.4)
    labels[3] = 0  # an empty image
    labels[2, 0] = 0
    labels[2, 0][(0,) * len(spatial)] = labels[2, 0][(-1,) * len(spatial)] = 1  # two single voxels, tied for the largest: both kept
    expected = torch.zeros_like(labels)
    for b in range(4):
        for value in (1, 2):
            mask = remove_all_but_largest_component((labels[b, 0] == value).numpy())
            expected[b, 0][torch.from_numpy(mask)] = value
    assert torch.equal(largest_components(labels), expected) and (expected[2] == 1).sum() == 2
    assert (largest_components(labels) != labels).any(), "components were removed"
    regions = torch.stack((labels[:, 0] > 0, labels[:, 0] == 2), 1)
    expected_regions = torch.stack([torch.stack([torch.from_numpy(remove_all_but_largest_component(r.numpy()))
                                                 for r in image]) for image in regions])
    assert torch.equal(largest_components(regions), expected_regions)


def test_masked_dice_only_loss_and_deep_supervision_wrapper_follow_nnunets_loss():
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunet_ssl.nnunet_internals import deep_supervision_like, masked_segmentation_loss

    torch.manual_seed(0)
    logits, labels = torch.randn(2, 3, 6, 6), torch.randint(0, 4, (2, 1, 6, 6))  # 3: ignored
    dice_only = masked_segmentation_loss(False, True, 3, weight_ce=0)
    with_ce = masked_segmentation_loss(False, True, 3)
    keep = labels != 3
    ce = F.cross_entropy(logits, labels[:, 0].clamp(max=2), reduction="none")[keep[:, 0]].mean()
    assert with_ce(logits, labels).item() == pytest.approx((dice_only(logits, labels) + ce).item(), rel=1e-5)
    wrapped = deep_supervision_like(DeepSupervisionWrapper(with_ce, (0.75, 0.25)), dice_only)
    assert isinstance(wrapped, DeepSupervisionWrapper) and tuple(wrapped.weight_factors) == (0.75, 0.25)
    assert deep_supervision_like(with_ce, dice_only) is dice_only


# ---- UA-MT's certainty mask and masked consistency ------------------------------------------------------------------
def test_certainty_mask_and_masked_consistency_hand_values():
    # two voxels of a two-class patch: the teacher's mean is uniform at voxel 0, (0.9, 0.1) at voxel 1
    mean = torch.tensor([[[0.5, 0.9], [0.5, 0.1]]])
    entropy_1 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))  # 0.325 nats: 0.469 of ln 2
    torch.testing.assert_close(normalized_entropy(mean, False), torch.tensor([[[1.0, entropy_1 / math.log(2)]]]))
    mask = certainty_mask(mean, 0.75, regions=False)
    assert mask.tolist() == [[[0.0, 1.0]]]
    assert certainty_mask(mean, 0.4, regions=False).sum() == 0
    # student probabilities (0.6, 0.4) at the kept voxel: squared differences 0.09 and 0.09 over 2 channels
    student_logits = torch.log(torch.tensor([[[0.5, 0.6], [0.5, 0.4]]]))
    target = torch.tensor([[[0.0, 0.9], [1.0, 0.1]]])  # voxel 0 differs a lot but is masked out
    assert masked_probability_mse(student_logits, target, mask, False).item() == pytest.approx(0.18 / 2)
    assert masked_probability_mse(student_logits, target, torch.zeros_like(mask), False).item() == 0.0


def test_certainty_mask_and_masked_consistency_for_three_classes_and_regions():
    mean = torch.tensor([[[1 / 3, 0.8], [1 / 3, 0.1], [1 / 3, 0.1]]])
    h = -(0.8 * math.log(0.8) + 2 * 0.1 * math.log(0.1))
    torch.testing.assert_close(normalized_entropy(mean, False), torch.tensor([[[1.0, h / math.log(3)]]]))
    assert certainty_mask(mean, 0.75, regions=False).tolist() == [[[0.0, 1.0]]]  # 0.58 of ln 3
    # two region channels at one voxel: binary entropies of 0.5 (1 bit) and 0.9, averaged
    regions = torch.tensor([[[0.5], [0.9]]])
    binary = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    torch.testing.assert_close(normalized_entropy(regions, True), torch.tensor([[[(1 + binary) / 2]]]))
    student = torch.tensor([[[0.0], [0.0]]])  # sigmoid 0.5 on both channels
    expected = ((0.5 - 0.5) ** 2 + (0.5 - 0.9) ** 2) / 2
    assert masked_probability_mse(student, regions, torch.ones(1, 1, 1), True).item() == pytest.approx(expected)


def test_mixed_with_partners_mixes_the_batch_and_a_prediction_with_the_same_boxes():
    from nnunet_ssl.blocks.mixing import CutMix, mixed_with_partners
    batch = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 6, 6).clone()
    same, identity = mixed_with_partners(None, batch)
    assert same is batch and identity(batch) is batch
    torch.manual_seed(0)
    mixed, onto_mixed = mixed_with_partners(CutMix(probability=1.0, volume=(0.25, 0.5)), batch)
    inside = mixed != batch
    assert inside.any() and not inside.all(), "a box, not the whole patch"
    torch.testing.assert_close(mixed[inside], batch.roll(1, 0)[inside])  # box content from the previous patch
    prediction = batch.expand(3, 2, 6, 6) * 10
    torch.testing.assert_close(onto_mixed(prediction), mixed.expand(3, 2, 6, 6) * 10)
