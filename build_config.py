"""Decides how aubench._C is built: the CPU kernels alone, or the CPU and CUDA kernels.

The one place that decides it: setup.py (and so `pip install`, `make`) calls `build_plan()`,
`.ci/run` forces the CUDA compile through the same setup.py, and `python build_config.py`
prints the decision for this machine.

The default, with no variables set:
- no usable CUDA toolkit, or a CPU build of torch       -> CPU kernels (nothing said);
- a toolkit but no GPU visible and no TORCH_CUDA_ARCH_LIST -> CPU kernels, with one line
  saying why and how to get the CUDA kernels;
- a toolkit and a GPU (or TORCH_CUDA_ARCH_LIST set)      -> CPU and CUDA kernels, for that
  GPU's architecture (or for the listed ones).
AUBENCH_CUDA=1 forces the CUDA kernels (an error naming what was looked at when no toolkit
can be found), AUBENCH_CUDA=0 forbids them.

A usable toolkit is a root folder holding `bin/nvcc` and the CUDA runtime library. The nvcc on
PATH may be a wrapper script (e.g. /usr/local/bin/nvcc calling /usr/local/cuda-13.0/bin/nvcc),
so the folder above it is one candidate among several, never trusted on its name alone.

This file imports nothing from aubench and only torch lazily, so it runs before the package is
built.
"""
from __future__ import annotations

import glob
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

CUDA_FLAG = "AUBENCH_CUDA"
ARCH_LIST = "TORCH_CUDA_ARCH_LIST"
_RUNTIME_GLOBS = ("lib64/libcudart.so*", "lib/libcudart.so*", "targets/*/lib/libcudart.so*",
                  "lib/x64/cudart*.lib", "bin/cudart64_*.dll")


class BuildConfigError(RuntimeError):
    """The environment asks for a build that cannot be made (the message says what to change)."""


@dataclass(frozen=True)
class BuildPlan:
    cuda: bool                   # build the CUDA kernels too
    cuda_home: str | None        # toolkit root used (cuda=True), or found but unused
    arch_list: str | None        # TORCH_CUDA_ARCH_LIST, or None: the visible GPU's architecture
    reason: str                  # one line: what is built and why
    notice: bool = False         # the user should see `reason` (a toolkit left unused)


def is_cuda_root(path: str) -> bool:
    """True when `path` holds an executable bin/nvcc and the CUDA runtime library."""
    nvcc = os.path.join(path, "bin", "nvcc")
    if not (os.path.isfile(nvcc) and os.access(nvcc, os.X_OK)):
        return False
    return any(glob.glob(os.path.join(path, pattern)) for pattern in _RUNTIME_GLOBS)


def cuda_root_candidates(env: Mapping[str, str], which: Callable[[str], str | None] = shutil.which,
                         system_roots: Sequence[str] | None = None) -> list[str]:
    """Where a toolkit root is looked for, in order: CUDA_HOME, CUDA_PATH, the folder above the
    real nvcc on PATH (symlinks resolved), /usr/local/cuda, /usr/local/cuda-* (newest first)."""
    candidates = [env.get("CUDA_HOME", ""), env.get("CUDA_PATH", "")]
    nvcc = which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    if system_roots is None:
        system_roots = ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    candidates += list(system_roots)
    unique: list[str] = []
    for path in candidates:
        if path and path not in unique:
            unique.append(path)
    return unique


def find_cuda_root(candidates: Sequence[str]) -> str | None:
    return next((path for path in candidates if is_cuda_root(path)), None)


def decide(env: Mapping[str, str], torch_cuda: str | None, gpu_visible: Callable[[], bool],
           candidates: Sequence[str]) -> BuildPlan:
    """The build decision from the environment and the probes (pure: tests fake them all).

    Args:
        env: the environment variables (AUBENCH_CUDA, TORCH_CUDA_ARCH_LIST are read).
        torch_cuda: torch.version.cuda of the installed torch (None for a CPU build).
        gpu_visible: returns True when torch sees a CUDA device (called only when needed).
        candidates: toolkit roots to try, in order (see `cuda_root_candidates`).
    """
    flag = env.get(CUDA_FLAG, "").strip()
    if flag not in ("", "0", "1"):
        raise BuildConfigError(f"{CUDA_FLAG}={flag!r}: use 1 (force the CUDA kernels), 0 (CPU kernels "
                               f"only) or leave it unset (decide from the machine)")
    arch = env.get(ARCH_LIST, "").strip() or None
    if flag == "0":
        return BuildPlan(False, None, None, f"CPU kernels only ({CUDA_FLAG}=0)")
    if torch_cuda is None:
        if flag == "1":
            raise BuildConfigError(f"{CUDA_FLAG}=1, but the installed torch is a CPU build "
                                   "(torch.version.cuda is None): install a CUDA build of torch")
        return BuildPlan(False, None, None, "CPU kernels only (torch is a CPU build)")
    root = find_cuda_root(candidates)
    if root is None:
        if flag == "1":
            looked = ", ".join(candidates) or "nothing (no CUDA_HOME, no nvcc on PATH)"
            raise BuildConfigError(
                f"{CUDA_FLAG}=1, but no CUDA toolkit root (a folder with bin/nvcc and the CUDA "
                f"runtime library libcudart) was found; looked at: {looked}. Set CUDA_HOME to it")
        return BuildPlan(False, None, None, "CPU kernels only (no CUDA toolkit found)")
    if arch is not None:
        return BuildPlan(True, root, arch, f"CPU and CUDA kernels for {ARCH_LIST}={arch}, "
                                           f"CUDA toolkit {root}")
    if gpu_visible():
        return BuildPlan(True, root, None, f"CPU and CUDA kernels for the visible GPU, "
                                           f"CUDA toolkit {root}")
    if flag == "1":
        raise BuildConfigError(f"{CUDA_FLAG}=1, but no GPU is visible to pick the architecture "
                               f"from: set {ARCH_LIST} too (e.g. {ARCH_LIST}=9.0 for an H100/H200)")
    return BuildPlan(False, root, None,
                     f"CUDA toolkit {root} found but no GPU is visible and {ARCH_LIST} is "
                     f"unset, so only the CPU kernels are built; for the CUDA kernels too, rebuild "
                     f"with {CUDA_FLAG}=1 {ARCH_LIST}=<compute capability, e.g. 9.0> make build",
                     notice=True)


def _gpu_visible() -> bool:
    import torch
    try:
        return bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)
    except Exception:  # a broken driver counts as no GPU: the CPU build still works
        return False


def build_plan(env: Mapping[str, str] | None = None) -> BuildPlan:
    """The decision for this machine and environment (see the module docstring)."""
    import torch
    env = os.environ if env is None else env
    return decide(env, torch.version.cuda, _gpu_visible, cuda_root_candidates(env))


def main(argv: Sequence[str] | None = None) -> int:
    """`python build_config.py` prints the decision; `--notice` prints it only when the user
    should act on it (a toolkit left unused). Exit 2 with the reason when no build can be made."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        plan = build_plan()
    except BuildConfigError as error:
        print(f"aubench build: {error}", file=sys.stderr)
        return 2
    if plan.notice or "--notice" not in argv:
        print(f"aubench build: {plan.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
