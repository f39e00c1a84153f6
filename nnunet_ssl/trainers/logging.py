"""nnU-Net's local logger, extended with one list per SSL loss term and a progress.png that draws them."""
import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

from nnunet_ssl.nnunet_internals import nnunet_log_keys  # noqa: E402

NNUNET_KEYS = nnunet_log_keys()


class SSLLocalLogger(LocalLogger):
    """Takes over the lists of the logger it replaces (so a resumed run keeps its history)."""

    def __init__(self, replaced: LocalLogger):
        super().__init__(replaced.verbose)
        self.my_fantastic_logging = replaced.my_fantastic_logging

    @property
    def terms(self):
        return [k for k in self.my_fantastic_logging if k not in NNUNET_KEYS]

    def add_term(self, term: str) -> None:
        """Register ``term`` (idempotent). A term first seen late is padded with NaN for the earlier epochs."""
        values = self.my_fantastic_logging.setdefault(term, [])
        epochs_so_far = len(self.my_fantastic_logging["train_losses"]) - 1
        values.extend([np.nan] * (epochs_so_far - len(values)))

    def plot_progress_png(self, output_folder):
        """nnU-Net's panels (losses and pseudo Dice, epoch time, learning rate) plus one panel of SSL terms."""
        log = self.my_fantastic_logging
        n = min(len(log[k]) for k in NNUNET_KEYS)
        x = list(range(n))
        fig, (ax_loss, ax_terms, ax_time, ax_lr) = plt.subplots(4, 1, figsize=(16, 28))
        ax_loss.plot(x, log["train_losses"][:n], "b-", label="loss_tr", linewidth=3)
        ax_loss.plot(x, log["val_losses"][:n], "r-", label="loss_val", linewidth=3)
        ax_dice = ax_loss.twinx()
        ax_dice.plot(x, log["mean_fg_dice"][:n], "g:", label="pseudo dice", linewidth=2)
        ax_dice.plot(x, log["ema_fg_dice"][:n], "g-", label="pseudo dice (mov. avg.)", linewidth=3)
        ax_loss.set(xlabel="epoch", ylabel="loss")
        ax_dice.set_ylabel("pseudo dice")
        ax_loss.legend(loc=(0, 1))
        ax_dice.legend(loc=(0.2, 1))
        for term in self.terms:
            ax_terms.plot(x, log[term][:n], label=term, linewidth=3)
        ax_terms.set(xlabel="epoch", ylabel="SSL loss terms (per-epoch mean)")
        ax_terms.legend(loc=(0, 1), ncol=4)
        durations = np.subtract(log["epoch_end_timestamps"][:n], log["epoch_start_timestamps"][:n])
        ax_time.plot(x, durations, "b-", label="epoch duration", linewidth=3)
        ax_time.set(xlabel="epoch", ylabel="time [s]", ylim=(0, max(1.0, float(np.max(durations, initial=0)) * 1.1)))
        ax_time.legend(loc=(0, 1))
        ax_lr.plot(x, log["lrs"][:n], "b-", label="learning rate", linewidth=3)
        ax_lr.set(xlabel="epoch", ylabel="learning rate")
        ax_lr.legend(loc=(0, 1))
        fig.tight_layout()
        fig.savefig(f"{output_folder}/progress.png")
        plt.close(fig)
