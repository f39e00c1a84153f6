"""A newcomer's own 2D colour dataset, end to end through the commands the README walks: folders of RGB PNG images,
0/255 masks, unlabeled and test images -> nnunet_ssl_convert_folder -> nnUNetv2_plan_and_preprocess ->
nnunet_ssl_preprocess_unlabeled -> nnUNetv2_train on fold ``all`` (4 labeled cases: fewer than nnU-Net's 5 folds)
with a schedule written as class attributes -> nnUNetv2_predict -> nnunet_ssl_evaluate."""
import importlib.util
import json
import os
import shutil
import textwrap

import numpy as np
import pytest
import torch
from skimage import io

from conftest import bin_path, run_cli
from nnunet_ssl.dataset_conversion import labeled_folder
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.evaluation import metrics
from nnunet_ssl.preprocess_unlabeled import main as preprocess_unlabeled_main
from nnunet_ssl.preprocess_unlabeled import preprocess_unlabeled

DATASET = "Dataset501_Discs"
TRAINER = "nnUNetTrainerMeanTeacher_short"
# the README's pattern for a variant: every setting a class attribute, nnU-Net's schedule included
SHORT_TRAINER = textwrap.dedent(f'''
    from nnunet_ssl.trainers import nnUNetTrainerMeanTeacher


    class {TRAINER}(nnUNetTrainerMeanTeacher):
        num_epochs = 1
        num_iterations_per_epoch = 2
        num_val_iterations_per_epoch = 1

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
            """No mirroring, so that validation and prediction run without test-time augmentation."""
            rotation, dummy_2d, initial_patch_size, _ = \\
                super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            self.inference_allowed_mirroring_axes = None
            return rotation, dummy_2d, initial_patch_size, None
''')


