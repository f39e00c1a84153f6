"""``nnUNetv2_train ... -pretrained_weights`` for SSL networks.

nnU-Net loads pretrained weights with a module-level function that requires every key of the network to exist in
the checkpoint, so a plain supervised checkpoint cannot initialise a network holding two U-Nets or an extra
decoder. nnunet_ssl routes that call through :func:`load_pretrained_weights`: networks that declare
``pretrainable_unets()`` get nnU-Net's own loading applied to each plain U-Net inside; every other network is
handed to nnU-Net's function unchanged.
"""
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights as nnunet_load_pretrained_weights

from nnunet_ssl.nnunet_internals import install_pretrained_loader


def unwrap(network):
    """The module inside DDP and torch.compile wrappers."""
    if isinstance(network, DDP):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def load_pretrained_weights(network, fname, verbose=False):
    module = unwrap(network)
    if not hasattr(module, "pretrainable_unets"):
        return nnunet_load_pretrained_weights(network, fname, verbose=verbose)
    for unet in module.pretrainable_unets():
        nnunet_load_pretrained_weights(unet, fname, verbose=verbose)


def install() -> None:
    """Point ``nnUNetv2_train``'s pretrained-weights call at :func:`load_pretrained_weights` (idempotent)."""
    install_pretrained_loader(load_pretrained_weights)
