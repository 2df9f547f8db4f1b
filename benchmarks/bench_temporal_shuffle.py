"""Temporal-shuffle clips, forward + backward, at Knowledge-Spreader's sizes (B=64 clips of N=5
frames, and long clips of N=64; C=512 ResNet-18 features, the students' inputs p_a), against the
pure-PyTorch reference (gather + cat, differentiated by autograd). aubench runs as KS's training
step calls it: validate=False, its permutations coming from make_shuffle_permutations."""
from functools import partial

import pytest
import torch

from aubench.ops import make_shuffle_permutations, temporal_shuffle_features
from aubench.ops._extension import have_cuda_kernels
from aubench.ops import reference

BATCH, CHANNELS = 64, 512
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not (torch.cuda.is_available() and have_cuda_kernels()),
                       reason="needs a CUDA device and aubench._C built with CUDA"),
])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("frames", [5, 64])
@pytest.mark.parametrize("impl", ["aubench", "reference"])
def test_temporal_shuffle_features(benchmark, device, frames, impl):
    generator = torch.Generator(device).manual_seed(0)
    perm = make_shuffle_permutations(BATCH, frames, generator=generator)
    features = torch.randn(BATCH, frames, CHANNELS, device=device, requires_grad=True)
    grad = torch.randn(2 * BATCH, frames, CHANNELS, device=device)
    build = (partial(temporal_shuffle_features, validate=False) if impl == "aubench"
             else reference.temporal_shuffle_features)
    benchmark.group = f"temporal_shuffle fwd+bwd B{BATCH} N{frames} C{CHANNELS} {device}"
    benchmark.extra_info["impl"] = impl

    def step():
        clips, _ = build(features, perm)
        torch.autograd.grad(clips, features, grad)
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark(step)
