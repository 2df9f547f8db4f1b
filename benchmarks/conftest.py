"""Benchmark settings shared by every benchmarks/bench_*.py suite.

Each result JSON records the device and library versions it was measured with, so a number
never travels without its context.
"""
import pytest
import torch

from aubench.bench import cpu_info, device_name


def pytest_benchmark_update_machine_info(config, machine_info):
    import numpy

    machine_info["aubench_device"] = device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    machine_info["aubench_cpu"] = cpu_info()  # brand, kernel capability (AVX2 / AVX512), threads
    machine_info["torch"] = torch.__version__
    machine_info["torch_cuda"] = torch.version.cuda
    machine_info["numpy"] = numpy.__version__
    try:
        import aubench
        from aubench.ops import have_cuda_kernels, have_extension

        machine_info["aubench"] = aubench.__version__
        machine_info["aubench_extension"] = have_extension()
        machine_info["aubench_cuda_kernels"] = have_cuda_kernels()
    except ImportError:
        machine_info["aubench"] = None


@pytest.fixture
def cuda_sync():
    """Call after a CUDA workload inside a benchmarked function so timings include the kernels."""
    return torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
