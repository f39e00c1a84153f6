"""What a newcomer meets first: the README's install lines (the ones CI runs, and a wheel built from a clone), the
demo's repeatable commands, and configuration errors printed as one message."""
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

import nnunet_ssl.synthetic
from nnunet_ssl import demo, errors
from nnunet_ssl.errors import SSLConfigError, install_excepthook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_install_lines():
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("## Install", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip().startswith("pip ")]


def test_readme_installs_from_a_clone_as_ci_does():
    lines = readme_install_lines()
    assert "pip install -e ." in lines and not any("pip install nnunet-ssl" in line for line in lines)
    with open(os.path.join(ROOT, "scripts", "venv.sh")) as f:
        ci_install = [line for line in f if "pip install" in line and " -e " in line]
    # CI (.ci/run -> scripts/test.sh -> scripts/venv.sh) runs the README's line, quietly and with the test extras
    assert [line.split("pip ")[1].replace("--quiet ", "").replace("'.[test]'", ".").strip() for line in ci_install] \
        == ["install -e ."]


def test_readme_wheel_command_builds_a_wheel_with_the_trainers_and_the_start_up_hook(tmp_path):
    build = [line for line in readme_install_lines() if line.startswith("pip wheel")]
    assert len(build) == 1
    clone = tmp_path / "clone"
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(".git", ".venv", "demo_work", "work", "dist",
                                                               "build", "__pycache__", "*.egg-info"))
    result = subprocess.run([sys.executable, "-m", *build[0].split()], cwd=clone, capture_output=True, text=True)
    if result.returncode != 0 and "hatchling" in result.stderr and "No matching distribution" in result.stderr:
        pytest.skip("the build backend (hatchling) cannot be downloaded here")
    assert result.returncode == 0, result.stderr[-3000:]
    wheels = list((clone / "dist").glob("nnunet_ssl-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    for required in ("nnunet_ssl/trainers/base.py", "nnunet_ssl/_ext/nnunet_ssl_trainer_index.py",
                     "nnunet_ssl_autoregister.py", "nnunet_ssl_autoregister.pth"):
        assert required in names


class StopAfterSetUp(Exception):
    pass


def test_demo_prints_the_exports_that_repeat_its_commands(tmp_path, monkeypatch, capsys):
    def stop(*args, **kwargs):
        raise StopAfterSetUp

    monkeypatch.setattr(nnunet_ssl.synthetic, "make_dataset", stop)
    work = tmp_path / "my demo"  # a space, which the line must quote
    with pytest.raises(StopAfterSetUp):
        demo.main(["--work", str(work)])
    export = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("export "))
    names = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")
    shell = subprocess.run(["bash", "-c", export + "; " + "; ".join(f'echo "${n}"' for n in names)],
                           capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert shell.stdout.splitlines() == [str(work / n) for n in names[:3]] + [str(work / "trainers")]
    with open(work / "trainers" / "nnunet_ssl_demo_trainers.py") as f:
        assert "    num_epochs = 2\n" in f.read(), "the demo's variant shows the class-attribute pattern"


def test_uncaught_config_error_prints_one_message_and_others_keep_their_traceback(monkeypatch, capsys):
    previous = []
    monkeypatch.setattr(errors._print_config_error, "previous", None, raising=False)
    monkeypatch.setattr(sys, "excepthook", lambda *args: previous.append(args))
    install_excepthook()
    try:
        raise SSLConfigError("fold 3 is not in splits_final.json")
    except SSLConfigError as error:  # still an ordinary exception for Python code
        sys.excepthook(type(error), error, error.__traceback__)
    assert capsys.readouterr().err.splitlines()[0] == "error: fold 3 is not in splits_final.json"
    assert previous == []
    other = RuntimeError("bug")
    sys.excepthook(RuntimeError, other, None)
    assert previous == [(RuntimeError, other, None)]
    monkeypatch.setenv("NNUNET_SSL_TRACEBACK", "1")
    sys.excepthook(SSLConfigError, SSLConfigError("x"), None)
    assert len(previous) == 2
