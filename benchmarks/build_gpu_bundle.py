"""The packages benchmarks/gpu_check.py needs on a GPU machine that has torch but no package registry, as one file.

    python benchmarks/build_gpu_bundle.py            # writes .gpu_bundle/wheels.tar.xz (git-ignored); needs pip access

The target is the lent GPU machine's image (see the device notes): CPython 3.12 on x86-64 Linux, with torch,
torchvision, triton, numpy, scipy, scikit-image, scikit-learn, pandas, matplotlib, seaborn, tifffile, requests and
more already installed. What nnU-Net's train / preprocess / predict path imports beyond those is downloaded here as
wheels at the versions of this environment (``COMPILED``, ``PURE``), plus nnunet-ssl's own wheel. SimpleITK alone
is a 53 MB wheel and all of them 66 MiB, over the 64 MiB a device call can carry; so the wheels are stored
uncompressed inside one xz-compressed tar (36.5 MiB, measured; see the README). gpu_check makes its
data on the spot. xz -9 over the 311 MiB of stored wheels takes minutes of one core.

On the GPU machine:

    mkdir -p /tmp/wheels && tar -xJf .gpu_bundle/wheels.tar.xz -C /tmp/wheels && \\
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/wheels/*.whl && \\
    PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH python3 benchmarks/gpu_check.py
"""
import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: distributions the user path imports that the GPU image lacks (found by importing nnU-Net's train, preprocess
#: and predict modules and nnunet-ssl's trainers, and subtracting the image's package list): compiled ones, as
#: wheels for the machine's platform ...
COMPILED = ["blosc2", "ndindex", "numexpr", "SimpleITK", "connected-components-3d"]
#: ... and pure-Python ones (some only published as source, built into a wheel here)
PURE = ["nnunetv2", "acvl-utils", "dynamic-network-architectures", "batchgenerators", "batchgeneratorsv2", "nibabel",
        "yacs", "MedPy"]
PYTHON_VERSION = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
LIMIT_MIB = 64


def pinned(names):
    """``name==version`` as installed here (the versions the project is tested with)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def download(folder: str) -> None:
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    PYTHON_VERSION, "--implementation", "cp", *platform_args, "-d", folder, *pinned(COMPILED)],
                   check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", folder, *pinned(PURE), REPO], check=True)


def stored(wheel: str, folder: str) -> str:
    """The wheel rewritten without zip compression (same files, so pip's RECORD hashes still hold), which lets xz
    compress the whole bundle far better than the wheels' own deflate."""
    target = os.path.join(folder, os.path.basename(wheel))
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        for item in source.infolist():
            out.writestr(item.filename, source.read(item.filename), zipfile.ZIP_STORED)
    return target


def mib(path: str) -> float:
    return os.path.getsize(path) / 2 ** 20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, ".gpu_bundle", "wheels.tar.xz"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        downloaded, uncompressed = os.path.join(tmp, "downloaded"), os.path.join(tmp, "stored")
        os.makedirs(uncompressed)
        download(downloaded)
        wheels = sorted(os.listdir(downloaded))
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with tarfile.open(args.output, "w:xz", preset=9) as tar:
            for name in wheels:
                tar.add(stored(os.path.join(downloaded, name), uncompressed), arcname=name)
        total_wheels = sum(mib(os.path.join(downloaded, w)) for w in wheels)
    for name in wheels:
        print(f"  {name}")
    size = mib(args.output)
    print(f"{len(wheels)} wheels, {total_wheels:.1f} MiB as downloaded; bundle {args.output}: {size:.1f} MiB "
          f"(limit {LIMIT_MIB} MiB with the data gpu_check makes on the machine)")
    if size > LIMIT_MIB:
        raise SystemExit(f"error: the bundle is {size:.1f} MiB, over the {LIMIT_MIB} MiB a device call carries")


if __name__ == "__main__":
    main()
