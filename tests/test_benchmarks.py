"""The benchmarks' pure helpers: the held-out test set, the ratios of the step benchmark, the aggregation of the
label-efficiency runs. (The benchmarks themselves are timed runs and are not executed here.)"""
import json
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


def _result(trainer, configuration, seconds, flops, peak, grad, no_grad=0, batch=2, round_index=0, steal=0.0,
            largest_pass=None):
    r = {"trainer": trainer, "configuration": configuration, "median_s": seconds, "peak_mb": peak,
         "batch_size": batch, "wait_share": 0.01, "round": round_index, "cpu_steal_share": steal,
         "minor_faults_per_step": 1000.0, "step_times_s": [seconds]}
    if round_index == 0:  # the first round counts the work
        r.update(flops=flops, encoder_samples_grad=grad, encoder_samples_no_grad=no_grad)
        if largest_pass is not None:
            r["largest_pass"] = largest_pass
    return r


def test_step_ratios_are_relative_to_nnunet_of_the_same_configuration():
    results = [_result("nnUNetTrainer", "2d", 1.0, 100, 1000, 2),
               _result("nnUNetTrainer", "3d_fullres", 4.0, 1000, 2000, 2),
               # Mean Teacher-like: student on 2B with grad, teacher on B without
               _result("nnUNetTrainerMT", "3d_fullres", 9.5, 2000, 3000, 4, 2),
               # the control: nnU-Net at twice the batch, 2.25x the time for 2x the work
               _result(step_benchmark.CONTROL, "3d_fullres", 9.0, 2000, 2500, 4, batch=4)]
    rows = {(r["trainer"], r["configuration"]): r for r in step_benchmark.ratios(results)}
    mt = rows["nnUNetTrainerMT", "3d_fullres"]
    assert mt["time_ratio"] == pytest.approx(2.375)
    assert mt["work_ratio"] == pytest.approx(2.0)
    assert mt["overhead"] == pytest.approx(0.1875)
    assert mt["count"] == pytest.approx((4 + 2 / 3) / 2)
    assert mt["memory_ratio"] == pytest.approx(1.5)
    assert mt["overhead_2b"] == pytest.approx((9.5 / 2000) / (9.0 / 2000) - 1)
    assert mt["verdict"] == "ok" and mt["verdict_reference"] == step_benchmark.CONTROL, "+19 % vs nnU-Net, +6 % vs 2B"
    assert rows["nnUNetTrainer", "2d"]["overhead"] == pytest.approx(0.0)
    assert rows["nnUNetTrainer", "2d"]["overhead_2b"] is None, "no control measured for 2d"
    assert rows["nnUNetTrainer", "2d"]["verdict_reference"] == "nnUNetTrainer"
    control = rows[step_benchmark.CONTROL, "3d_fullres"]
    assert control["overhead"] == pytest.approx(2.25 / 2 - 1)
    assert "| ok |" in step_benchmark.table([control]), "the control is a reference, not a trainer with a target"
    assert "| ok |" in step_benchmark.table([mt]) and "| ok |" in step_benchmark.table([rows["nnUNetTrainer", "2d"]])


def test_step_verdict_pairs_each_round_with_its_own_control_and_needs_every_round_to_agree():
    def run(ssl_seconds, control_seconds, base_seconds=(1.0, 1.0)):
        results = []
        for i, (ssl, control, base) in enumerate(zip(ssl_seconds, control_seconds, base_seconds)):
            results += [_result("nnUNetTrainer", "3d_fullres", base, 100, 1000, 1, batch=1, round_index=i),
                        _result(step_benchmark.CONTROL, "3d_fullres", control, 200, 1100, 2, batch=2,
                                round_index=i, steal=0.1 * i),
                        _result("SSL", "3d_fullres", ssl, 400, 1500 + i, 4, batch=1, round_index=i)]
        return {r["trainer"]: r for r in step_benchmark.ratios(results)}["SSL"]

    # the machine slows down by half in round 2: every trainer of that round with it; paired, still +5 %
    ssl = run([4.2, 6.3], [2.0, 3.0], [1.2, 1.8])
    assert ssl["rounds"] == 2 and ssl["overhead_2b_range"] == pytest.approx((0.05, 0.05, 0.05))
    assert ssl["median_s"] == pytest.approx(5.25) and ssl["verdict"] == "ok"
    assert ssl["time_ratio"] == pytest.approx(3.5) and ssl["peak_mb"] == 1501, "peak: the highest round"
    assert ssl["cpu_steal_share"] == pytest.approx(0.0), "steal: the highest round of this trainer"
    # a round that alone misses makes the verdict unclear; misses in every round make it a miss
    unclear = run([4.2, 4.8, 4.0], [2.0, 2.0, 2.0], [1.0, 1.0, 1.0])
    assert unclear["overhead_2b_range"] == pytest.approx((0.05, 0.0, 0.2)) and unclear["verdict"] == "unclear"
    assert "miss: overhead vs 2B (rounds disagree)" in step_benchmark.table([unclear])
    assert "+5 % (+0 .. +20)" in step_benchmark.table([unclear])
    miss = run([4.6, 4.8], [2.0, 2.0])
    assert miss["verdict"] == "miss" and "miss: overhead vs 2B |" in step_benchmark.table([miss])


