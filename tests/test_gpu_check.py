"""The GPU check's dry run (benchmarks/gpu_check.py --dry-run), as CI runs it on a CPU: the synthetic dataset is
made, planned and preprocessed (labeled and unlabeled), the short-schedule trainers are written where nnU-Net finds
them, and the table gets one row per trainer; the CUDA steps are skipped with their commands in the log."""
import json
import os
import sys

from conftest import run_cli
import nnunet_ssl.trainers as trainers

GPU_CHECK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu_check.py")


def test_dry_run_prepares_everything_but_the_cuda_steps(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    run_cli([sys.executable, GPU_CHECK, "--dry-run", "--configuration", "2d", "--out", str(out), "--work", str(work)],
            env)
    # self-training last, after the pseudo-labels of the nnUNetTrainer trained before it
    names = ["nnUNetTrainer"] + [name for name in trainers.__all__ if name != "nnUNetTrainerPseudoLabel"] + [
        "nnUNetTrainerPseudoLabel"]

    table = (out / "gpu_check.md").read_text()
    assert [line.split(" | ")[0][2:] for line in table.splitlines() if line.startswith("| nnUNetTrainer")] == names
    assert all(f"| {name} | skipped: no CUDA |" in table for name in names)
    log = (out / "gpu_check.log").read_text()
    for name in names:
        assert f"nnUNetv2_train 993 2d 0 -tr {name}_gpucheck -device cuda" in log
        assert f"-tr {name}_gpucheck -device cuda -npp 1" in log
    pseudolabel = "nnunet_ssl_pseudolabel -d 993 -c 2d -f 0 -tr nnUNetTrainer_gpucheck -device cuda"
    assert log.index(pseudolabel) < log.index("-tr nnUNetTrainerPseudoLabel_gpucheck -device cuda")
    # the step benchmark measures nnUNetTrainer and each method once (not variants such as nnUNetTrainerDMD_paper;
    # not self-training, whose step is nnUNetTrainer's)
    methods = [name for name in names[1:-1] if not name.endswith("_paper")]
    assert f"step benchmark of {['nnUNetTrainer'] + methods}" in log and "dataset='Dataset993_GPUCheck'" in log

    preprocessed = work / "preprocessed" / "Dataset993_GPUCheck"
    with open(preprocessed / "nnUNetPlans.json") as f:
        plans = json.load(f)["configurations"]["2d"]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["plans"] == {"batch_size": plans["batch_size"], "patch_size": plans["patch_size"]}
    assert {"commit", "dirty", "versions", "seeds", "command", "machine"} <= set(result["provenance"])
    assert len([f for f in os.listdir(preprocessed / "nnUNetPlans_2d") if f.endswith(".pkl")]) == 6
    assert len([f for f in os.listdir(preprocessed / "nnUNetPlans_2d_unlabeled") if f.endswith(".pkl")]) == 4

    # nnU-Net's search of nnUNet_extTrainer folders finds every short-schedule variant in the run's folder
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    for name in names:
        ext = str(work / "ext")
        variant = recursive_find_python_class(ext, name + "_gpucheck", None, base_folder=ext,
                                              cleanup_imports_from_base_folder=True)
        assert variant is not None and name in [c.__name__ for c in variant.__mro__[1:]]
