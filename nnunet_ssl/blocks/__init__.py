"""Semi-supervised building blocks: small typed functions of tensors, one module per concern, each tested alone
(``tests/test_blocks.py``). A method module combines them; it never imports from another method module.

* :mod:`~nnunet_ssl.blocks.outputs`: probabilities, the full-resolution part and batch slices of network outputs
* :mod:`~nnunet_ssl.blocks.schedules`: the field's sigmoid ramp-up
* :mod:`~nnunet_ssl.blocks.consistency`: mean squared difference of two predictions' probabilities
* :mod:`~nnunet_ssl.blocks.pseudo_labels`: hard and confident pseudo-labels, ignored voxels, pseudo-label CE
* :mod:`~nnunet_ssl.blocks.mixing`: random boxes, CutMix, copy-paste
* :mod:`~nnunet_ssl.blocks.uncertainty`: predictive entropy and uncertainty-weighted losses
* :mod:`~nnunet_ssl.blocks.distillation`: temperature-softened soft-Dice and KL distillation
* :mod:`~nnunet_ssl.blocks.ema`: exponential moving average of a network and its decay warm-up

Blocks that configure nnU-Net's own losses live in :mod:`nnunet_ssl.nnunet_internals`, with the other uses of
nnU-Net internals.
"""