def test_step_verdict_of_a_trainer_whose_passes_are_b_patches_is_against_nnunet_at_b():
    """BCP-like: the student runs B mixed patches with gradient, the teacher B without (work 4/3); nnU-Net at B is
    25 % dearer per FLOP than at 2B, so the 2B control would count the small batch against the trainer."""
    def rows(largest_pass):
        results = [_result("nnUNetTrainer", "2d", 1.0, 300, 1000, 8, batch=8, largest_pass=8),
                   _result(step_benchmark.CONTROL, "2d", 1.6, 600, 1100, 16, batch=16, largest_pass=16),
                   _result("BCP", "2d", 1.4, 400, 1050, 8, 8, batch=8, largest_pass=largest_pass)]
        return {r["trainer"]: r for r in step_benchmark.ratios(results)}

    bcp = rows(8)["BCP"]
    assert bcp["overhead"] == pytest.approx(1.4 / (4 / 3) - 1)  # +5 %
    assert bcp["overhead_2b"] == pytest.approx((1.4 / 400) / (1.6 / 600) - 1)  # +31 %
    assert bcp["verdict_reference"] == "nnUNetTrainer" and bcp["verdict"] == "ok"
    assert "| +31 % | B |" in step_benchmark.table([bcp])
    two_b = rows(16)["BCP"]
    assert two_b["verdict_reference"] == step_benchmark.CONTROL and two_b["verdict"] == "miss"
    assert "| +31 % | 2B |" in step_benchmark.table([two_b]) and "miss: overhead vs 2B |" in step_benchmark.table([two_b])
    assert rows(None)["BCP"]["verdict_reference"] == step_benchmark.CONTROL, "results without the count: the control"


def test_step_rounds_alternate_their_order():
    names = ["nnUNetTrainer", step_benchmark.CONTROL, "A", "B"]
    assert step_benchmark.round_order(names, 0) == names
    assert step_benchmark.round_order(names, 1) == names[::-1]
    assert step_benchmark.round_order(names, 2) == names


def _rec(trainer, fold, dice, val=None):
    return {"trainer": trainer, "fold": fold, "dice": dice, "val_dice": val, "dice_1": dice, "dice_2": dice / 2,
            "hd95": 2.0, "asd": None, "train_minutes": None, "commit": "abc"}


def test_label_efficiency_summary_mean_std_over_folds_and_paired_gain():
    labels = {1: "anterior", 2: "posterior"}
    # nnUNetTrainer: folds 0 and 1; X: fold 0 twice (two repeats, averaged per fold for the paired difference)
    rows = label_efficiency.summarise([_rec("nnUNetTrainer", 0, 0.6, 0.5), _rec("nnUNetTrainer", 1, 0.8, 0.7),
                                       _rec("nnUNetTrainerX", 0, 0.7), _rec("nnUNetTrainerX", 0, 0.9)], labels)
    assert [r["trainer"] for r in rows] == ["nnUNetTrainer", "nnUNetTrainerX"]
    assert rows[0]["dice"] == pytest.approx((0.7, 0.1))
    assert rows[0]["val_dice"] == pytest.approx((0.6, 0.1)) and rows[1]["val_dice"] is None
    assert rows[0]["dice_2"] == pytest.approx((0.35, 0.05))
    assert rows[0]["gain"] is None
    assert rows[1]["gain"] == pytest.approx((0.2, 0.0)), "fold 0 only: mean of the repeats (0.8) minus 0.6"
    assert rows[1]["gap_closed"] is None, "no ceiling measured"
    assert rows[1]["asd"] is None and rows[0]["folds"] == [0, 1] and rows[1]["folds"] == [0]
    assert rows[0]["runs"] == rows[1]["runs"] == 2
    budget = dict(label_efficiency.BUDGETS["smoke"], n_test=52, repeats=2,
                  labeled="2 labeled + 164 unlabeled training cases")
    lines = label_efficiency.table(rows, budget, labels).splitlines()
    assert "1 fold(s) x 2 repeat(s)" in lines[0]
    assert "| gap closed | val Dice | Dice anterior | Dice posterior |" in lines[2]
    assert lines[-1].startswith("| nnUNetTrainerX | 0 | 0.800 ± 0.100 | +0.200 ± 0.000 | n/a | n/a | 0.800 ± 0.100 | "
                                "0.400 ± 0.050 | 2.00")
    assert all(line.count("|") == lines[2].count("|") for line in lines[2:])


