"""The benchmarks' pure helpers: the held-out test set, the ratios of the step benchmark, the aggregation of the
label-efficiency runs. (The benchmarks themselves are timed runs and are not executed here.)"""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import bench_common  # noqa: E402
import label_efficiency  # noqa: E402
import step_benchmark  # noqa: E402


def test_test_cases_are_a_fixed_seeded_fifth():
    cases = [f"hippocampus_{i:03d}" for i in range(260)]
    test = bench_common.test_case_ids(cases)
    assert len(test) == 52 and len(set(test)) == 52 and set(test) <= set(cases)
    assert test == bench_common.test_case_ids(list(reversed(cases)))  # order of listing does not matter
    assert test != bench_common.test_case_ids(cases, seed=1)


def _result(trainer, configuration, seconds, flops, peak, grad, no_grad=0, batch=2):
    return {"trainer": trainer, "configuration": configuration, "median_s": seconds, "flops": flops,
            "peak_mb": peak, "encoder_samples_grad": grad, "encoder_samples_no_grad": no_grad, "batch_size": batch,
            "wait_share": 0.01}


def test_step_ratios_are_relative_to_nnunet_of_the_same_configuration():
    results = [_result("nnUNetTrainer", "2d", 1.0, 100, 1000, 2),
               _result("nnUNetTrainer", "3d_fullres", 4.0, 1000, 2000, 2),
               # Mean Teacher-like: student on 2B with grad, teacher on B without
               _result("nnUNetTrainerMT", "3d_fullres", 10.0, 2000, 3000, 4, 2),
               # the control: nnU-Net at twice the batch, 2.25x the time for 2x the work
               _result(step_benchmark.CONTROL, "3d_fullres", 9.0, 2000, 2500, 4, batch=4)]
    rows = {(r["trainer"], r["configuration"]): r for r in step_benchmark.ratios(results)}
    mt = rows["nnUNetTrainerMT", "3d_fullres"]
    assert mt["time_ratio"] == pytest.approx(2.5)
    assert mt["work_ratio"] == pytest.approx(2.0)
    assert mt["overhead"] == pytest.approx(0.25)
    assert mt["count"] == pytest.approx((4 + 2 / 3) / 2)
    assert mt["memory_ratio"] == pytest.approx(1.5)
    assert mt["overhead_2b"] == pytest.approx((10.0 / 2000) / (9.0 / 2000) - 1)
    assert rows["nnUNetTrainer", "2d"]["overhead"] == pytest.approx(0.0)
    assert rows["nnUNetTrainer", "2d"]["overhead_2b"] is None, "no control measured for 2d"
    control = rows[step_benchmark.CONTROL, "3d_fullres"]
    assert control["overhead"] == pytest.approx(2.25 / 2 - 1)
    assert "| ok |" in step_benchmark.table([control]), "the control is a reference, not a trainer with a target"
    assert "miss: overhead" in step_benchmark.table([mt]) and "| ok |" in step_benchmark.table([rows["nnUNetTrainer", "2d"]])


def test_label_efficiency_summary_mean_std_over_folds_and_gain():
    def rec(trainer, fold, dice):
        return {"trainer": trainer, "fold": fold, "dice": dice, "dice_1": dice, "dice_2": dice / 2, "hd95": 2.0,
                "asd": None, "train_minutes": None}
    labels = {1: "anterior", 2: "posterior"}
    # nnUNetTrainer: folds 0 and 1; X: fold 0 twice (two repeats)
    rows = label_efficiency.summarise([rec("nnUNetTrainer", 0, 0.6), rec("nnUNetTrainer", 1, 0.8),
                                       rec("nnUNetTrainerX", 0, 0.7), rec("nnUNetTrainerX", 0, 0.9)], labels)
    assert [r["trainer"] for r in rows] == ["nnUNetTrainer", "nnUNetTrainerX"]
    assert rows[0]["dice"] == pytest.approx((0.7, 0.1))
    assert rows[0]["dice_2"] == pytest.approx((0.35, 0.05))
    assert rows[1]["gain"] == pytest.approx(0.1)
    assert rows[1]["asd"] is None and rows[0]["folds"] == [0, 1] and rows[1]["folds"] == [0]
    assert rows[0]["runs"] == rows[1]["runs"] == 2
    budget = dict(label_efficiency.BUDGETS["smoke"], n_test=52, repeats=2,
                  labeled="8 labeled + 158 unlabeled training cases")
    lines = label_efficiency.table(rows, budget, labels).splitlines()
    assert "1 fold(s) x 2 repeat(s)" in lines[0]
    assert "Dice anterior | Dice posterior |" in lines[2]
    assert lines[-1].startswith("| nnUNetTrainerX | 0.800 ± 0.100 | +0.100 | 0.800 ± 0.100 | 0.400 ± 0.050 | 2.00")
    assert all(line.count("|") == lines[2].count("|") for line in lines[2:])


def test_label_efficiency_reads_labeled_counts_and_rejects_folds_missing_from_the_split(tmp_path):
    dataset = label_efficiency.DATASETS["acdc"]
    folder = tmp_path / dataset["name"]
    folder.mkdir()
    (folder / "splits_final.json").write_text('[{"train": ["a", "b"], "val": ["c"], "unlabeled": ["d", "e", "f"]}]')
    env = {"nnUNet_preprocessed": str(tmp_path)}
    assert label_efficiency.labeled_cases(env, dataset, [0]) == "2 labeled + 3 unlabeled training cases"
    with pytest.raises(SystemExit, match="fold 1 is not in .*splits_final.json"):
        label_efficiency.labeled_cases(env, dataset, [0, 1])


def test_every_budget_names_a_known_dataset():
    assert {b["dataset"] for b in label_efficiency.BUDGETS.values()} <= set(label_efficiency.DATASETS)


def test_cpu_steal_share_is_the_steal_counter_over_all_cpu_time():
    # /proc/stat order: user nice system idle iowait irq softirq steal
    before = [100, 0, 10, 50, 0, 0, 0, 40]
    after = [160, 0, 20, 70, 0, 0, 0, 70]  # +60 user, +10 system, +20 idle, +30 steal = 120
    assert step_benchmark.steal_share(before, after) == pytest.approx(30 / 120)
    assert step_benchmark.steal_share(None, after) is None


def test_a_missing_data_folder_stops_with_its_path_and_the_variable_to_set(tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(SystemExit, match=f"{missing} not found.*set NNUNET_SSL_ACDC"):
        bench_common.require_folder(str(missing), "NNUNET_SSL_ACDC", "ACDC")
    bench_common.require_folder(str(tmp_path), "NNUNET_SSL_ACDC", "ACDC")  # present: no exit
