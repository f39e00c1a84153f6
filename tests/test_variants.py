"""Short-schedule variants written into an nnUNet_extTrainer folder (nnunet_ssl.variants), found by nnU-Net's own
trainer search and built as nnUNetv2_train builds them."""
import pickle
import sys

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

from nnunet_ssl.trainers import nnUNetTrainerMeanTeacher
from nnunet_ssl.variants import NoMirroring, short_schedule, write_variants_module

from conftest import make_trainer

MIXIN = '''
class Marked:
    marker = "from a file"
'''


def test_variants_are_found_by_nnunet_apply_class_settings_to_plain_nnunet_and_pickle(ssl_env, monkeypatch, tmp_path):
    (tmp_path / "mixins.py").write_text(MIXIN)
    ext = tmp_path / "ext"
    write_variants_module(str(ext), "my_variants", [
        short_schedule(nnUNetTrainer, "nnUNetTrainer_short", 3, 2, 1, save_every=1, mixins=[NoMirroring]),
        short_schedule(nnUNetTrainerMeanTeacher, "nnUNetTrainerMeanTeacher_short", 4, 5, 2,
                       mixins=[f"{tmp_path / 'mixins.py'}:Marked"], consistency_weight=0.5)], "test variants")
    found = {name: recursive_find_python_class(str(ext), name, None, base_folder=str(ext))
             for name in ("nnUNetTrainer_short", "nnUNetTrainerMeanTeacher_short")}

    plain = make_trainer(ssl_env, monkeypatch, found["nnUNetTrainer_short"], "2d")
    assert (plain.num_epochs, plain.num_iterations_per_epoch, plain.num_val_iterations_per_epoch, plain.save_every) \
        == (3, 2, 1, 1)
    assert set(plain.my_init_kwargs) == {"plans", "configuration", "fold", "dataset_json", "device"}
    assert plain.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[3] is None
    assert plain.inference_allowed_mirroring_axes is None

    ssl = make_trainer(ssl_env, monkeypatch, found["nnUNetTrainerMeanTeacher_short"], "2d")
    assert (ssl.num_epochs, ssl.num_iterations_per_epoch, ssl.num_val_iterations_per_epoch, ssl.save_every) \
        == (4, 5, 2, 10)  # save_every_epochs not given: the SSL base's 10
    assert ssl.consistency_weight == 0.5 and ssl.marker == "from a file"

    class Subclass(found["nnUNetTrainerMeanTeacher_short"]):  # a variant of a variant
        num_epochs = 7
    assert make_trainer(ssl_env, monkeypatch, Subclass, "2d").num_epochs == 7

    assert found["nnUNetTrainer_short"].__module__ == "my_variants" and "my_variants" in sys.modules
    assert pickle.loads(pickle.dumps(found["nnUNetTrainerMeanTeacher_short"])) is \
        found["nnUNetTrainerMeanTeacher_short"]