def test_label_efficiency_gap_closed_is_the_mean_gain_over_the_mean_ceiling_lead():
    records = [_rec("nnUNetTrainer", 0, 0.60), _rec("nnUNetTrainer", 1, 0.70),
               _rec("nnUNetTrainer@full", 0, 0.80), _rec("nnUNetTrainer@full", 1, 0.80),
               _rec("nnUNetTrainerX", 0, 0.70), _rec("nnUNetTrainerX", 1, 0.70),
               _rec("nnUNetTrainerY", 0, 0.65)]
    rows = {r["trainer"]: r for r in label_efficiency.summarise(records, {})}
    assert rows["nnUNetTrainerX"]["gain"] == pytest.approx((0.05, 0.05))
    assert rows["nnUNetTrainerX"]["gap_closed"] == pytest.approx(0.10 / 0.30)
    assert rows["nnUNetTrainerY"]["gap_closed"] == pytest.approx(0.05 / 0.20), "only the folds it has"
    assert rows["nnUNetTrainer@full"]["gap_closed"] is None and rows["nnUNetTrainer"]["gap_closed"] is None
    assert rows["nnUNetTrainer@full"]["gain"] == pytest.approx((0.15, 0.05))


def test_label_efficiency_publishes_dice_per_row_and_fold_with_provenance():
    budget = dict(label_efficiency.BUDGETS["hippo2d-l2"], labeled="2 labeled", n_test=52, repeats=1)
    second_seed = dict(_rec("nnUNetTrainer", 0, 0.7, 0.6), repeat=1, commit="def")
    records = [_rec("nnUNetTrainer", 0, 0.6, 0.5), _rec("nnUNetTrainer", 1, 0.8, 0.7), _rec("nnUNetTrainerX", 0, 0.7),
               second_seed]
    published = label_efficiency.published_results("hippo2d-l2", budget, records)
    assert published["budget"] == "hippo2d-l2" and published["folds"] == [0, 1, 2]
    assert published["dice"] == {"nnUNetTrainer": {"0": pytest.approx(0.65), "1": 0.8}, "nnUNetTrainerX": {"0": 0.7}}
    assert published["val_dice"] == {"nnUNetTrainer": {"0": pytest.approx(0.55), "1": 0.7}}
    assert published["repeats"] == {"nnUNetTrainer": {"0": {"dice": [0.6, 0.7], "val_dice": [0.5, 0.6]}}}
    provenance = published["provenance"]
    assert len(provenance["commit"]) == 40 and isinstance(provenance["dirty"], bool)
    assert provenance["versions"]["nnunetv2"] and provenance["seeds"]["split"] == 12345
    assert provenance["runs"] == {"nnUNetTrainer/fold_0": "abc", "nnUNetTrainer/fold_1": "abc",
                                  "nnUNetTrainerX/fold_0": "abc", "nnUNetTrainer/fold_0/rep_1": "def"}


