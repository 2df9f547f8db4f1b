"""Batched Sinkhorn: aubench's kernels vs the PyTorch reference vs POT's solve_batch.

Every problem runs exactly 50 iterations (tol = 0), float32, eps = 0.05, costs like RRL's
1 - co-occurrence with unequal, partly zero marginal masses.
Run: PYTHONPATH=. python -m pytest benchmarks/bench_sinkhorn.py --benchmark-enable
"""
import ot
import pytest
import torch

from aubench.ops import reference, sinkhorn

EPS = 0.05
ITERATIONS = 50
SIZES = [(256, 8), (256, 12), (256, 64), (4096, 8), (4096, 12), (4096, 64)]

cuda = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def make_inputs(batch, k, device="cpu", requires_grad=False):
    gen = torch.Generator().manual_seed(batch + k)
    cost = 1 - torch.rand(batch, k, k, generator=gen)
    a = torch.rand(batch, k, generator=gen) * (torch.rand(batch, k, generator=gen) > 0.1)
    b = torch.rand(batch, k, generator=gen) * 2
    a[:, 0] += 0.1
    return [t.to(device).requires_grad_(requires_grad) for t in (cost, a, b)]


def rounds_for(batch, k):
    """Fewer rounds for the huge cases, so the whole file stays within minutes."""
    return max(1, min(5, 1_000_000 // (batch * k * k)))


def solve_pot(cost, a, b):
    # POT needs equal masses: give it the unit-normalised marginals (as aubench does inside).
    a_unit = a / a.sum(1, keepdim=True)
    b_unit = b / b.sum(1, keepdim=True)
    return ot.solve_batch(cost, EPS, a_unit, b_unit, max_iter=ITERATIONS, tol=0,
                          method="log_sinkhorn").plan


SOLVERS = {
    "aubench": lambda cost, a, b: sinkhorn(cost, a, b, eps=EPS, max_iter=ITERATIONS, tol=0),
    "reference": lambda cost, a, b: reference.sinkhorn(cost, a, b, EPS, ITERATIONS, 0.0),
    "pot": solve_pot,
}


def run(benchmark, fn, rounds):
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1 if rounds > 1 else 0)


@pytest.mark.parametrize("impl", list(SOLVERS))
@pytest.mark.parametrize("batch, k", SIZES)
def test_sinkhorn_forward_cpu(benchmark, impl, batch, k):
    cost, a, b = make_inputs(batch, k)
    benchmark.group = f"sinkhorn forward cpu B={batch} K={k}"
    benchmark.extra_info["impl"] = impl
    solve = SOLVERS[impl]
    plan = run(benchmark, lambda: solve(cost, a, b), rounds_for(batch, k))
    assert plan.shape == (batch, k, k)


@pytest.mark.parametrize("impl", ["aubench", "reference"])
def test_sinkhorn_forward_backward_cpu(benchmark, impl):
    batch, k = 256, 12
    cost, a, b = make_inputs(batch, k, requires_grad=True)
    weight = torch.randn(batch, k, k, generator=torch.Generator().manual_seed(0))
    benchmark.group = f"sinkhorn forward+backward cpu B={batch} K={k}"
    benchmark.extra_info["impl"] = impl
    solve = SOLVERS[impl]

    def step():
        return torch.autograd.grad((solve(cost, a, b) * weight).sum(), (cost, a, b))

    grads = run(benchmark, step, 5)
    assert all(torch.isfinite(g).all() for g in grads)


def timed_on_cuda(fn):
    def wrapper():
        out = fn()
        torch.cuda.synchronize()
        return out

    return wrapper


@pytest.mark.parametrize("impl", ["aubench", "reference"])
@pytest.mark.parametrize("batch, k", SIZES)
@pytest.mark.parametrize("_cuda", [pytest.param(None, marks=cuda)], ids=["cuda"])
def test_sinkhorn_forward_cuda(benchmark, impl, batch, k, _cuda):
    cost, a, b = make_inputs(batch, k, device="cuda")
    benchmark.group = f"sinkhorn forward cuda B={batch} K={k}"
    benchmark.extra_info["impl"] = impl
    solve = SOLVERS[impl]
    plan = run(benchmark, timed_on_cuda(lambda: solve(cost, a, b)), 10)
    assert plan.shape == (batch, k, k)


@pytest.mark.parametrize("impl", ["aubench", "reference"])
@pytest.mark.parametrize("_cuda", [pytest.param(None, marks=cuda)], ids=["cuda"])
def test_sinkhorn_forward_backward_cuda(benchmark, impl, _cuda):
    batch, k = 256, 12
    cost, a, b = make_inputs(batch, k, device="cuda", requires_grad=True)
    weight = torch.randn(batch, k, k, device="cuda")
    benchmark.group = f"sinkhorn forward+backward cuda B={batch} K={k}"
    benchmark.extra_info["impl"] = impl
    solve = SOLVERS[impl]
    grads = run(
        benchmark,
        timed_on_cuda(lambda: torch.autograd.grad((solve(cost, a, b) * weight).sum(), (cost, a, b))),
        10,
    )
    assert all(torch.isfinite(g).all() for g in grads)
