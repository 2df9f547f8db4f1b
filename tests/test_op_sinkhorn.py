"""aubench.ops.sinkhorn: kernels vs the PyTorch reference vs POT, gradients, input checks."""
import importlib
import math
import sys
import warnings

import numpy as np
import ot
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aubench.ops import _extension, reference, sinkhorn

sinkhorn_module = importlib.import_module("aubench.ops.sinkhorn")

needs_extension = pytest.mark.skipif(
    not _extension.have_extension(), reason="aubench._C is not built"
)


def make_problem(batch, k, dtype=torch.float64, seed=0, zeros=True, device="cpu"):
    """Random costs in [0, 1] (like 1 - co-occurrence) and marginals of unequal total mass,
    with some zero-mass entries (never all of one marginal, unless the test asks)."""
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(batch, k, k, generator=gen, dtype=dtype)
    a = 3.0 * torch.rand(batch, k, generator=gen, dtype=dtype) + 0.05
    b = 0.5 * torch.rand(batch, k, generator=gen, dtype=dtype) + 0.01
    if zeros and k > 1:
        a[torch.rand(batch, k, generator=gen) < 0.2] = 0
        b[torch.rand(batch, k, generator=gen) < 0.2] = 0
        a[:, 0] = a[:, 0].clamp_min(0.1)  # keep some mass in every problem
        b[:, -1] = b[:, -1].clamp_min(0.1)
    return cost.to(device), a.to(device), b.to(device)


def tolerance(dtype):
    return {"atol": 1e-10, "rtol": 1e-8} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-4}


# ---- kernel vs reference ------------------------------------------------------------------


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "batch, k, eps, tol",
    [(1, 1, 0.05, 0.0), (3, 1, 1.0, 1e-6), (1, 6, 0.05, 1e-6), (8, 7, 0.05, 0.0),
     (16, 12, 0.05, 1e-6), (5, 33, 0.01, 1e-7), (4, 64, 0.2, 1e-6), (3, 20, 1e-3, 0.0),
     (6, 9, 10.0, 0.0)],
)
def test_kernel_matches_reference(batch, k, eps, tol, dtype):
    cost, a, b = make_problem(batch, k, dtype, seed=batch * 100 + k)
    plan, _, num_iter, error = torch.ops.aubench.sinkhorn(cost, a, b, eps, 40, tol, False)
    expected, expected_iter, expected_error = reference.sinkhorn(cost, a, b, eps, 40, tol,
                                                                 return_info=True)
    torch.testing.assert_close(plan, expected, **tolerance(dtype))
    torch.testing.assert_close(error, expected_error, **tolerance(dtype))
    if dtype == torch.float64:
        assert torch.equal(num_iter, expected_iter)
    if tol == 0:
        assert (num_iter == 40).all()  # tol = 0 runs exactly max_iter iterations
    assert torch.isfinite(plan).all()


@needs_extension
def test_broadcast_cost_equals_batched_cost():
    cost, a, b = make_problem(6, 8, seed=1)
    shared = cost[0]
    plan = sinkhorn(shared, a, b, eps=0.1)
    torch.testing.assert_close(plan, sinkhorn(shared.expand(6, 8, 8).clone(), a, b, eps=0.1))
    torch.testing.assert_close(plan, reference.sinkhorn(shared[None], a, b, 0.1, 100, 1e-6))


