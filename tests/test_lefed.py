import copy
import math

import pytest
import torch
import torch.distributed as dist
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from e2e import train_resume_predict
from helpers import nnunet_loss, tiny_configuration, trainer_stub
from nnunet_ssl.networks import pretrained
from nnunet_ssl.networks.lefed import LeFeDNetwork, encode_with_feedback, feature_discrepancy
from nnunet_ssl.trainers.base import PassContext
from nnunet_ssl.trainers.lefed import nnUNetTrainerLeFeD

ARCHITECTURES = ["PlainConvUNet", "ResidualEncoderUNet"]
#: (input shape, 3-stage strides, kernel sizes): the 3D one anisotropic like nnU-Net's plans for thick slices
GEOMETRIES = {
    2: ((2, 1, 16, 16), [[1, 1], [2, 2], [2, 2]], [[3, 3]] * 3),
    3: ((2, 1, 8, 16, 16), [[1, 1, 1], [2, 2, 2], [1, 2, 2]], [[3, 3, 3], [3, 3, 3], [1, 3, 3]]),
}
NUM_CLASSES = 3


def configuration(architecture: str, dim: int):
    """A plans configuration with a small 3-stage U-Net of nnU-Net's layout."""
    _, strides, kernels = GEOMETRIES[dim]
    return tiny_configuration(dim, "plain" if architecture == "PlainConvUNet" else "residual", strides, kernels,
                              convs_per_stage=(2, 1, 1))


def build(architecture="PlainConvUNet", dim=2, deep_supervision=True, trainer=nnUNetTrainerLeFeD):
    torch.manual_seed(0)
    return trainer.build_network_architecture(None, configuration(architecture, dim), 1, NUM_CLASSES,
                                              enable_deep_supervision=deep_supervision)


def image(dim=2, seed=1):
    return torch.randn(GEOMETRIES[dim][0], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("dim", [2, 3])
def test_network_from_plans_predicts_one_logits_tensor(architecture, dim):
    net = build(architecture, dim, deep_supervision=False).eval()
    x = image(dim)
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (x.shape[0], NUM_CLASSES, *x.shape[2:])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("dim", [2, 3])
def test_training_forward_gives_both_decoders_with_deep_supervision_and_skip_shaped_features(architecture, dim):
    net = build(architecture, dim).train()
    x = image(dim)
    out1, out2, features1, features2 = net(x)
    skips = net.unet.encoder(x)
    assert [o.shape for o in out1] == [o.shape for o in out2]
    assert len(out1) == 2 and out1[0].shape == (x.shape[0], NUM_CLASSES, *x.shape[2:])
    assert [f.shape for f in features1] == [f.shape for f in features2] == [s.shape for s in skips]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_plain_unet_inside_is_a_vanilla_nnunet_and_loads_its_pretrained_weights(architecture, tmp_path):
    cm = configuration(architecture, 3)
    vanilla = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                     cm.network_arch_init_kwargs_req_import, 1, NUM_CLASSES, deep_supervision=False)
    net = build(architecture, 3, deep_supervision=False)
    keys = net.state_dict().keys()
    assert {k[len("unet."):] for k in keys if k.startswith("unet.")} == set(vanilla.state_dict())
    assert all(k.startswith(("unet.", "decoder2.")) for k in keys)
    assert net.pretrainable_unets() == [net.unet]

    checkpoint = tmp_path / "supervised.pth"
    torch.save({"network_weights": vanilla.state_dict()}, checkpoint)
    pretrained.load_pretrained_weights(net, str(checkpoint))
    net.unet.decoder.seg_layers.load_state_dict(vanilla.decoder.seg_layers.state_dict())  # nnU-Net skips heads
    x = image(3)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), vanilla.eval()(x))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_feedback_of_zeros_changes_nothing_and_feedback_changes_its_stage_exactly(architecture):
    encoder = build(architecture, 3).unet.encoder
    x = image(3)
    with torch.no_grad():
        plain = encoder(x)
        assert all(torch.equal(a, b) for a, b in zip(encode_with_feedback(encoder, x), plain))
        zeros = [torch.zeros_like(s) for s in plain]
        assert all(torch.equal(a, b) for a, b in zip(encode_with_feedback(encoder, x, zeros), plain))
        for k in range(len(plain)):
            feedback = list(zeros)
            feedback[k] = torch.randn_like(plain[k])
            skips = encode_with_feedback(encoder, x, feedback)
            assert all(torch.equal(skips[j], plain[j]) for j in range(k))
            assert torch.allclose(skips[k], plain[k] + feedback[k], atol=1e-6)
            assert all(not torch.allclose(skips[j], plain[j]) for j in range(k + 1, len(plain)))


