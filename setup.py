"""Builds aubench._C, the fused custom ops, with torch.utils.cpp_extension.

The CPU kernels are always built; whether the CUDA kernels are built too is decided by
build_config.py (read it for the rules: a toolkit and a GPU, TORCH_CUDA_ARCH_LIST, or
AUBENCH_CUDA=1 / 0).
"""
import glob
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from build_config import BuildConfigError, build_plan  # noqa: E402

try:
    PLAN = build_plan()
except BuildConfigError as error:
    sys.exit(f"aubench build: {error}")
if PLAN.notice:
    print(f"aubench build: {PLAN.reason}", file=sys.stderr)
if PLAN.cuda:
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported, and would otherwise guess
    # it from the nvcc on PATH (a wrapper's folder is no toolkit root).
    os.environ["CUDA_HOME"] = PLAN.cuda_home
    if PLAN.arch_list:
        os.environ["TORCH_CUDA_ARCH_LIST"] = PLAN.arch_list

from torch.utils import cpp_extension  # noqa: E402

if PLAN.cuda:
    cpp_extension.CUDA_HOME = PLAN.cuda_home


def extension():
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    cxx_flags = ["-O3", "-fopenmp"]
    extra_link = ["-fopenmp"]
    include_dirs = [os.path.join(HERE, "csrc")]
    if PLAN.cuda:
        return cpp_extension.CUDAExtension(
            "aubench._C",
            cpu_sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=[("AUBENCH_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=extra_link,
        )
    return cpp_extension.CppExtension(
        "aubench._C",
        cpu_sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=extra_link,
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
