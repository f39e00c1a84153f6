"""The unlabeled stream: where cases come from, what a composite batch holds, and the errors."""
import glob
import json
import os

import pytest

from conftest import clone_dataset, make_trainer
from nnunet_ssl.data.strong_views import STRONG_VIEW_KEY
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.trainers import nnUNetTrainerCMEMS, nnUNetTrainerMeanTeacher, nnUNetTrainerUniMatch
from nnunet_ssl.trainers.unimatch import SECOND_STRONG_VIEW_KEY


class WideUnlabeledBatch(nnUNetTrainerMeanTeacher):
    unlabeled_batch_size = 3


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_composite_batch_has_an_unlabeled_part_without_labels(ssl_env, monkeypatch, configuration):
    trainer = make_trainer(ssl_env, monkeypatch, WideUnlabeledBatch, configuration)
    trainer.initialize()
    loader_train, _ = trainer.get_dataloaders()
    batch = next(loader_train)
    patch = tuple(trainer.configuration_manager.patch_size)
    assert tuple(batch["data"].shape) == (trainer.batch_size, 1, *patch)
    unlabeled = batch["unlabeled"]
    assert set(unlabeled) == {"data", "keys"}, "the unlabeled batch must carry no target or segmentation"
    assert tuple(unlabeled["data"].shape) == (3, 1, *patch)
    assert set(unlabeled["keys"]) <= {f"unl_{i:03d}" for i in range(4)}
    assert trainer.unlabeled_cases and all(k.startswith("unl_") for k in trainer.unlabeled_cases)


def test_unlabeled_batch_defaults_to_the_labeled_batch_size(ssl_env, monkeypatch):
    trainer = make_trainer(ssl_env, monkeypatch, nnUNetTrainerMeanTeacher, "2d")
    trainer.initialize()
    assert trainer.batch_size_unlabeled == trainer.batch_size == trainer.configuration_manager.batch_size


@pytest.fixture(scope="module")
def split_dataset(ssl_env):
    """Dataset991: the labeled cases only (no imagesUnlabeled folder), for split-based tests."""
    return clone_dataset(ssl_env, 991, "Splits")


def write_fold0(env, dataset, fold):
    """Write the split as a user editing the file by hand would (no validation)."""
    with open(os.path.join(env["nnUNet_preprocessed"], dataset, "splits_final.json"), "w") as f:
        json.dump([fold], f)


def test_no_unlabeled_source_fails_with_instructions(ssl_env, monkeypatch, split_dataset):
    """Raw scans waiting in imagesUnlabeled/ get the command that preprocesses them; else both ways are named."""
    write_fold0(ssl_env, split_dataset, {"train": ["case_000", "case_001"], "val": ["case_002"]})
    trainer = make_trainer(ssl_env, monkeypatch, nnUNetTrainerMeanTeacher, dataset=split_dataset)
    trainer.initialize()
    with pytest.raises(SSLConfigError, match=r"(?s)does not fall back to supervised.*4 scan file\(s\) wait in "
                                             r".*imagesUnlabeled.*nnunet_ssl_preprocess_unlabeled -d "
                                             r"Dataset991_Splits -c 3d_fullres$"):
        trainer.get_dataloaders()
    raw_unlabeled = os.path.join(ssl_env["nnUNet_raw"], split_dataset, "imagesUnlabeled")
    os.rename(raw_unlabeled, raw_unlabeled + "_away")
    try:
        with pytest.raises(SSLConfigError, match="(?s)does not fall back to supervised.*imagesUnlabeled.*"
                                                 "nnunet_ssl_split"):
            trainer.get_dataloaders()
    finally:
        os.rename(raw_unlabeled + "_away", raw_unlabeled)


def test_split_unlabeled_ids_overlapping_train_are_rejected(ssl_env, monkeypatch, split_dataset):
    write_fold0(ssl_env, split_dataset, {"train": ["case_000", "case_001"], "val": ["case_002"],
                                         "unlabeled": ["case_001", "case_003"]})
    trainer = make_trainer(ssl_env, monkeypatch, nnUNetTrainerMeanTeacher, dataset=split_dataset)
    trainer.initialize()
    with pytest.raises(SSLConfigError, match=r"also in 'train' \(case_001\)"):
        trainer.get_dataloaders()