@needs_extension
def test_non_contiguous_inputs():
    cost, a, b = make_problem(5, 9, seed=2)
    cost_t = cost.transpose(1, 2)  # non-contiguous view
    wide_a = torch.stack([a, torch.ones_like(a)], dim=2)[:, :, 0]  # stride 2
    wide_b = torch.cat([b, b], dim=0)[::2]
    assert not (cost_t.is_contiguous() or wide_a.is_contiguous() or wide_b.is_contiguous())
    plan = sinkhorn(cost_t, wide_a, wide_b, eps=0.05)
    expected = sinkhorn(cost_t.contiguous(), a, wide_b.contiguous(), eps=0.05)
    torch.testing.assert_close(plan, expected)
    torch.testing.assert_close(plan, reference.sinkhorn(cost_t, wide_a, wide_b, 0.05, 100, 1e-6))


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_mass_and_unit_normalisation(dtype):
    cost, a, b = make_problem(4, 6, dtype, seed=3, zeros=False)
    a[0, 2] = 0
    b[1, 4] = 0
    a[2] = 0  # all-zero marginal: all-zero plan
    b[3, :] = 0
    plan = sinkhorn(cost, a, b, eps=0.1, max_iter=2000, tol=1e-9)
    assert torch.isfinite(plan).all()
    assert (plan[0, 2] == 0).all() and (plan[1, :, 4] == 0).all()
    assert (plan[2] == 0).all() and (plan[3] == 0).all()
    for p in (0, 1):  # the others have unit mass and the normalised marginals
        torch.testing.assert_close(plan[p].sum(1), a[p] / a[p].sum(), atol=1e-5, rtol=0)
        torch.testing.assert_close(plan[p].sum(0), b[p] / b[p].sum(), atol=1e-5, rtol=0)
    torch.testing.assert_close(plan, reference.sinkhorn(cost, a, b, 0.1, 2000, 1e-9),
                               **tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_float32(dtype):
    cost, a, b = make_problem(3, 5, torch.float32, seed=4)
    plan = sinkhorn(cost.to(dtype), a.to(dtype), b.to(dtype), eps=0.1)
    assert plan.dtype == dtype
    expected = sinkhorn(cost.to(dtype).float(), a.to(dtype).float(), b.to(dtype).float(), eps=0.1)
    torch.testing.assert_close(plan, expected.to(dtype))


def test_small_eps_is_stable():
    cost, a, b = make_problem(4, 16, seed=5)
    plan = sinkhorn(cost * 50, a, b, eps=1e-3, max_iter=30, tol=0)  # exp(-50000) underflows
    assert torch.isfinite(plan).all()
    torch.testing.assert_close(plan.sum((1, 2)), torch.ones(4, dtype=plan.dtype))


def test_empty_batch():
    plan = sinkhorn(torch.rand(0, 3, 3), torch.rand(0, 3), torch.rand(0, 3))
    assert plan.shape == (0, 3, 3)


# ---- POT oracle ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5, 16, 40, 64])
@pytest.mark.parametrize("eps", [1e-3, 1e-2, 0.1, 1.0, 10.0])
def test_matches_pot(k, eps):
    # Costs like RRL's 1 - co-occurrence; at eps = 1e-3 random costs converge very slowly,
    # so they get a near-block structure there that Sinkhorn resolves quickly.
    cost, a, b = make_problem(3, k, seed=k, zeros=False)
    if eps < 1e-2:
        cost = (cost > 0.5).double() + 1e-3 * cost
    plan = sinkhorn(cost, a, b, eps=eps, max_iter=20000, tol=1e-11)
    a_unit = (a / a.sum(1, keepdim=True)).numpy()
    b_unit = (b / b.sum(1, keepdim=True)).numpy()
    for p in range(3):  # POT's reg is our eps; POT needs equal masses, so unit-normalised
        expected = ot.sinkhorn(a_unit[p], b_unit[p], cost[p].numpy(), eps,
                               method="sinkhorn_log", numItermax=20000, stopThr=1e-13)
        np.testing.assert_allclose(plan[p].numpy(), expected, atol=1e-6, rtol=0)


def test_matches_pot_solve_batch_with_zero_mass():
    cost, a, b = make_problem(16, 10, seed=7)
    plan = sinkhorn(cost, a, b, eps=0.05, max_iter=5000, tol=1e-12)
    a_unit, b_unit = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    # POT's log-domain solver takes log(0) = -inf badly; give it the supports only.
    for p in range(16):
        rows, cols = a_unit[p] > 0, b_unit[p] > 0
        result = ot.solve_batch(cost[p][rows][:, cols][None], 0.05, a_unit[p][rows][None],
                                b_unit[p][cols][None], max_iter=5000, tol=1e-13,
                                method="log_sinkhorn")
        np.testing.assert_allclose(plan[p][rows][:, cols].numpy(), result.plan[0].numpy(),
                                   atol=1e-6, rtol=0)
        assert (plan[p][~rows] == 0).all() and (plan[p][:, ~cols] == 0).all()
    full = make_problem(32, 12, seed=8, zeros=False)
    a_unit = full[1] / full[1].sum(1, keepdim=True)
    b_unit = full[2] / full[2].sum(1, keepdim=True)
    result = ot.solve_batch(full[0], 0.1, a_unit, b_unit, max_iter=5000, tol=1e-13,
                            method="log_sinkhorn")
    np.testing.assert_allclose(sinkhorn(*full, eps=0.1, max_iter=5000, tol=1e-12).numpy(),
                               result.plan.numpy(), atol=1e-6, rtol=0)


# ---- gradients ----------------------------------------------------------------------------


@pytest.mark.parametrize("shared_cost", [False, True])
@pytest.mark.parametrize("eps", [0.05, 1.0])
def test_gradcheck(shared_cost, eps):
    cost, a, b = make_problem(3, 4, seed=9, zeros=False)
    if shared_cost:
        cost = cost[0]
    inputs = tuple(x.clone().requires_grad_() for x in (cost, a, b))
    assert torch.autograd.gradcheck(
        lambda c, x, y: sinkhorn(c, x, y, eps=eps, max_iter=12, tol=0), inputs
    )


@pytest.mark.parametrize("tol", [0.0, 1e-5])
@pytest.mark.parametrize("shared_cost", [False, True])
def test_gradients_match_reference_autograd(tol, shared_cost):
    cost, a, b = make_problem(6, 7, seed=10)
    a[2] = 0  # an all-zero problem
    if shared_cost:
        cost = cost[0]
    weight = torch.randn(6, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = []
    for solve in (
        lambda c, x, y: sinkhorn(c, x, y, eps=0.05, max_iter=30, tol=tol),
        lambda c, x, y: reference.sinkhorn(c if c.dim() == 3 else c[None], x, y, 0.05, 30, tol),
    ):
        inputs = [t.clone().requires_grad_() for t in (cost, a, b)]
        loss = (solve(*inputs) * weight).sum()
        grads.append(torch.autograd.grad(loss, inputs))
    for ours, expected in zip(*grads):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, expected, atol=1e-10, rtol=1e-8)


def test_no_history_kept_without_grad():
    if not _extension.have_extension():
        pytest.skip("aubench._C is not built")
    cost, a, b = make_problem(2, 3, seed=11)
    history = torch.ops.aubench.sinkhorn(cost, a, b, 0.1, 7, 0.0, False)[1]
    assert history.shape == (2, 0, 3)
    history = torch.ops.aubench.sinkhorn(cost, a, b, 0.1, 7, 0.0, True)[1]
    assert history.shape == (2, 7, 3)


# ---- custom-op registration -----------------------------------------------------------------


@needs_extension
def test_opcheck():
    sinkhorn_module._register_once()
    cost, a, b = make_problem(3, 4, seed=0)
    grad_inputs = [t.clone().requires_grad_() for t in (cost[:1], a, b)]  # shared cost
    samples = [
        (cost, a, b, 0.1, 8, 1e-6, False),
        (*grad_inputs, 0.1, 8, 0.0, True),
        (*make_problem(1, 1, seed=1), 0.1, 8, 1e-6, False),
    ]
    for args in samples:
        torch.library.opcheck(torch.ops.aubench.sinkhorn.default, args)
    cost, a, b = make_problem(3, 5, seed=12)
    plan, history, num_iter, _ = torch.ops.aubench.sinkhorn(cost, a, b, 0.1, 6, 0.0, True)
    torch.library.opcheck(
        torch.ops.aubench.sinkhorn_backward.default,
        (torch.randn_like(plan), plan, cost, a, b, history, num_iter, 0.1),
    )


@needs_extension
def test_torch_compile_smoke():
    cost, a, b = make_problem(4, 5, seed=13)

    def loss_fn(c, x, y):
        return (sinkhorn(c, x, y, eps=0.1, max_iter=10, tol=0) * c).sum()

    compiled = torch.compile(loss_fn, backend="aot_eager")
    inputs = [t.clone().requires_grad_() for t in (cost, a, b)]
    value = compiled(*inputs)
    value.backward()
    expected_inputs = [t.clone().requires_grad_() for t in (cost, a, b)]
    expected = loss_fn(*expected_inputs)
    expected.backward()
    torch.testing.assert_close(value, expected)
    for got, want in zip(inputs, expected_inputs):
        torch.testing.assert_close(got.grad, want.grad)


def test_reference_fallback_warns_once(monkeypatch):
    monkeypatch.setattr(_extension, "_loaded", None)
    monkeypatch.setitem(sys.modules, "aubench._C", None)  # makes the import fail
    cost, a, b = make_problem(2, 4, seed=14)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = sinkhorn(cost, a, b, eps=0.1)
        second = sinkhorn(cost, a, b, eps=0.1)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "reference" in messages[0]
    torch.testing.assert_close(first, reference.sinkhorn(cost, a, b, 0.1, 100, 1e-6))
    torch.testing.assert_close(first, second)


# ---- input validation ---------------------------------------------------------------------

_GOOD = dict(eps=0.1, max_iter=5, tol=1e-6)


def _good_inputs():
    cost, a, b = make_problem(2, 3, seed=15, zeros=False)
    return cost, a, b


_CORRUPTIONS = {
    "cost wrong shape": lambda c, a, b: (c[:, :2], a, b),
    "cost 4-d": lambda c, a, b: (c[None], a, b),
    "a 1-d": lambda c, a, b: (c, a[0], b),
    "b shape": lambda c, a, b: (c, a, b[:1]),
    "cost int": lambda c, a, b: (c.long(), a, b),
    "a bool": lambda c, a, b: (c, a > 0, b),
    "mixed dtypes": lambda c, a, b: (c.float(), a, b),
    "cost nan": lambda c, a, b: (c.index_fill(1, torch.tensor([1]), math.nan), a, b),
    "cost inf": lambda c, a, b: (c.index_fill(2, torch.tensor([0]), math.inf), a, b),
    "a negative": lambda c, a, b: (c, a.index_fill(1, torch.tensor([2]), -0.5), b),
    "b nan": lambda c, a, b: (c, a, b.index_fill(1, torch.tensor([0]), math.nan)),
    "b inf": lambda c, a, b: (c, a, b.index_fill(1, torch.tensor([0]), math.inf)),
    "cost list": lambda c, a, b: (c.tolist(), a, b),
}
_BAD_ARGS = [
    {"eps": 0.0}, {"eps": -1.0}, {"eps": math.nan}, {"eps": math.inf}, {"eps": "0.1"},
    {"max_iter": 0}, {"max_iter": -3}, {"max_iter": 2.5}, {"max_iter": True},
    {"tol": -1e-3}, {"tol": math.nan}, {"tol": None},
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corruption=st.sampled_from(sorted(_CORRUPTIONS)), scale=st.floats(0.1, 10.0))
def test_bad_tensors_raise_clear_errors(corruption, scale):
    cost, a, b = _good_inputs()
    bad = _CORRUPTIONS[corruption](cost * scale, a, b)
    with pytest.raises((ValueError, TypeError), match="sinkhorn: "):
        sinkhorn(*bad, **_GOOD)


@settings(max_examples=30, deadline=None)
@given(bad=st.sampled_from(_BAD_ARGS))
def test_bad_arguments_raise_clear_errors(bad):
    with pytest.raises((ValueError, TypeError), match="sinkhorn: "):
        sinkhorn(*_good_inputs(), **{**_GOOD, **bad})


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 4), k=st.integers(1, 6), extra=st.integers(1, 3),
    which=st.sampled_from(["cost", "a", "b"]),
)
def test_random_wrong_shapes_raise(batch, k, extra, which):
    cost, a, b = torch.rand(batch, k, k), torch.rand(batch, k), torch.rand(batch, k)
    if which == "cost":
        cost = torch.rand(batch, k + extra, k)
    elif which == "a":
        a = torch.rand(batch, k + extra)
    else:
        b = torch.rand(batch + extra, k)
    with pytest.raises(ValueError, match="sinkhorn: .* shape"):
        sinkhorn(cost, a, b)