def test_decoder2_gates_use_decoder1_features():
    net = build("ResidualEncoderUNet", 2).train()
    x = image(2)
    with torch.no_grad():
        skips = net.unet.encoder(x)
        _, out2, features1, features2 = net(x)
        assert torch.allclose(features2[-1], skips[-1] * (1 + torch.sigmoid(skips[-1])))
        assert torch.equal(features1[-1], skips[-1])
        # decoder 1's transposed convs reach decoder 2 only through its gates
        for transpconv in net.unet.decoder.transpconvs:
            transpconv.weight.mul_(-3)
        _, new_out2, new_features1, _ = net(x)
        assert not torch.allclose(new_features1[0], features1[0])
        assert not torch.allclose(new_out2[0], out2[0])
        # the gates are exactly sigmoid(f1[k]) on skip k: pre-gated skips with open gates give the same output
        open_gates = [torch.full_like(f, 50.0) for f in features1[:-1]] + [new_features1[-1]]
        pre_gated = [s * torch.sigmoid(f) for s, f in zip(skips[:-1], new_features1[:-1])] + [skips[-1]]
        assert torch.allclose(net.decoder2(pre_gated, open_gates)[0][0], new_out2[0], atol=1e-6)


def test_gradients_reach_both_decoders_and_encoder_but_not_through_gates_or_feedback():
    net = build("PlainConvUNet", 2).train()
    x = image(2)
    out1, out2, _, _ = net(x)
    sum(o.mean() for o in out2).backward()
    assert all(p.grad is not None for p in net.decoder2.parameters())
    assert all(p.grad is not None for p in net.unet.encoder.parameters())
    decoder1 = [p for name, p in net.unet.decoder.named_parameters() if not name.startswith("encoder.")]
    assert decoder1 and all(p.grad is None for p in decoder1), "decoder 2's gates must be detached"

    net.zero_grad(set_to_none=True)
    first_input = x.clone().requires_grad_(True)
    _, _, features1, features2 = net(first_input)
    feedback = [1e-3 * d for d in feature_discrepancy(features1, features2)]
    assert not any(f.requires_grad for f in feedback)
    out1, out2, _, _ = net(x, feedback)
    (sum(o.mean() for o in out1) + sum(o.mean() for o in out2)).backward()
    assert first_input.grad is None, "gradient went through the feedback into the previous pass"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def fake_trainer(net, passes=3):
    """A LeFeD trainer with a tiny network and nnU-Net's loss, recording which samples it supervises, without
    nnU-Net's data / plans initialisation."""
    supervised_batches = []
    nnunet = nnunet_loss()

    def loss(output, target):
        supervised_batches.append(output[0].shape[0])
        return nnunet(output, target)

    trainer = trainer_stub(nnUNetTrainerLeFeD, net, loss=loss, passes_per_batch=passes)
    return trainer, supervised_batches


def labels(batch=1):
    """A label map and its half-resolution copy, nnU-Net's deep-supervision target."""
    seg = torch.randint(0, NUM_CLASSES, (batch, 1, 16, 16), generator=torch.Generator().manual_seed(4)).float()
    return [seg, seg[:, :, ::2, ::2]]


def test_train_step_runs_k_passes_each_stepping_with_the_previous_pass_feedback():
    net = build("PlainConvUNet", 2).train()
    trainer, supervised_batches = fake_trainer(net)
    calls = []
    net.register_forward_hook(lambda module, args, output: calls.append((args, output)))
    steps = []
    trainer.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: steps.append(1))
    labeled, unlabeled = image(2, seed=2)[:1], image(2, seed=3)
    target = labels()
    result = trainer.train_step({"data": labeled, "target": target, "unlabeled": {"data": unlabeled}})

    assert len(calls) == 3 and len(steps) == 3 and trainer.step_in_epoch == 1
    assert set(result) == {"loss", "sup1", "sup2", "cons", "discrepancy"}
    assert supervised_batches == [1] * 6, "both decoders, labeled sample only, on every pass"
    assert calls[0][0][0].shape[0] == 3 and calls[0][0][1] is None
    for (_, (_, _, features1, features2)), ((_, feedback), _) in zip(calls[:-1], calls[1:]):
        expected = [1e-3 * (f2 - f1) for f1, f2 in zip(features1, features2)]
        assert len(feedback) == 3 and all(torch.allclose(e, f) for e, f in zip(expected, feedback))
    assert result["discrepancy"] > 0


