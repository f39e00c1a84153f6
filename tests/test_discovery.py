"""Zero-config discovery: the start-up hook, a user's own nnUNet_extTrainer entries, nnunet_ssl_check."""
import os
import subprocess
import sys

from conftest import bin_path
from nnunet_ssl.check import ext_trainer_dir

PRINT_EXT = "import os; print(os.environ.get('nnUNet_extTrainer', ''))"


def python(code, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", "NNUNET_SSL_NO_AUTOREGISTER")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True)


def test_hook_appends_the_trainer_index_and_keeps_the_users_folders():
    assert python(PRINT_EXT).stdout.strip() == ext_trainer_dir()
    assert python(PRINT_EXT, nnUNet_extTrainer="/my/trainers").stdout.strip() == f"/my/trainers{os.pathsep}{ext_trainer_dir()}"
    assert python(PRINT_EXT, NNUNET_SSL_NO_AUTOREGISTER="1").stdout.strip() == ""


def test_trainer_index_is_one_module_re_exporting_the_real_classes():
    assert [f for f in os.listdir(ext_trainer_dir()) if f.endswith(".py")] == ["nnunet_ssl_trainer_index.py"]


def test_nnunet_finds_every_trainer_as_the_real_picklable_class():
    code = ("import pickle; import nnunet_ssl.trainers as t; "
            "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
            "for name in t.__all__:\n"
            "    cls = find(name); assert cls is getattr(t, name), name; pickle.loads(pickle.dumps(cls))\n"
            "print('found', len(t.__all__))")
    result = python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "found" in result.stdout


def test_check_command_reports_ok_and_explains_failures(tmp_path):
    folders = {v: str(tmp_path) for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    environment = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    ok = subprocess.run([bin_path("nnunet_ssl_check")], env=dict(environment, **folders), capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "[ok] trainer discovery: nnU-Net finds" in ok.stdout
    assert len(ok.stdout.splitlines()) == 4 and not ok.stderr.strip(), "four verdicts, not nnU-Net's trainer search"
    broken = subprocess.run([bin_path("nnunet_ssl_check")], env=dict(environment, NNUNET_SSL_NO_AUTOREGISTER="1"),
                            capture_output=True, text=True)
    assert broken.returncode == 1
    assert "[FAIL] nnU-Net environment variables: not set: nnUNet_raw" in broken.stdout
    assert "[FAIL] auto-registration hook: NNUNET_SSL_NO_AUTOREGISTER is set" in broken.stdout
    assert "nnunet_ssl_check --print-ext-path" in broken.stdout