def test_a_fold_missing_from_an_ssl_split_is_rejected_not_split_at_random(ssl_env, monkeypatch, split_dataset):
    write_fold0(ssl_env, split_dataset, {"train": ["case_000", "case_001"], "val": ["case_002"],
                                         "unlabeled": ["case_003"]})
    trainer = make_trainer(ssl_env, monkeypatch, nnUNetTrainerMeanTeacher, fold=1, dataset=split_dataset)
    trainer.initialize()
    with pytest.raises(SSLConfigError, match=r"fold 1 is not in .*splits_final.json \(1 fold\(s\)"):
        trainer.get_dataloaders()


def test_fold_all_on_a_split_with_unlabeled_lists_is_rejected(ssl_env, monkeypatch, split_dataset):
    """nnU-Net's fold 'all' trains on every case, so it would read the labels of the split's unlabeled cases."""
    write_fold0(ssl_env, split_dataset, {"train": ["case_000", "case_001"], "val": ["case_002"],
                                         "unlabeled": ["case_003"]})
    trainer = make_trainer(ssl_env, monkeypatch, nnUNetTrainerMeanTeacher, "2d", fold="all", dataset=split_dataset)
    trainer.initialize()
    with pytest.raises(SSLConfigError, match=r"fold 'all' .*every case.*splits_final.json marks 1 case\(s\) "
                                             r"unlabeled.*train one of its folds"):
        trainer.get_dataloaders()


def test_fold_all_trains_with_the_imagesunlabeled_scans(ssl_env, monkeypatch):
    trainer = make_trainer(ssl_env, monkeypatch, nnUNetTrainerMeanTeacher, "2d", fold="all")
    trainer.initialize()
    loader_train, _ = trainer.get_dataloaders()
    batch = next(loader_train)
    assert set(batch["unlabeled"]["keys"]) <= {f"unl_{i:03d}" for i in range(4)}
    assert len(trainer.unlabeled_cases) == 4


def test_split_unlabeled_cases_train_with_their_label_files_deleted(ssl_env, monkeypatch, split_dataset):
    unlabeled = ["case_003", "case_004", "case_005"]
    write_fold0(ssl_env, split_dataset, {"train": ["case_000", "case_001"], "val": ["case_002"],
                                         "unlabeled": unlabeled})
    for case in unlabeled:
        for seg in glob.glob(os.path.join(ssl_env["nnUNet_preprocessed"], split_dataset, "*", f"{case}_seg.b2nd")):
            os.remove(seg)
    trainer = make_trainer(ssl_env, monkeypatch, nnUNetTrainerMeanTeacher, "2d", dataset=split_dataset)
    trainer.initialize()
    loader_train, _ = trainer.get_dataloaders()
    for _ in range(3):
        batch = next(loader_train)
        assert set(batch["unlabeled"]["keys"]) <= set(unlabeled)
        assert set(batch["keys"]) <= {"case_000", "case_001"}
    assert sorted(trainer.unlabeled_cases) == unlabeled


def test_plain_nnunet_on_an_ssl_split_trains_on_the_labeled_cases_only(ssl_env, monkeypatch, split_dataset):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    write_fold0(ssl_env, split_dataset, {"train": ["case_000", "case_001"], "val": ["case_002"],
                                         "unlabeled": ["case_003", "case_004"]})
    trainer = make_trainer(ssl_env, monkeypatch, nnUNetTrainer, dataset=split_dataset)
    assert trainer.do_split() == (["case_000", "case_001"], ["case_002"])