def write_discs(folder, count, seed, masks=True, shape=(40, 48)):
    """RGB images of a red disc on a dark noisy background, as <folder>/img<i>.png, and 0/255 masks as
    <folder>_masks/img<i>_mask.png (the layout of many 2D datasets)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    os.makedirs(folder)
    if masks:
        os.makedirs(f"{folder}_masks")
    for i in range(count):
        centre = rng.uniform(0.35, 0.65, 2) * shape
        disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= (rng.uniform(0.15, 0.25) * min(shape)) ** 2
        image = rng.normal(60, 15, (*shape, 3))
        image[disc] = rng.normal((200, 80, 60), 15, (int(disc.sum()), 3))
        io.imsave(os.path.join(folder, f"img{seed}_{i}.png"), np.clip(image, 0, 255).astype(np.uint8),
                  check_contrast=False)
        if masks:
            io.imsave(os.path.join(f"{folder}_masks", f"img{seed}_{i}_mask.png"), (disc * 255).astype(np.uint8),
                      check_contrast=False)


@pytest.fixture(scope="module")
def own_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_dataset")
    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_extTrainer=str(root / "ext"), nnUNet_n_proc_DA="1",
               nnUNet_def_n_proc="1", nnUNet_compile="f", PYTHONWARNINGS="ignore")
    (root / "ext").mkdir()
    (root / "ext" / "my_trainers.py").write_text(SHORT_TRAINER)
    for name, count, seed in (("images", 4, 0), ("unlabeled", 2, 1), ("test", 2, 2)):
        write_discs(str(root / "input" / name), count, seed, masks=name != "unlabeled")
    return root, env


def test_rgb_png_dataset_end_to_end_on_fold_all(own_env, monkeypatch, capsys):
    root, env = own_env
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, env[var])
    source = root / "input"
    labeled_folder.main(["-i", str(source / "images"), "-l", str(source / "images_masks"), "--label-suffix", "_mask",
                         "-u", str(source / "unlabeled"), "--test-images", str(source / "test"), "--test-labels",
                         str(source / "test_masks"), "-d", "501", "-n", "Discs", "--labels", "background=0,disc=1"])
    raw = root / "raw" / DATASET
    dataset = json.loads((raw / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "R", "1": "G", "2": "B"} and dataset["file_ending"] == ".png"
    assert sorted(os.listdir(raw / "imagesUnlabeled")) == ["img1_0_0000.png", "img1_1_0000.png"]
    label = io.imread(raw / "labelsTr" / "img0_0.png")
    assert set(np.unique(label)) == {0, 1}, "0/255 masks become labels 0/1"
    assert np.array_equal(io.imread(raw / "imagesTr" / "img0_0_0000.png"), io.imread(source / "images" / "img0_0.png"))

    run_cli([bin_path("nnUNetv2_plan_and_preprocess"), "-d", "501", "-c", "2d", "-npfp", "1", "-np", "1",
             "--verify_dataset_integrity"], env)
    preprocess_unlabeled_main(["-d", "501", "-c", "2d", "-np", "1"])  # one RGB file = nnU-Net's 3 channels
    unlabeled_folder = root / "preprocessed" / DATASET / "nnUNetPlans_2d_unlabeled"
    assert sorted(f for f in os.listdir(unlabeled_folder) if f.endswith(".pkl")) == ["img1_0.pkl", "img1_1.pkl"]

    # 4 labeled cases cannot make nnU-Net's 5 folds: one message naming the options, no scikit-learn traceback
    refused = run_cli([bin_path("nnUNetv2_train"), "501", "2d", "0", "-tr", TRAINER, "-device", "cpu"], env,
                      check=False)
    assert refused.returncode == 1
    assert "fewer than the 5 folds" in refused.stderr and f"nnUNetv2_train {DATASET} 2d all -tr {TRAINER}" in \
        refused.stderr and "--folds 4" in refused.stderr
    assert "Traceback" not in refused.stderr

    trained = run_cli([bin_path("nnUNetv2_train"), "501", "2d", "all", "-tr", TRAINER, "-device", "cpu"], env)
    assert "2 unlabeled cases (0 from splits_final.json, 2 from the imagesUnlabeled folder)" in trained.stdout
    output = root / "results" / DATASET / f"{TRAINER}__nnUNetPlans__2d" / "fold_all"
    checkpoint = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 1, "the class attribute num_epochs = 1 was not honoured"

    predictions = root / "predictions"
    run_cli([bin_path("nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o", str(predictions), "-d", "501", "-c",
             "2d", "-f", "all", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"],
            env)
    capsys.readouterr()
    assert metrics.main([str(predictions), str(raw / "labelsTs"), "-o", str(root / "scores.json"), "-np", "1"]) == 0
    summary = json.loads((root / "scores.json").read_text())
    assert [case["reference_file"] for case in summary["metric_per_case"]] == \
        [str(raw / "labelsTs" / f"img2_{i}.png") for i in range(2)]
    assert set(summary["foreground_mean"]) == {"Dice", "IoU", "HD95_vox", "ASD_vox"}
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0
    assert "pixels only" in capsys.readouterr().out


def load_short_trainer(root):
    spec = importlib.util.spec_from_file_location("my_trainers", root / "ext" / "my_trainers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, TRAINER)


def test_class_attribute_schedule_overrides_nnunets_init(own_env, monkeypatch):
    from conftest import make_trainer

    root, env = own_env
    if not (root / "preprocessed" / DATASET).is_dir():
        pytest.skip("needs the dataset of the end-to-end test")
    trainer = make_trainer(env, monkeypatch, load_short_trainer(root), "2d", fold="all", dataset=DATASET)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (1, 2, 1)
    assert trainer.initial_lr == 1e-2, "settings the subclass does not set keep nnU-Net's values"


def test_unlabeled_rgb_images_with_wrong_channels_are_refused_and_the_last_good_output_kept(own_env, monkeypatch):
    root, env = own_env
    if not (root / "preprocessed" / DATASET / "nnUNetPlans_2d_unlabeled").is_dir():
        pytest.skip("needs the dataset of the end-to-end test")
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(var, env[var])
    images = root / "raw" / DATASET / "imagesUnlabeled"
    output = root / "preprocessed" / DATASET / "nnUNetPlans_2d_unlabeled"
    before = sorted(os.listdir(output))
    shutil.move(images, str(images) + "_kept")
    try:
        images.mkdir()
        rgb = io.imread(root / "input" / "unlabeled" / "img1_0.png")
        for channel in range(3):  # the reported mistake: one file per colour, as for multi-file channels
            io.imsave(images / f"scan_{channel:04d}.png", rgb[..., channel], check_contrast=False)
        with pytest.raises(SSLConfigError, match=r"'scan' .* has the files 0000, 0001, 0002; the labeled cases have "
                                                 r"1 file\(s\) per case"):
            preprocess_unlabeled("501", "2d", num_processes=1)
        for channel in (1, 2):
            os.remove(images / f"scan_{channel:04d}.png")
        with pytest.raises(SSLConfigError, match=r"scan_0000.png: nnU-Net reads 1 channel\(s\), the dataset has 3 "
                                                 r"\(R, G, B\)"):
            preprocess_unlabeled("501", "2d", num_processes=1)
        assert sorted(os.listdir(output)) == before, "a failed run must keep the previous output"
        assert not [f for f in os.listdir(output.parent) if f.startswith(".")], "no partial folder left behind"
    finally:
        shutil.rmtree(images)
        shutil.move(str(images) + "_kept", images)
