"""What the end-to-end tests control in the ``<Trainer>_tiny`` variants (see conftest.py), through environment
variables of the ``nnUNetv2_train`` process. Loaded by the variants module from this file."""
import os
import sys

import torch


class EndToEndTestHooks:
    """Epochs from ``NNUNET_SSL_TEST_EPOCHS`` (default 1); a crash-like exit (code 3) after the epoch named in
    ``NNUNET_SSL_TEST_CRASH_AFTER_EPOCH``, to test resumption with ``--c``."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("NNUNET_SSL_TEST_EPOCHS", "1"))

    def on_epoch_end(self):
        super().on_epoch_end()
        if os.environ.get("NNUNET_SSL_TEST_CRASH_AFTER_EPOCH") == str(self.current_epoch - 1):
            sys.exit(3)
