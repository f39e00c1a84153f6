"""Network containers built from nnU-Net plans, and -pretrained_weights into them."""
import pytest
import torch

from helpers import tiny_unet
from nnunet_ssl.networks.containers import SharedEncoderTwoDecoders, StudentTeacher, TwoNetworks
from nnunet_ssl.networks.pretrained import load_pretrained_weights


def small_unet(dim=2, residual=False, deep_supervision=True):
    return tiny_unet(dim, "residual" if residual else "plain", deep_supervision=deep_supervision)


def containers(dim, residual):
    return [TwoNetworks(small_unet(dim, residual), small_unet(dim, residual)),
            SharedEncoderTwoDecoders(small_unet(dim, residual)),
            StudentTeacher(small_unet(dim, residual))]


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("residual", [False, True])
def test_training_returns_two_outputs_and_eval_one_logits_tensor(dim, residual):
    x = torch.randn(2, 1, *([16] * dim))
    for net in containers(dim, residual):
        for module in net.modules():
            if hasattr(module, "deep_supervision"):
                module.deep_supervision = False
        net.train()
        out1, out2 = net(x, x) if isinstance(net, StudentTeacher) else net(x)
        assert out1.shape == out2.shape == (2, 3, *([16] * dim))
        net.eval()
        with torch.no_grad():
            assert net(x).shape == (2, 3, *([16] * dim))


def test_second_decoder_shares_the_encoder_but_not_the_weights():
    net = SharedEncoderTwoDecoders(small_unet())
    assert net.decoder2.encoder is net.unet.encoder
    assert not torch.equal(net.decoder2.stages[0].convs[0].conv.weight, net.unet.decoder.stages[0].convs[0].conv.weight)
    assert not any(k.startswith("decoder2.encoder.") and k.replace("decoder2.", "unet.") not in net.state_dict()
                   for k in net.state_dict())


def test_mean_inference_averages_the_logits_and_second_uses_network_2():
    net = TwoNetworks(small_unet(deep_supervision=False), small_unet(deep_supervision=False), inference="mean").eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(x), (net.net1(x) + net.net2(x)) / 2)
        net.inference = "second"
        assert torch.equal(net(x), net.net2(x))


def test_teacher_is_an_exponential_moving_average_and_takes_no_gradient():
    net = StudentTeacher(small_unet(deep_supervision=False))
    assert not any(p.requires_grad for p in net.teacher.parameters())
    student_weight = next(net.student.parameters())
    teacher_weight = next(net.teacher.parameters())
    before = teacher_weight.detach().clone()
    with torch.no_grad():
        student_weight.add_(1.0)
    net.update_teacher(0.9)
    assert torch.allclose(teacher_weight, 0.9 * before + 0.1 * (before + 1.0))
    net.train()
    x = torch.randn(2, 1, 16, 16)
    student_out, teacher_out = net(x, x)
    (student_out.sum() + teacher_out.sum()).backward()
    assert student_weight.grad is not None and teacher_weight.grad is None


def test_pretrained_supervised_checkpoint_initialises_every_unet_inside(tmp_path):
    supervised = small_unet()
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": supervised.state_dict()}, path)
    for net in containers(2, False):
        load_pretrained_weights(net, str(path))
        for unet in net.pretrainable_unets():
            for key, value in unet.state_dict().items():
                if ".seg_layers." not in key:  # nnU-Net never transfers the segmentation heads
                    assert torch.equal(value, supervised.state_dict()[key]), key


def test_pretrained_weights_for_a_plain_network_still_use_nnunets_checks(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"network_weights": small_unet(residual=True).state_dict()}, path)
    with pytest.raises(AssertionError, match="missing in the pretrained model"):
        load_pretrained_weights(small_unet(), str(path))