def test_unlabeled_scan_with_a_labeled_id_is_rejected(ssl_env, monkeypatch, tmp_path):
    dataset = clone_dataset(ssl_env, 992, "Clash")
    folder = os.path.join(ssl_env["nnUNet_preprocessed"], dataset, "nnUNetPlans_2d")
    os.makedirs(folder + "_unlabeled")
    os.symlink(os.path.join(folder, "case_000.b2nd"), os.path.join(folder + "_unlabeled", "case_000.b2nd"))
    trainer = make_trainer(ssl_env, monkeypatch, nnUNetTrainerMeanTeacher, "2d", dataset=dataset)
    trainer.initialize()
    with pytest.raises(SSLConfigError, match="'case_000'.*has the id of a labeled"):
        trainer.get_dataloaders()


def test_cascade_configuration_is_rejected_at_start(ssl_env, monkeypatch):
    def add_cascade(plans):
        plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres",
                                                         "previous_stage": "3d_fullres"}
    with pytest.raises(SSLConfigError, match="'3d_cascade_fullres' is a cascade stage"):
        make_trainer(ssl_env, monkeypatch, nnUNetTrainerMeanTeacher, "3d_cascade_fullres", plans_edit=add_cascade)


def test_benchmark_split_trains_through_the_cli_from_pretrained_weights(ssl_env, tmp_path):
    """nnunet_ssl_split -> delete the unlabeled cases' label files -> nnUNetv2_train -pretrained_weights with a
    supervised nnU-Net checkpoint: the SSL trainer trains on the split's unlabeled cases from those weights."""
    import torch

    from conftest import bin_path, run_cli
    from e2e import load_checkpoint, train
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset = clone_dataset(ssl_env, 995, "Benchmark")
    run_cli([bin_path("nnunet_ssl_split"), "-d", "995", "--num-labeled", "2", "--folds", "2"], ssl_env)
    preprocessed = os.path.join(ssl_env["nnUNet_preprocessed"], dataset)
    with open(os.path.join(preprocessed, "splits_final.json")) as f:
        unlabeled = json.load(f)[0]["unlabeled"]
    for case in unlabeled:
        os.remove(os.path.join(preprocessed, "nnUNetPlans_2d", f"{case}_seg.b2nd"))

    plans = PlansManager(os.path.join(preprocessed, "nnUNetPlans.json"))
    supervised = nnUNetTrainer.build_network_architecture(plans, plans.get_configuration("2d"), 1, 3, True)
    torch.save({"network_weights": supervised.state_dict()}, tmp_path / "supervised.pth")

    result = train(ssl_env, "nnUNetTrainerMeanTeacher_tiny", "2d", 1, "-pretrained_weights",
                   str(tmp_path / "supervised.pth"), dataset_id=995)
    assert "Loading pretrained weights" in result.stdout
    assert f"{len(unlabeled)} unlabeled cases ({len(unlabeled)} from splits_final.json" in result.stdout
    assert "2 training and" in result.stdout
    assert "student" in {k.split(".")[0] for k in load_checkpoint(ssl_env, "nnUNetTrainerMeanTeacher_tiny", "2d",
                                                                  dataset_id=995)["network_weights"]}