def test_a_report_carries_published_runs_its_workdir_lacks_and_prefers_its_own():
    """A lost workdir (or one that holds other folds) must not drop the published runs from the next report: they
    come back with their Dice, repeats and commits; a run of the workdir replaces its published one."""
    budget = dict(label_efficiency.BUDGETS["hippo2d-l2"], labeled="2 labeled", n_test=52, repeats=1)
    earlier = [_rec("nnUNetTrainer", 0, 0.6, 0.5), dict(_rec("nnUNetTrainer", 0, 0.7, 0.6), repeat=1, commit="def"),
               _rec("nnUNetTrainerX", 0, 0.7, 0.65), _rec("nnUNetTrainerX", 1, 0.9, 0.8)]
    published = label_efficiency.published_results("hippo2d-l2", budget, earlier)
    workdir = [_rec("nnUNetTrainerX", 1, 0.75, 0.7)]
    rows = ["nnUNetTrainer", "nnUNetTrainerX", "nnUNetTrainerY"]
    carried = label_efficiency.carried_records(published, budget, rows, {("nnUNetTrainerX", 1)})
    source = published["provenance"]["commit"]
    assert [(r["trainer"], r["fold"], r["repeat"], r["dice"], r["val_dice"], r["commit"], r["carried"])
            for r in carried] == [("nnUNetTrainer", 0, 0, 0.6, 0.5, "abc", source),
                                  ("nnUNetTrainer", 0, 1, 0.7, 0.6, "def", source),
                                  ("nnUNetTrainerX", 0, 0, 0.7, 0.65, "abc", source)]
    summary = {r["trainer"]: r for r in label_efficiency.summarise(workdir + carried, {})}
    assert summary["nnUNetTrainerX"]["gain"] == pytest.approx((0.05, 0.0)), "fold 0: 0.7 - mean(0.6, 0.7)"
    assert summary["nnUNetTrainerX"]["dice"] == pytest.approx((0.725, 0.025)), "fold 1 is the workdir's 0.75"
    assert summary["nnUNetTrainerX"]["hd95"] == (2.0, 0.0), "carried runs have no HD95: the workdir's alone"
    again = label_efficiency.published_results("hippo2d-l2", budget, workdir + carried)
    assert again["repeats"] == published["repeats"] and again["dice"]["nnUNetTrainerX"] == {"0": 0.7, "1": 0.75}
    assert again["provenance"]["carried"] == {"nnUNetTrainer/fold_0": source, "nnUNetTrainer/fold_0/rep_1": source,
                                              "nnUNetTrainerX/fold_0": source}
    assert label_efficiency.carried_records(again, budget, rows, set())[0]["carried"] == source, \
        "carried twice, a run still names the report that first published it"
    note = label_efficiency.carried_note(carried)
    assert f"fold 0, published at {source[:7]}: nnUNetTrainer, nnUNetTrainerX" in note
    other = dict(budget, epochs=20)
    assert label_efficiency.carried_records(published, other, rows, set()) == [], "other settings: nothing carried"


def test_a_report_of_an_empty_workdir_republishes_the_published_runs(tmp_path, monkeypatch, capsys):
    """The whole report path: with no run in the workdir, --report-only summarises the published JSON's runs (its
    plot too) and names them as carried, instead of stopping with 'no finished run'."""
    budget = dict(label_efficiency.BUDGETS["smoke"], labeled="2 labeled", n_test=52, repeats=1)
    root = label_efficiency.dataset_root(budget, str(tmp_path))
    results_dir = os.path.join(root, "label_efficiency", "smoke")
    os.makedirs(results_dir)
    published = label_efficiency.published_prefix("smoke", None, results_dir) + ".json"
    earlier = label_efficiency.published_results("smoke", budget, [_rec("nnUNetTrainer", 0, 0.6, 0.5),
                                                                   _rec("nnUNetTrainerCPS", 0, 0.7, 0.65)])
    with open(published, "w") as f:
        json.dump(earlier, f)
    monkeypatch.setattr(label_efficiency, "prepare",
                        lambda budget, root: {"nnUNet_raw": str(tmp_path), "nnUNet_results": str(tmp_path)})
    monkeypatch.setattr(label_efficiency, "labeled_cases", lambda env, dataset, folds: "2 labeled")
    label_efficiency.main(["--workdir", str(tmp_path), "--budget", "smoke", "--report-only"])
    out = capsys.readouterr().out
    assert "| nnUNetTrainerCPS | 0 | 0.700 ± 0.000 | +0.100 ± 0.000 |" in out
    assert f"fold 0, published at {earlier['provenance']['commit'][:7]}: nnUNetTrainer, nnUNetTrainerCPS" in out
    with open(published) as f:
        again = json.load(f)
    assert again["dice"] == earlier["dice"] and again["provenance"]["runs"] == earlier["provenance"]["runs"]
    assert os.path.isfile(published.replace(".json", ".png"))


