import math

from nnunetv2.training.logging.nnunet_logger import LocalLogger

from nnunet_ssl.trainers.logging import SSLLocalLogger


def logged_epoch(logger, epoch, **terms):
    for key in ("mean_fg_dice", "ema_fg_dice", "train_losses", "val_losses", "lrs"):
        logger.log(key, 0.5, epoch)
    logger.log("dice_per_class_or_region", [0.5], epoch)
    logger.log("epoch_start_timestamps", 10.0 * epoch, epoch)
    logger.log("epoch_end_timestamps", 10.0 * epoch + 3, epoch)
    for term, value in terms.items():
        logger.add_term(term)
        logger.log(term, value, epoch)


def test_terms_are_logged_per_epoch_and_late_terms_padded(tmp_path):
    logger = SSLLocalLogger(LocalLogger())
    logged_epoch(logger, 0, sup=1.0)
    logged_epoch(logger, 1, sup=0.8, cons=0.1)
    assert logger.my_fantastic_logging["sup"] == [1.0, 0.8]
    assert math.isnan(logger.my_fantastic_logging["cons"][0]) and logger.my_fantastic_logging["cons"][1] == 0.1
    assert logger.terms == ["sup", "cons"]
    logger.plot_progress_png(str(tmp_path))
    assert (tmp_path / "progress.png").stat().st_size > 10_000


def test_replacing_a_resumed_logger_keeps_its_history():
    resumed = LocalLogger()
    resumed.load_checkpoint({**LocalLogger().my_fantastic_logging, "sup": [0.9]})
    assert SSLLocalLogger(resumed).my_fantastic_logging["sup"] == [0.9]
