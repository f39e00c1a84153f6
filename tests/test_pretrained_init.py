"""``-pretrained_weights`` into SSL networks: which U-Nets take the checkpoint (``pretrained_networks``), so that
two co-trained networks keep the different initialisations their methods rely on."""
import pytest
import torch

from conftest import make_trainer
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.networks.pretrained import load_pretrained_weights
from nnunet_ssl.trainers import (nnUNetTrainerCMEMS, nnUNetTrainerDMD, nnUNetTrainerLeFeD, nnUNetTrainerMeanTeacher,
                                 nnUNetTrainerUADCT)
from helpers import tiny_configuration, tiny_unet

TWO_NETWORKS = [nnUNetTrainerDMD, nnUNetTrainerUADCT, nnUNetTrainerCMEMS]


def loaded(cls, tmp_path):
    """The trainer's network (as nnUNetv2_train builds it) after -pretrained_weights, and the checkpoint."""
    torch.manual_seed(0)
    supervised = tiny_unet().state_dict()
    torch.save({"network_weights": supervised}, tmp_path / "supervised.pth")
    network = cls.build_network_architecture(None, tiny_configuration(2), 1, 3, True)
    load_pretrained_weights(network, str(tmp_path / "supervised.pth"))
    return network, supervised


def transferred(unet, checkpoint):
    """Whether every weight nnU-Net transfers (all but the segmentation heads) equals the checkpoint's."""
    return all(torch.equal(value, checkpoint[key]) for key, value in unet.state_dict().items()
               if ".seg_layers." not in key)


def differs_everywhere(a, b):
    """Whether every weight tensor of two U-Nets differs (norm biases and scales start equal: skip constants)."""
    return all(not torch.equal(x, y) for (key, x), y in zip(a.state_dict().items(), b.state_dict().values())
               if x.is_floating_point() and x.numel() > 1 and x.flatten().unique().numel() > 1)


@pytest.mark.parametrize("cls", TWO_NETWORKS)
def test_network_1_takes_the_checkpoint_and_network_2_keeps_its_own_initialisation(cls, tmp_path):
    network, checkpoint = loaded(cls, tmp_path)
    assert transferred(network.net1, checkpoint)
    assert not transferred(network.net2, checkpoint)
    assert differs_everywhere(network.net1, network.net2)
    assert cls.pretrained_networks == "first"


@pytest.mark.parametrize("cls", TWO_NETWORKS)
def test_pretrained_networks_all_loads_both(cls, tmp_path):
    both = type(cls.__name__ + "_both", (cls,), {"pretrained_networks": "all"})
    network, checkpoint = loaded(both, tmp_path)
    assert transferred(network.net1, checkpoint) and transferred(network.net2, checkpoint)


def test_mean_teacher_starts_with_teacher_equal_to_the_pretrained_student(tmp_path):
    network, checkpoint = loaded(nnUNetTrainerMeanTeacher, tmp_path)
    assert transferred(network.student, checkpoint)
    assert all(torch.equal(t, s) for t, s in zip(network.teacher.state_dict().values(),
                                                 network.student.state_dict().values()))


def test_lefed_takes_encoder_and_decoder_1_from_the_checkpoint_and_keeps_decoder_2_fresh(tmp_path):
    network, checkpoint = loaded(nnUNetTrainerLeFeD, tmp_path)
    assert transferred(network.unet, checkpoint)
    fresh = type(network)(tiny_unet()).decoder2.state_dict().keys()
    assert network.decoder2.state_dict().keys() == fresh  # a decoder of its own kind, not in a plain checkpoint


def test_an_unknown_pretrained_networks_value_is_rejected_at_construction(ssl_env, monkeypatch):
    wrong = type("DMDWrong", (nnUNetTrainerDMD,), {"pretrained_networks": "second"})
    with pytest.raises(SSLConfigError, match=r"DMDWrong.pretrained_networks must be one of 'first', 'all', got 'second'"):
        make_trainer(ssl_env, monkeypatch, wrong, "2d")
