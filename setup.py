"""Builds aubench._C, the fused custom ops, with torch.utils.cpp_extension.

CPU kernels are always built. CUDA kernels are built when a CUDA toolkit and a CUDA build of
torch are present, or when forced with AUBENCH_CUDA=1; AUBENCH_CUDA=0 turns them off (the
fast rebuild while developing CPU code).
"""
import glob
import os

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def want_cuda() -> bool:
    flag = os.environ.get("AUBENCH_CUDA", "").strip()
    if flag == "0":
        return False
    if flag == "1":
        if CUDA_HOME is None:
            raise RuntimeError("AUBENCH_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
        return True
    return CUDA_HOME is not None and torch.version.cuda is not None


def extension():
    here = os.path.dirname(os.path.abspath(__file__))
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    cxx_flags = ["-O3", "-fopenmp"]
    extra_link = ["-fopenmp"]
    include_dirs = [os.path.join(here, "csrc")]
    if want_cuda():
        nvcc_flags = ["-O3", "-lineinfo"]
        return CUDAExtension(
            "aubench._C",
            cpu_sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=[("AUBENCH_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=extra_link,
        )
    return CppExtension(
        "aubench._C",
        cpu_sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=extra_link,
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
