"""``nnunet_ssl_demo``: the whole semi-supervised workflow on a small synthetic dataset, through the real commands.

It makes Dataset990 (labeled cases, unlabeled scans in imagesUnlabeled, test cases with labels), then runs and
prints each command a user would run: nnUNetv2_plan_and_preprocess, nnunet_ssl_preprocess_unlabeled,
nnUNetv2_train with an SSL trainer, nnUNetv2_predict on the test images and nnunet_ssl_evaluate. Everything is
written below ``--work``; its nnUNet_raw / nnUNet_preprocessed / nnUNet_results are used for the run (your own
environment variables are left alone). The short schedule is a trainer variant in a folder of the demo's own on
``nnUNet_extTrainer``: the way nnU-Net users customise trainers.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time


def export_line(variables: dict) -> str:
    """A shell line that sets ``variables`` (quoted for bash), to repeat the demo's commands by hand."""
    return "export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in variables.items())


def run(command, env):
    print(f"\n$ {shlex.join(command)}", flush=True)
    subprocess.run(command, env=env, check=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="nnunet_ssl_demo", help="folder for all outputs (default ./nnunet_ssl_demo)")
    parser.add_argument("-tr", default="nnUNetTrainerMeanTeacher", help="SSL trainer (default nnUNetTrainerMeanTeacher)")
    parser.add_argument("-c", default="3d_fullres", choices=["2d", "3d_fullres"], help="configuration")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (default 2)")
    parser.add_argument("--iterations", type=int, default=25, help="iterations per epoch (default 25)")
    parser.add_argument("-device", default="cpu", help="cpu or cuda (default cpu)")
    args = parser.parse_args(argv)

    import nnunet_ssl.trainers as trainers
    from nnunet_ssl.cpu_environment import CPU_ENVIRONMENT
    from nnunet_ssl.synthetic import make_dataset
    from nnunet_ssl.variants import short_schedule, write_variants_module

    if args.tr not in trainers.__all__:
        sys.exit(f"error: unknown trainer '{args.tr}'; nnunet-ssl trainers: {', '.join(trainers.__all__)}")
    work = os.path.abspath(args.work)
    folders = {v: os.path.join(work, v) for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    ext = os.path.join(work, "trainers")
    write_variants_module(ext, "nnunet_ssl_demo_trainers", [short_schedule(
        getattr(trainers, args.tr), args.tr + "_demo", args.epochs, args.iterations, val_iterations=5)],
        "Short-schedule variant for nnunet_ssl_demo (written by it).")
    # the small-CPU settings (passive OpenMP waiting, glibc keeping large blocks) unless the user set their own
    cpu = {name: os.environ.get(name, value) for name, value in CPU_ENVIRONMENT.items()}
    variables = dict(**folders, nnUNet_extTrainer=ext, **cpu)
    env = dict(os.environ, **variables)
    print(f"The demo's nnU-Net folders and trainer folder; to repeat its commands by hand, first run\n"
          f"{export_line(variables)}", flush=True)
    bin_dir = os.path.dirname(sys.executable)
    tool = lambda name: os.path.join(bin_dir, name)  # noqa: E731
    start = time.time()

    raw = make_dataset(folders["nnUNet_raw"], dataset_id=990)
    print(f"Synthetic dataset written to {raw}: imagesTr/labelsTr (labeled), imagesUnlabeled, imagesTs/labelsTs")
    run([tool("nnUNetv2_plan_and_preprocess"), "-d", "990", "-c", args.c, "-np", "2", "--verify_dataset_integrity"],
        env)
    run([tool("nnunet_ssl_preprocess_unlabeled"), "-d", "990", "-c", args.c, "-np", "2"], env)
    trainer = args.tr + "_demo"
    run([tool("nnUNetv2_train"), "990", args.c, "0", "-tr", trainer, "-device", args.device], env)
    predictions = os.path.join(work, "predictions")
    run([tool("nnUNetv2_predict"), "-i", os.path.join(raw, "imagesTs"), "-o", predictions, "-d", "990", "-c", args.c,
         "-f", "0", "-tr", trainer, "-device", args.device], env)
    scores = os.path.join(work, "test_scores.json")
    run([tool("nnunet_ssl_evaluate"), predictions, os.path.join(raw, "labelsTs"), "-o", scores], env)

    with open(scores) as f:
        summary = json.load(f)
    print(f"\nDemo finished in {time.time() - start:.0f} s. Test-set Dice per class: "
          + ", ".join(f"{label}: {m['Dice']:.3f}" for label, m in summary["mean"].items())
          + f"; foreground mean {summary['foreground_mean']['Dice']:.3f}")
    print(f"Predictions: {predictions}\nScores: {scores}\nTraining log and progress.png: "
          f"{os.path.join(folders['nnUNet_results'], 'Dataset990_SSLDemo')}\n"
          f"To repeat the commands above by hand, first run\n{export_line(variables)}")


if __name__ == "__main__":
    main()