@pytest.mark.parametrize("global_batch, world_size", [(2, 2), (5, 2), (7, 3), (4, 4)])
def test_unlabeled_batch_is_split_across_gpus_like_nnunets_labeled_batch(global_batch, world_size):
    """nnU-Net's _set_batch_size_and_oversample gives rank i one extra sample while i < global % world."""
    from nnunet_ssl.data.loaders import split_batch_across_ranks

    shares = [split_batch_across_ranks(global_batch, world_size, rank) for rank in range(world_size)]
    base = [global_batch // world_size] * world_size
    nnunet = [b + 1 if b * world_size + i < global_batch else b for i, b in enumerate(base)]
    assert shares == nnunet and sum(shares) == global_batch


@pytest.fixture
def masked_norm_dataset(ssl_env):
    """Dataset989 with one unlabeled 2d case normalised as with use_mask_for_norm: 0 outside its nonzero mask (the
    left half and the padding), values near 5 inside."""
    import blosc2
    import numpy as np
    import shutil

    dataset = clone_dataset(ssl_env, 989, "MaskNorm")
    folder = os.path.join(ssl_env["nnUNet_preprocessed"], dataset)
    with open(os.path.join(folder, "nnUNetPlans.json")) as f:
        patch = json.load(f)["configurations"]["2d"]["patch_size"]
    image = np.zeros((1, 2, *patch), np.float32)
    image[..., patch[1] // 2:] = np.random.default_rng(0).normal(5, 0.1, (1, 2, patch[0], patch[1] - patch[1] // 2))
    os.makedirs(os.path.join(folder, "nnUNetPlans_2d_unlabeled"))
    blosc2.asarray(image, urlpath=os.path.join(folder, "nnUNetPlans_2d_unlabeled", "unl_mask.b2nd"), mode="w")
    yield dataset
    shutil.rmtree(folder)
    shutil.rmtree(os.path.join(ssl_env["nnUNet_raw"], dataset))


@pytest.mark.parametrize("trainer_class", [nnUNetTrainerMeanTeacher, nnUNetTrainerCMEMS, nnUNetTrainerUniMatch])
def test_unlabeled_patches_are_masked_after_augmentation_like_labeled_ones(ssl_env, monkeypatch, masked_norm_dataset,
                                                                           trainer_class):
    """With use_mask_for_norm nnU-Net sets the labeled patches back to 0 outside the nonzero mask after intensity
    augmentation (noise, contrast, ...); the unlabeled patches must get the same, without a label file."""
    import numpy as np
    import torch

    def mask_for_norm(plans):
        plans["configurations"]["2d"]["use_mask_for_norm"] = [True]

    trainer = make_trainer(ssl_env, monkeypatch, trainer_class, "2d", dataset=masked_norm_dataset,
                           plans_edit=mask_for_norm)
    trainer.initialize()
    loader_train, _ = trainer.get_dataloaders()
    np.random.seed(0)
    torch.manual_seed(0)
    batches = [next(loader_train)["unlabeled"] for _ in range(8)]
    assert "segmentation" not in batches[0], "the mask is not handed on as a label"
    patches = torch.cat([batch["data"] for batch in batches])
    assert len(patches) >= 24
    exact_zeros = (patches == 0).flatten(1).float().mean(1)
    near_zeros = ((patches != 0) & (patches.abs() < 0.25)).flatten(1).float().mean(1)
    assert torch.all(exact_zeros > 0.1), "the outside of the mask is 0 in every patch"
    assert torch.all(near_zeros < 0.01), "no noise or contrast shift left outside the mask"
    # the strongly perturbed views (CMEMS, UniMatch) too: 0 wherever their weak view is outside the mask
    for key in (STRONG_VIEW_KEY, SECOND_STRONG_VIEW_KEY):
        if key in batches[0]:
            strong = torch.cat([batch[key] for batch in batches])
            assert torch.all(strong[patches == 0] == 0), f"{key}: perturbed values outside the mask"
            assert (strong[patches != 0] != 0).float().mean() > 0.99


def test_strong_intensity_keeps_the_outside_of_the_nonzero_mask_at_zero():
    """Self-training's student noise (and the strong views) perturb intensities after nnU-Net's masking: the masked
    channels must stay 0 outside the mask, the other channels and the inside are perturbed."""
    import torch
    from nnunet_ssl.data.strong_views import MaskedIntensity, StrongIntensity, strong_intensity_transforms

    torch.manual_seed(0)
    image = torch.zeros(2, 8, 8)
    image[:, :, 4:] = torch.randn(2, 8, 4) + 5
    noise = strong_intensity_transforms(StrongIntensity(p_brightness=1, p_contrast=1, p_blur=1, p_noise=1))
    masked = MaskedIntensity(noise, mask_channels=[0])(image=image.clone())["image"]
    assert torch.all(masked[0, :, :4] == 0), "masked channel, outside: 0"
    assert torch.all(masked[0, :, 4:] != image[0, :, 4:]), "masked channel, inside: perturbed"
    assert torch.any(masked[1, :, :4] != 0), "a channel not normalised within the mask is perturbed everywhere"
    unmasked = MaskedIntensity(noise)(image=image.clone())["image"]
    assert torch.any(unmasked[0, :, :4] != 0)
