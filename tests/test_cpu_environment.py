"""The small-CPU environment: a user's values win, and glibc really stops paying page faults for large tensors."""
import os
import subprocess
import sys

from nnunet_ssl.cpu_environment import CPU_ENVIRONMENT, with_cpu_environment

# mallocs, writes and frees 64 MB 10 times through glibc itself and prints the minor page faults that cost
ALLOCATE_LARGE_BLOCKS = """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 * 2 ** 20
def block():
    address = libc.malloc(size)
    ctypes.memset(address, 1, size)
    libc.free(address)
block()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    block()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(env: dict) -> int:
    out = subprocess.run([sys.executable, "-c", ALLOCATE_LARGE_BLOCKS], env=env, capture_output=True, text=True,
                         check=True).stdout
    return int(out)


def test_user_values_are_kept_and_missing_ones_added():
    env = with_cpu_environment({"OMP_WAIT_POLICY": "ACTIVE", "PATH": "/bin"})
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and env["PATH"] == "/bin"
    assert env["MALLOC_MMAP_MAX_"] == CPU_ENVIRONMENT["MALLOC_MMAP_MAX_"]
    assert env["MALLOC_TRIM_THRESHOLD_"] == CPU_ENVIRONMENT["MALLOC_TRIM_THRESHOLD_"]


def test_glibc_keeps_large_blocks_with_it():
    default = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    # 64 MB is 16 k pages: glibc's default maps it fresh each time (about 160 k faults for 10 arrays)
    assert page_faults(default) > 100_000
    assert page_faults(dict(default, **CPU_ENVIRONMENT)) < 10_000