# ---- CUDA ---------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "batch, k, eps, tol",
    [(1, 1, 0.05, 0.0), (64, 12, 0.05, 1e-6), (7, 33, 0.01, 0.0), (5, 64, 0.1, 1e-6),
     (3, 100, 0.05, 1e-6), (4, 20, 1e-3, 0.0)],
)
def test_cuda_matches_cpu(batch, k, eps, tol, dtype):
    assert _extension.have_cuda_kernels()
    cost, a, b = make_problem(batch, k, dtype, seed=k)
    plan, _, num_iter, error = torch.ops.aubench.sinkhorn(cost.cuda(), a.cuda(), b.cuda(), eps,
                                                          40, tol, False)
    expected, _, expected_iter, expected_error = torch.ops.aubench.sinkhorn(cost, a, b, eps, 40,
                                                                            tol, False)
    torch.testing.assert_close(plan.cpu(), expected, **tolerance(dtype))
    torch.testing.assert_close(error.cpu(), expected_error, **tolerance(dtype))
    if dtype == torch.float64:
        assert torch.equal(num_iter.cpu(), expected_iter)
    shared = sinkhorn(cost[0].cuda(), a.cuda(), b.cuda(), eps=eps, max_iter=40, tol=tol)
    torch.testing.assert_close(
        shared.cpu(), reference.sinkhorn(cost[:1], a, b, eps, 40, tol), **tolerance(dtype)
    )


@pytest.mark.cuda
@pytest.mark.parametrize("k", [5, 64, 80])
def test_cuda_gradients_match_cpu(k):
    cost, a, b = make_problem(4, k, seed=k)
    weight = torch.randn(4, k, k, dtype=torch.float64)
    grads = []
    for device in ("cpu", "cuda"):
        inputs = [t.to(device).requires_grad_() for t in (cost, a, b)]
        loss = (sinkhorn(*inputs, eps=0.05, max_iter=25, tol=1e-6) * weight.to(device)).sum()
        grads.append([g.cpu() for g in torch.autograd.grad(loss, inputs)])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


@pytest.mark.cuda
def test_cuda_opcheck():
    sinkhorn_module._register_once()
    cost, a, b = (t.cuda() for t in make_problem(3, 6, seed=16))
    torch.library.opcheck(torch.ops.aubench.sinkhorn.default, (cost, a, b, 0.1, 8, 1e-6, False))
    inputs = [t.clone().requires_grad_() for t in (cost, a, b)]
    torch.library.opcheck(torch.ops.aubench.sinkhorn.default, (*inputs, 0.1, 8, 0.0, True))
