"""Custom ops under hostile inputs: unvalidated repeated / missing indices (validate=False),
Sinkhorn at extreme eps, and Sinkhorn's convergence report."""
import importlib
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from aubench import ops
from aubench.ops import (
    gather_tokens,
    reference,
    restore_tokens,
    sinkhorn,
    temporal_shuffle_features,
)
from aubench.ops._extension import have_cuda_kernels, have_extension

needs_extension = pytest.mark.skipif(not have_extension(), reason="aubench._C is not built")
needs_cuda_kernels = pytest.mark.skipif(not have_cuda_kernels(),
                                        reason="aubench._C was built without CUDA")
REPO = Path(__file__).resolve().parents[1]
sinkhorn_module = importlib.import_module("aubench.ops.sinkhorn")


def freed_garbage(shape, dtype):
    """Frees a NaN-filled buffer of the size an op's output will have: the allocator tends to
    hand the same memory back, so rows a kernel leaves unwritten show up (as NaN)."""
    torch.full(shape, float("nan"), dtype=dtype)


# ---- repeated and missing indices with validate=False -----------------------------------------
# Every row of these repeats a value and misses another.
GATHER_IDS = torch.tensor([[1, 1, 1, 4], [0, 5, 0, 2]])  # (B=2, K=4) into L=6
RESTORE_IDS = torch.tensor([[0, 0, 2, 3, 5, 4], [3, 1, 1, 1, 2, 5]])  # (B=2, L=6), K=3: some
# kept tokens are used twice, some never
PERM = torch.tensor([[0, 0, 1, 2, 2], [4, 3, 3, 3, 0]])  # (B=2, N=5): not permutations


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_gather_backward_sums_repeated_ids(dtype, index_dtype):
    ids = GATHER_IDS.to(index_dtype)
    x = torch.randn(2, 6, 3, dtype=dtype, requires_grad=True)
    upstream = torch.randn(2, 4, 3, dtype=dtype)
    freed_garbage((2, 6, 3), dtype)
    (grad,) = torch.autograd.grad(gather_tokens(x, ids, validate=False), x, upstream)
    (expected,) = torch.autograd.grad(reference.gather_tokens(x, ids), x, upstream)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad[0, 1], upstream[0, :3].sum(0))  # position 1 kept 3 times
    assert (grad[0, [0, 2, 3, 5]] == 0).all()  # never kept


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_restore_backward_sums_repeated_and_zeroes_unused_tokens(dtype, index_dtype):
    ids = RESTORE_IDS.to(index_dtype)
    x_vis = torch.randn(2, 3, 4, dtype=dtype, requires_grad=True)
    token = torch.randn(4, dtype=dtype, requires_grad=True)
    upstream = torch.randn(2, 6, 4, dtype=dtype)
    freed_garbage((2, 3, 4), dtype)
    grads = torch.autograd.grad(restore_tokens(x_vis, ids, token, validate=False),
                                (x_vis, token), upstream)
    expected = torch.autograd.grad(reference.restore_tokens(x_vis, ids, token), (x_vis, token),
                                   upstream)
    torch.testing.assert_close(grads[0], expected[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(grads[1], expected[1])
    assert (grads[0][0, 1] == 0).all()  # token 1 of sample 0 is never placed


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_temporal_shuffle_backward_with_repeated_frames(dtype, index_dtype):
    perm = PERM.to(index_dtype)
    features = torch.randn(2, 5, 3, dtype=dtype, requires_grad=True)
    upstream = torch.randn(4, 5, 3, dtype=dtype)
    freed_garbage((2, 5, 3), dtype)
    inputs, _ = temporal_shuffle_features(features, perm, validate=False)
    (grad,) = torch.autograd.grad(inputs, features, upstream)
    expected_inputs, _ = reference.temporal_shuffle_features(features, perm)
    (expected,) = torch.autograd.grad(expected_inputs, features, upstream)
    torch.testing.assert_close(inputs, expected_inputs, rtol=0, atol=0)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-6)


@needs_extension
def test_repeated_indices_gradcheck_and_double_backward():
    """The kernels are each other's adjoints with any indices, not only permutations."""
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    token = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def tokens(x, token):
        visible = gather_tokens(x, GATHER_IDS[:, :3], validate=False)
        return restore_tokens(visible, RESTORE_IDS, token, validate=False)

    def shuffled(x):
        return temporal_shuffle_features(x[:, :5], PERM, validate=False)[0]

    for fn, inputs in ((tokens, (x, token)), (shuffled, (x,))):
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


# ---- Sinkhorn: eps at and beyond what the dtype can represent --------------------------------


def problem(batch=6, k=7, dtype=torch.float64, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cost = scale * torch.rand(batch, k, k, generator=gen, dtype=dtype)
    cost[:, 0, 0] = scale  # max |cost| is exactly `scale`
    a = torch.rand(batch, k, generator=gen, dtype=dtype) + 0.05
    b = 0.5 * torch.rand(batch, k, generator=gen, dtype=dtype) + 0.01
    return cost, a, b


def assert_transport_plan(plan, a, b, marginal_error=None):
    """Finite, non-negative, columns summing to b / sum(b), rows to a / sum(a) up to the
    reported L1 error (measured here on the plan itself)."""
    a_unit = a / a.sum(1, keepdim=True)
    b_unit = b / b.sum(1, keepdim=True)
    atol = 1e-5 if plan.dtype == torch.float32 else 1e-12
    assert torch.isfinite(plan).all() and (plan >= 0).all()
    torch.testing.assert_close(plan.sum(1), b_unit, atol=atol, rtol=0)
    torch.testing.assert_close(plan.sum((1, 2)), torch.ones_like(a[:, 0]), atol=atol, rtol=0)
    if marginal_error is not None:
        row_error = (plan.sum(2) - a_unit).abs().sum(1)
        torch.testing.assert_close(marginal_error, row_error, atol=atol, rtol=0)


@pytest.mark.parametrize("dtype, eps", [(torch.float32, 1e-10), (torch.float32, 1e-30),
                                        (torch.float64, 1e-20), (torch.float64, 1e-300)])
def test_eps_far_below_the_cost_resolution_still_gives_a_transport_plan(dtype, eps):
    # float32 at eps = 1e-10 used to return total mass 7.0: exp() of f_i + g_j - C_ij, which
    # is pure rounding noise when eps is this far below the potentials' resolution.
    cost, a, b = problem(dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = sinkhorn(cost, a, b, eps=eps, max_iter=50)
    assert_transport_plan(plan, a, b)
    with pytest.warns(ops.SinkhornConvergenceWarning, match="resolution"):
        plan, info = sinkhorn(cost, a, b, eps=eps, max_iter=50, return_info=True)
    assert_transport_plan(plan, a, b, info.marginal_error)
    assert (info.iterations == 50).all()
    assert (info.marginal_error > 1e-3).all()  # no convergence possible, and it says so


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_smallest_eps_runs_and_below_it_is_refused(dtype, scale):
    # The smallest eps: a normal number of the dtype (the floor at small costs), and
    # 4 max|cost| / eps <= finfo.max (at larger costs). The kernels overflow to NaN at about
    # 2 max|cost| / eps = finfo.max, 8x below it (measured on the raw op).
    cost, a, b = problem(dtype=dtype, scale=scale)
    info = torch.finfo(dtype)
    smallest = max(info.tiny, 4 * scale / info.max)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = sinkhorn(cost, a, b, eps=smallest * 1.0001, max_iter=10)
    assert_transport_plan(plan, a, b)
    name = str(dtype).replace("torch.", "")
    with pytest.raises(ValueError, match=rf"eps=.* underflows {name}"):
        sinkhorn(cost, a, b, eps=smallest * 0.99, max_iter=10)
    assert ops.eps_range(scale, 7, dtype)[0] == pytest.approx(smallest, rel=1e-12)


@pytest.mark.parametrize("dtype, eps, name", [
    (torch.float32, 1e-45, "float32"), (torch.float16, 1e-45, "float32"),
    (torch.float32, 5e-324, "float32"), (torch.float64, 5e-324, "float64"),
])
def test_eps_that_underflows_is_refused(dtype, eps, name):
    cost, a, b = problem(dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"eps={eps:g} underflows {name}"):
        sinkhorn(cost.to(dtype), a.to(dtype), b.to(dtype), eps=eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_largest_eps_runs_and_above_it_is_refused(dtype):
    # eps * log(masses) must stay finite: 1e39 is not even a float32, 1e308 gave NaN in float64.
    cost, a, b = problem(dtype=dtype)
    name = str(dtype).replace("torch.", "")
    with pytest.raises(ValueError, match=rf"eps=.* overflows {name}"):
        sinkhorn(cost, a, b, eps=1e39 if dtype == torch.float32 else 1e308, max_iter=5)
    largest = ops.eps_range(1.0, 7, dtype)[1]
    assert_transport_plan(sinkhorn(cost, a, b, eps=largest, max_iter=5), a, b)
    with pytest.raises(ValueError, match=rf"eps=.* overflows {name}"):
        sinkhorn(cost, a, b, eps=2 * largest, max_iter=5)


def test_cost_too_large_for_the_dtype_is_refused():
    cost, a, b = problem(dtype=torch.float32, scale=1e38)
    with pytest.raises(ValueError, match="cost entries up to 1e\\+38 overflow float32"):
        sinkhorn(cost, a, b, eps=1.0)


# ---- Sinkhorn: convergence report ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_return_info_reports_iterations_and_the_plans_row_error(dtype):
    cost, a, b = problem(batch=8, dtype=dtype, seed=3)
    a[2] = 0  # an all-zero problem: no iterations, no error
    plan, info = sinkhorn(cost, a, b, eps=0.1, max_iter=500, tol=1e-5, return_info=True)
    assert isinstance(info, ops.SinkhornInfo)
    assert info.iterations.dtype == torch.int64 and info.iterations.shape == (8,)
    assert info.marginal_error.shape == (8,)
    assert info.iterations[2] == 0 and info.marginal_error[2] == 0 and (plan[2] == 0).all()
    kept = torch.arange(8) != 2
    assert ((info.iterations[kept] > 1) & (info.iterations[kept] < 500)).all()
    assert (info.marginal_error[kept] < 1e-5).all()
    assert_transport_plan(plan[kept], a[kept], b[kept], info.marginal_error[kept])
    expected, iterations, error = reference.sinkhorn(cost, a, b, 0.1, 500, 1e-5, return_info=True)
    torch.testing.assert_close(plan, expected)
    torch.testing.assert_close(info.marginal_error, error, atol=1e-6, rtol=1e-3)
    if dtype == torch.float64:
        assert torch.equal(info.iterations, iterations)


def test_one_warning_per_call_when_problems_miss_tol():
    cost, a, b = problem(batch=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, info = sinkhorn(cost, a, b, eps=0.01, max_iter=3, tol=1e-9, return_info=True)
    missed = [w for w in caught if issubclass(w.category, ops.SinkhornConvergenceWarning)]
    assert len(missed) == 1
    assert "5 of 5 problems missed tol=1e-09 after max_iter=3" in str(missed[0].message)
    assert f"{info.marginal_error.max().item():.3g}" in str(missed[0].message)
    assert missed[0].filename == __file__  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error", ops.SinkhornConvergenceWarning)
        sinkhorn(cost, a, b, eps=0.01, max_iter=3, tol=0)  # tol = 0 asks for no target
        sinkhorn(cost, a, b, eps=0.5, max_iter=5000, tol=1e-9)  # converges


def test_reference_fallback_reports_the_same(monkeypatch):
    cost, a, b = problem(batch=4, seed=5)
    plan, info = sinkhorn(cost, a, b, eps=0.05, max_iter=300, return_info=True)
    monkeypatch.setattr(sinkhorn_module, "_use_kernels", lambda device: False)
    fallback_plan, fallback_info = sinkhorn(cost, a, b, eps=0.05, max_iter=300, return_info=True)
    torch.testing.assert_close(fallback_plan, plan)
    assert torch.equal(fallback_info.iterations, info.iterations)
    torch.testing.assert_close(fallback_info.marginal_error, info.marginal_error)


# ---- CUDA --------------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_cuda_repeated_indices_match_cpu(dtype, index_dtype):
    torch.manual_seed(0)
    results = []
    x = torch.randn(2, 6, 33).to(dtype)  # odd width: the unaligned copy path
    token = torch.randn(33).to(dtype)
    up_gather = torch.randn(2, 4, 33).to(dtype)
    up_restore = torch.randn(2, 6, 33).to(dtype)
    up_shuffle = torch.randn(4, 5, 33).to(dtype)
    for device in ("cpu", "cuda"):
        xd = x.to(device).requires_grad_()
        td = token.to(device).requires_grad_()
        ids = (t.to(device, index_dtype) for t in (GATHER_IDS, RESTORE_IDS, PERM))
        gather_ids, restore_ids, perm = ids
        out = [
            torch.autograd.grad(gather_tokens(xd, gather_ids, validate=False), xd,
                                up_gather.to(device))[0],
            *torch.autograd.grad(restore_tokens(xd[:, :3], restore_ids, td, validate=False),
                                 (xd, td), up_restore.to(device)),
            torch.autograd.grad(temporal_shuffle_features(xd[:, :5], perm, validate=False)[0],
                                xd, up_shuffle.to(device))[0],
        ]
        results.append([t.cpu() for t in out])
    for got, want in zip(*results[::-1]):
        # Same additions in the same order on both devices; the mask-token gradient (1-D) is
        # a float sum reduced in another order.
        if got.dim() == 3:
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        else:
            torch.testing.assert_close(got, want, rtol=1e-2, atol=5e-2)


def on_cuda(expression):
    """The expression with every @ replaced by a device=cuda argument."""
    return expression.replace("@", "device='cuda'")


CUDA_BAD_INDEX = {  # one out-of-range index each, validate=False
    "gather": "aubench.ops.gather_tokens(torch.randn(1, 5, 4, @), torch.tensor([[0, 5]], @), "
              "validate=False)",
    "restore": "aubench.ops.restore_tokens(torch.randn(1, 2, 4, @), torch.tensor([[0, 1, -3]], "
               "@), torch.zeros(4, @), validate=False)",
    "shuffle": "aubench.ops.temporal_shuffle_features(torch.randn(1, 3, 4, @), "
               "torch.tensor([[0, 7, 1]], @), validate=False)",
    "gather backward": "torch.ops.aubench.gather_tokens_backward(torch.randn(1, 2, 4, @), "
                       "torch.tensor([[0, 9]], @), 5)",
    "restore backward": "torch.ops.aubench.restore_tokens_backward(torch.randn(1, 3, 4, @), "
                        "torch.tensor([[0, -1, 2]], @), 2)",
    "shuffle backward": "torch.ops.aubench.temporal_shuffle_features_backward("
                        "torch.randn(2, 3, 4, @), torch.tensor([[0, 3, 1]], @))",
}


@pytest.mark.cuda
@needs_cuda_kernels
@pytest.mark.parametrize("case", sorted(CUDA_BAD_INDEX))
def test_cuda_out_of_range_index_stops_the_kernel(case):
    """A device-side assert (as in torch's own index ops) poisons the CUDA context, so each
    case runs in its own process."""
    script = textwrap.dedent(f"""
        import torch, aubench.ops
        out = {on_cuda(CUDA_BAD_INDEX[case])}
        torch.cuda.synchronize()
        print("no error")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "no error" not in result.stdout
    assert "device-side assert" in result.stderr or "Assertion" in result.stderr


@pytest.mark.cuda
@needs_cuda_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_sinkhorn_report_and_tiny_eps_match_cpu(dtype):
    for k, eps, tol in ((7, 0.1, 1e-6), (80, 0.05, 1e-6), (7, 1e-10 if dtype == torch.float32
                                                            else 1e-300, 1e-6)):
        cost, a, b = problem(batch=6, k=k, dtype=dtype, seed=k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ops.SinkhornConvergenceWarning)
            plan, info = sinkhorn(cost.cuda(), a.cuda(), b.cuda(), eps=eps, max_iter=60,
                                  tol=tol, return_info=True)
            expected, expected_info = sinkhorn(cost, a, b, eps=eps, max_iter=60, tol=tol,
                                               return_info=True)
        plan, error = plan.cpu(), info.marginal_error.cpu()
        assert_transport_plan(plan, a, b, error)
        if eps >= 1e-2:  # converging problems agree with the CPU; noise-level ones need not
            torch.testing.assert_close(plan, expected, atol=2e-5 if dtype == torch.float32
                                       else 1e-10, rtol=1e-4)
            torch.testing.assert_close(error, expected_info.marginal_error, atol=1e-5, rtol=0)
            if dtype == torch.float64:
                assert torch.equal(info.iterations.cpu(), expected_info.iterations)


@needs_extension
@pytest.mark.parametrize("dtype, eps", [(torch.float32, 1e-45), (torch.float32, 1e39),
                                        (torch.float64, 5e-324)])
def test_kernel_refuses_eps_that_is_not_a_normal_number(dtype, eps):
    """Direct torch.ops calls skip the wrapper's checks; the kernel still refuses an eps its
    dtype cannot hold (it used to return NaN plans)."""
    cost, a, b = problem(dtype=dtype)
    with pytest.raises(RuntimeError, match="is not a normal"):
        torch.ops.aubench.sinkhorn(cost, a, b, eps, 5, 1e-6, False)