def test_one_step_per_batch_takes_the_gradient_of_the_passes_mean_loss_each_pass_fed_back_by_the_previous():
    net = build("PlainConvUNet", 2).train()
    reference = copy.deepcopy(net)
    trainer, _ = fake_trainer(net)
    trainer.optimizer_step_per_pass = False
    stepped = []
    trainer.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: stepped.append([p.grad.clone() for p in net.parameters()]))
    labeled, unlabeled, target = image(2, seed=2)[:1], image(2, seed=3), labels()
    trainer.train_step({"data": labeled, "target": target, "unlabeled": {"data": unlabeled}})

    # the released pass written out: both decoders' nnU-Net loss on the labeled patch, weight 1 times the MSE of
    # their softmax over the whole batch, the next pass fed 1e-3 x (decoder 2 - decoder 1) features, no step between
    loss, feedback, total = nnunet_loss(), None, 0
    for _ in range(3):
        out1, out2, features1, features2 = reference(torch.cat((labeled, unlabeled)), feedback)
        sup = loss([o[:1] for o in out1], target) + loss([o[:1] for o in out2], target)
        total = total + sup + ((out1[0].softmax(1) - out2[0].softmax(1)) ** 2).mean()
        feedback = [1e-3 * (f2 - f1).detach() for f1, f2 in zip(features1, features2)]
    (total / 3).backward()
    expected = [p.grad for p in reference.parameters()]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in expected])) < 12, "no clipping in this check"
    assert len(stepped) == 1 and trainer.step_in_epoch == 1
    assert all(torch.allclose(g, e, atol=1e-6, rtol=1e-4) for g, e in zip(stepped[0], expected))


def test_under_ddp_passes_that_only_accumulate_skip_the_all_reduce_and_the_step_is_unchanged(tmp_path):
    """DDP (gloo, one rank): with one step per batch only the last pass all-reduces, and the weights after the
    step equal those of the same step without DDP, so the accumulated gradient is what the last pass reduces."""
    reference = build("PlainConvUNet", 2).train()
    plain, _ = fake_trainer(reference)
    plain.optimizer_step_per_pass = False
    batch = {"data": image(2, seed=2)[:1], "target": labels(), "unlabeled": {"data": image(2, seed=3)}}
    plain.train_step(batch)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        reduces = {}
        for per_pass in (True, False):
            ddp = DistributedDataParallel(build("PlainConvUNet", 2).train())
            calls = []
            ddp.register_comm_hook(None, lambda state, bucket: calls.append(1) or allreduce_hook(None, bucket))
            trainer, _ = fake_trainer(ddp)
            trainer.optimizer_step_per_pass = per_pass
            trainer.train_step(batch)
            reduces[per_pass] = len(calls)
        assert reduces[False] > 0 and reduces[True] == 3 * reduces[False]
        assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(ddp.module.parameters(), reference.parameters()))
    finally:
        dist.destroy_process_group()


def test_pass_total_is_both_supervised_terms_plus_weighted_consistency_and_carries_the_feedback():
    net = build("PlainConvUNet", 2).train()
    trainer, _ = fake_trainer(net)
    trainer.consistency_weight = 2.5
    target = labels()
    images = image(2)
    context = PassContext(0, 3)
    total, terms = trainer.compute_loss(images[:1], target, images[1:], {}, context)
    assert torch.isclose(total, terms["sup1"] + terms["sup2"] + 2.5 * terms["cons"]), "no ramp-up, as released"
    assert len(context.carry["feedback"]) == 3, "the feedback for the next pass"
    trainer.rampup_fraction, trainer.current_epoch = 1.0, 1  # halfway through training: ramp-up exp(-5 / 4)
    total, terms = trainer.compute_loss(images[:1], target, images[1:], {}, PassContext(1, 3, context.carry))
    assert torch.isclose(total, terms["sup1"] + terms["sup2"] + 2.5 * math.exp(-5 / 4) * terms["cons"])
    total.backward()
    assert all(p.grad is not None for p in net.parameters()), "every parameter must enter the loss (DDP)"


def test_mean_inference_averages_both_decoders_and_second_uses_decoder_2():
    class MeanLeFeD(nnUNetTrainerLeFeD):
        inference = "mean"

    net = build(trainer=MeanLeFeD, deep_supervision=False)
    x = image(2)
    with torch.no_grad():
        out1, out2, _, _ = net.train()(x)
        assert torch.allclose(net.eval()(x), (out1 + out2) / 2, atol=1e-6)
        net.inference = "second"
        assert torch.allclose(net.eval()(x), out2, atol=1e-6)
    assert isinstance(net, LeFeDNetwork)


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_lefed_trains_resumes_and_predicts(ssl_env, tmp_path, configuration):
    checkpoint = train_resume_predict(ssl_env, "nnUNetTrainerLeFeD", configuration, tmp_path)
    weights = checkpoint["network_weights"]
    assert any(k.startswith("decoder2.upsamples.") for k in weights)
    assert any(k.startswith("unet.decoder.transpconvs.") for k in weights)
    logs = checkpoint["logging"]
    assert {"sup1", "sup2", "cons", "discrepancy"} <= set(logs)
    assert all(value > 0 for value in logs["discrepancy"])