def test_only_a_report_of_the_default_rows_replaces_the_published_files(tmp_path):
    published = os.path.join(bench_common.REPO, "benchmarks", "label_efficiency_hippo2dl2")
    assert label_efficiency.published_prefix("hippo2d-l2", None, str(tmp_path)) == published
    subset = label_efficiency.published_prefix("hippo2d-l2", ["nnUNetTrainerCPS_cps1"], str(tmp_path))
    assert subset == str(tmp_path / "label_efficiency_hippo2dl2"), "a partial report stays in the workdir"
    assert label_efficiency.published_prefix("smoke", None, str(tmp_path)).startswith(str(tmp_path))


def test_result_written_over_a_tracked_file_of_a_clean_checkout_records_it_clean(tmp_path, monkeypatch):
    """A published result overwrites its tracked file; its provenance must be that of the checkout before the
    write (opening the file first truncates it, and the checkout would then read as dirty)."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    result = tmp_path / "result.json"
    result.write_text("{}")
    git("add", "result.json")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "result")
    monkeypatch.setattr(bench_common, "REPO", str(tmp_path))
    bench_common.write_json(str(result), {"provenance": bench_common.provenance()})
    assert json.loads(result.read_text())["provenance"]["dirty"] is False
    assert json.loads(result.read_text())["provenance"]["changed"] == []
    after = bench_common.provenance()
    assert after["dirty"] is True and after["changed"] == ["result.json"], "the file did change: tracked edits seen"


def test_label_efficiency_rows_map_to_trainer_variants():
    assert label_efficiency.variant_name("nnUNetTrainerDMD", "hippo2dl2") == "nnUNetTrainerDMD_bench_hippo2dl2"
    assert label_efficiency.variant_name("nnUNetTrainer@3x", "smoke") == "nnUNetTrainer_3x_bench_smoke"
    assert label_efficiency.split_tag({"num_labeled": 2}) == "l2"
    assert label_efficiency.split_tag({"fraction": 0.05}) == "f0.05"
    rows = label_efficiency.default_rows()
    assert rows[:3] == ["nnUNetTrainer", "nnUNetTrainer@3x", "nnUNetTrainer@full"]
    assert "nnUNetTrainerDMD" in rows and "nnUNetTrainerPseudoLabel" in rows
    assert "nnUNetTrainerPseudoLabel" not in bench_common.trainer_names(), "the step benchmark has no teacher"


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


def test_label_efficiency_variants_keep_their_names_and_settings(tmp_path):
    """Result folders are keyed by these names (a benchmark resumes from them)."""
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    label_efficiency.write_variants(str(tmp_path))
    ext = str(tmp_path / "ext")
    for name, epochs, full in (("nnUNetTrainerDMD_bench_hippo2dl2", 60, False),
                               ("nnUNetTrainer_3x_bench_smoke", 3, False), ("nnUNetTrainer_full_bench_smoke", 1, True),
                               ("nnUNetTrainerMeanTeacher_cons02_bench_gpu", 100, False)):
        variant = recursive_find_python_class(ext, name, None, base_folder=ext)
        assert variant is not None, name
        assert variant.num_epochs == epochs and variant.save_every_epochs == max(1, epochs // 6)
        assert ("LabelsOfUnlabeledCases" in [c.__name__ for c in variant.__mro__]) == full
    smoke = recursive_find_python_class(ext, "nnUNetTrainer_bench_smoke", None, base_folder=ext)
    assert (smoke.num_iterations_per_epoch, smoke.num_val_iterations_per_epoch, smoke.batch_size_override,
            smoke.tta) == (2, 1, 4, False)


def test_a_report_leaves_the_variants_module_that_running_trainings_import(tmp_path, monkeypatch):
    """--report-only (e.g. from another checkout while the protocol trains) must not rewrite the workdir's
    variants module: trainings and predictions started later would import the reporting checkout's code."""
    budget = label_efficiency.BUDGETS["smoke"]
    root = label_efficiency.dataset_root(budget, str(tmp_path))
    module = os.path.join(root, "ext", "benchmark_trainers.py")
    os.makedirs(os.path.dirname(module))
    with open(module, "w") as f:
        f.write("# written by the checkout that trains\n")
    monkeypatch.setattr(label_efficiency, "prepare",
                        lambda budget, root: {"nnUNet_raw": str(tmp_path), "nnUNet_results": str(tmp_path)})
    monkeypatch.setattr(label_efficiency, "labeled_cases", lambda env, dataset, folds: "2 labeled")
    with pytest.raises(SystemExit, match="no finished run"):
        label_efficiency.main(["--workdir", str(tmp_path), "--budget", "smoke", "--report-only"])
    with open(module) as f:
        assert f.read() == "# written by the checkout that trains\n"
