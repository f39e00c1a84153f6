"""``nnunet_ssl_check``: does ``nnUNetv2_train -tr <nnunet-ssl trainer>`` work in this environment, and if not, why.

Checks, in the order a failure would bite: nnU-Net's folder variables, torch and torchvision agreeing (nnU-Net's
trainer search imports timm, which imports torchvision), the interpreter-start hook having put nnunet-ssl's
trainer index on ``nnUNet_extTrainer``, and finally nnU-Net's own search finding every trainer.
``--print-ext-path`` prints the folder for setting ``nnUNet_extTrainer`` by hand.
"""
import argparse
import contextlib
import io
import os
import sys
import warnings
from importlib.util import find_spec

ENV_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def ext_trainer_dir() -> str:
    """The folder nnU-Net must search (via ``nnUNet_extTrainer``) to find nnunet-ssl's trainers."""
    return os.path.join(list(find_spec("nnunet_ssl").submodule_search_locations)[0], "_ext")


def check_env_vars():
    missing = [v for v in ENV_VARS if not os.environ.get(v)]
    if missing:
        return False, (f"not set: {', '.join(missing)}. nnU-Net needs them to find datasets and results: "
                       f"export them as in nnU-Net's documentation/set_environment_variables.md")
    return True, ", ".join(f"{v}={os.environ[v]}" for v in ENV_VARS)


def check_torchvision():
    try:
        with warnings.catch_warnings():  # timm's deprecation warnings are not this check's business
            warnings.simplefilter("ignore")
            import torch
            import torchvision
            import timm  # noqa: F401  (what nnU-Net's trainer search imports first)
    except Exception as e:
        return False, (f"{type(e).__name__}: {e}. torch and torchvision must come from the same index; reinstall "
                       f"both together (e.g. pip install --force-reinstall torch torchvision)")
    return True, f"torch {torch.__version__}, torchvision {torchvision.__version__}"


def check_hook():
    entries = [e for e in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if e]
    if ext_trainer_dir() in entries:
        return True, f"nnUNet_extTrainer contains {ext_trainer_dir()}"
    if os.environ.get("NNUNET_SSL_NO_AUTOREGISTER"):
        reason = "NNUNET_SSL_NO_AUTOREGISTER is set"
    elif find_spec("nnunet_ssl_autoregister") is None:
        reason = "the start-up hook nnunet_ssl_autoregister is not installed in this environment"
    else:
        reason = "the start-up hook did not run (python -S? a different interpreter?)"
    return False, f"{reason}. Set it by hand: export nnUNet_extTrainer=\"$(nnunet_ssl_check --print-ext-path)\""


def check_discovery():
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    import nnunet_ssl.trainers as trainers

    found = []
    for name in trainers.__all__:
        try:
            cls = _quietly(recursive_find_trainer_class_by_name, name)
        except Exception as e:
            return False, f"nnU-Net could not find {name}: {type(e).__name__}: {e}"
        if cls is not getattr(trainers, name):
            return False, f"nnU-Net found a different class named {name} ({cls.__module__}); rename yours"
        found.append(name)
    return True, "nnU-Net finds " + ", ".join(found)


def _quietly(function, *args):
    """``function(*args)`` without its printed output and warnings (nnU-Net's trainer search prints six lines
    per trainer)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print-ext-path", action="store_true", help="print the trainer index folder and exit")
    args = parser.parse_args(argv)
    if args.print_ext_path:
        print(ext_trainer_dir())
        return
    checks = [("nnU-Net environment variables", check_env_vars), ("torch / torchvision", check_torchvision),
              ("auto-registration hook", check_hook)]
    results = [(title, *check()) for title, check in checks]
    if all(ok for _, ok, _ in results[1:]):
        results.append(("trainer discovery", *check_discovery()))
    for title, ok, detail in results:
        print(f"[{'ok' if ok else 'FAIL'}] {title}: {detail}")
    sys.exit(0 if all(ok for _, ok, _ in results) else 1)


if __name__ == "__main__":
    main()
