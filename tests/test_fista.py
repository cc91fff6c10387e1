"""FISTA: the proximal step, Beck-Teboulle's momentum, lasso solutions, state round trip."""

import functools
import io
import math

import pytest
import torch

from fxprune.errors import FxPruneError
from fxprune.methods.fista import (
    FISTA,
    momentum_coefficient,
    momentum_sequence,
    next_momentum,
    nonneg_soft_threshold,
    soft_threshold,
)


def lasso_problem(m=15, n=30, seed=2):
    """An under-determined lasso (not strongly convex), where momentum matters."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=gen, dtype=torch.float64)
    b = torch.randn(m, generator=gen, dtype=torch.float64)
    return a, b


def run_fista(a, b, lam, steps, lr=None, x0=None, **kwargs):
    """Minimise 1/2||Ax - b||^2 + lam ||x||_1 with the optimizer and autograd; returns x_k."""
    lr = lr if lr is not None else 1.0 / torch.linalg.matrix_norm(a, ord=2).item() ** 2
    x = torch.nn.Parameter(torch.zeros(a.shape[1], dtype=a.dtype) if x0 is None else x0.clone())
    opt = FISTA([x], lr=lr, lam=lam, **kwargs)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (a @ x - b).pow(2).sum()).backward()
        opt.step()
    opt.commit_iterates()
    return x.detach()


@functools.lru_cache(maxsize=None)
def lasso_solution(seed, lam, steps=5000):
    """The lasso minimiser by a long ISTA run (converged to machine precision for these problems)."""
    a, b = lasso_problem(seed=seed)
    return ista_reference(a, b, lam, steps)


def ista_reference(a, b, lam, steps):
    lr = 1.0 / torch.linalg.matrix_norm(a, ord=2).item() ** 2
    x = torch.zeros(a.shape[1], dtype=a.dtype)
    for _ in range(steps):
        x = soft_threshold(x - lr * a.T @ (a @ x - b), lr * lam)
    return x


def test_soft_threshold_gives_exact_zeros_and_shrinks_the_rest():
    x = torch.tensor([-3.0, -1.0, -0.25, 0.0, 0.25, 1.0, 3.0, 1e-30])
    out = soft_threshold(x, 1.0)
    assert out.tolist() == [-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0]
    assert not torch.signbit(out[1:6]).any(), "zeros must be +0.0, not -0.0"


def test_soft_threshold_with_a_tensor_threshold_is_elementwise():
    x = torch.tensor([2.0, 2.0, -2.0])
    assert soft_threshold(x, torch.tensor([0.5, 3.0, 0.0])).tolist() == [1.5, 0.0, -2.0]
    assert nonneg_soft_threshold(torch.tensor([-2.0, 0.5, 1.5]), 1.0).tolist() == [0.0, 0.0, 0.5]


def test_momentum_sequence_is_beck_teboulles():
    ts = momentum_sequence(50)
    assert ts[0] == 1.0 and ts[1] == pytest.approx((1 + math.sqrt(5)) / 2)
    for k, (t, t_next) in enumerate(zip(ts, ts[1:]), start=1):
        assert t_next == pytest.approx((1 + math.sqrt(1 + 4 * t * t)) / 2)
        assert t_next * t_next - t_next == pytest.approx(t * t)  # the identity the O(1/k^2) proof uses
        assert t >= (k + 1) / 2
    assert momentum_coefficient(1.0, next_momentum(1.0)) == 0.0


def test_first_step_is_a_plain_proximal_gradient_step():
    x = torch.nn.Parameter(torch.tensor([1.0, -0.2, 0.05]))
    opt = FISTA([x], lr=0.5, lam=0.2)
    x.grad = torch.tensor([1.0, 0.0, 0.0])
    opt.step()
    assert x.detach().tolist() == pytest.approx([0.4, -0.1, 0.0])
    assert x[2].item() == 0.0


def test_lasso_with_orthogonal_a_reaches_the_closed_form():
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    a, b, lam = 2.0 * q, torch.linspace(-3, 3, 8, dtype=torch.float64), 1.0
    # A = 2Q: minimiser is soft_threshold(A^T b / 4, lam / 4); lr below 1/L makes it take many steps
    expected = soft_threshold(a.T @ b / 4.0, lam / 4.0)
    x = run_fista(a, b, lam, steps=300, lr=0.05)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
    assert (x[expected == 0] == 0).all()


def test_lasso_matches_a_long_ista_run():
    a, b = lasso_problem()
    lam = 1.0
    reference = lasso_solution(2, lam)
    grad = a.T @ (a @ reference - b)  # optimality: grad = -lam sign(x) on the support, |grad| <= lam off it
    support = reference != 0
    assert 0 < support.sum() < len(reference)
    torch.testing.assert_close(grad[support], -lam * reference[support].sign(), atol=1e-8, rtol=0)
    assert (grad[~support].abs() <= lam + 1e-8).all()
    x = run_fista(a, b, lam, steps=800)
    torch.testing.assert_close(x, reference, atol=1e-5, rtol=0)
    assert torch.equal(x == 0, reference == 0)


@pytest.mark.parametrize("restart", [25, "gradient"])
def test_restarted_fista_also_solves_the_lasso(restart):
    a, b = lasso_problem()
    torch.testing.assert_close(run_fista(a, b, 1.0, steps=800, restart=restart), lasso_solution(2, 1.0),
                               atol=1e-5, rtol=0)


def test_weighted_l1_uses_the_per_element_weight():
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    b = q @ torch.tensor([2.0, 2.0, -2.0, 0.5], dtype=torch.float64)  # so that Q^T b = [2, 2, -2, 0.5]
    w = torch.tensor([0.0, 1.0, 3.0, 1.0], dtype=torch.float64)
    x = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = FISTA([{"params": [x], "lam": 1.0, "weights": [w]}], lr=0.1)
    for _ in range(400):
        opt.zero_grad()
        (0.5 * (q @ x - b).pow(2).sum()).backward()
        opt.step()
    opt.commit_iterates()
    torch.testing.assert_close(x.detach(), torch.tensor([2.0, 1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-5, rtol=0)


def test_nonneg_group_keeps_the_iterate_non_negative():
    a, b = lasso_problem(seed=4)
    x = run_fista(a, b, 0.5, steps=500, nonneg=True)
    assert (x >= 0).all() and (x == 0).any()
    grad = a.T @ (a @ x - b)  # KKT of min f + lam|x| s.t. x >= 0: grad = -lam on x > 0, grad >= -lam at 0
    torch.testing.assert_close(grad[x > 0], torch.full_like(grad[x > 0], -0.5), atol=1e-5, rtol=0)
    assert (grad[x == 0] >= -0.5 - 1e-6).all()


def _two_group_problem(seed=0):
    torch.manual_seed(seed)
    p1, p2 = torch.nn.Parameter(torch.randn(6)), torch.nn.Parameter(torch.rand(3, 2))
    groups = [
        {"params": [p1], "lam": 0.3},
        {"params": [p2], "lam": 0.1, "nonneg": True, "weights": [torch.tensor([1.0, 2.0])], "lr": 0.05},
    ]
    return [p1, p2], groups


def _steps(params, opt, n):
    target = torch.linspace(-1, 1, 12)
    for _ in range(n):
        opt.zero_grad()
        (torch.cat([p.flatten() for p in params]) - target).pow(2).sum().backward()
        opt.step()


def test_state_dict_round_trip_continues_identically():
    params, groups = _two_group_problem()
    opt = FISTA(groups, lr=0.1, restart=7)
    _steps(params, opt, 5)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh_params, fresh_groups = _two_group_problem(seed=99)  # different values, same structure
    with torch.no_grad():
        for f, p in zip(fresh_params, params):
            f.copy_(p)
    fresh = FISTA(fresh_groups, lr=0.1, restart=7)
    fresh.load_state_dict(saved)
    _steps(params, opt, 6)
    _steps(fresh_params, fresh, 6)
    for f, p in zip(fresh_params, params):
        assert torch.equal(f, p)
    assert fresh.state[fresh_params[0]]["t"] == opt.state[params[0]]["t"]


def test_weight_decay_is_refused():
    with pytest.raises(FxPruneError, match="no weight decay"):
        FISTA([{"params": [torch.nn.Parameter(torch.ones(2))], "weight_decay": 1e-4}], lr=0.1)


def test_mismatched_weights_are_refused_with_their_shapes():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(FxPruneError, match=r"shape \(2,\) does not fit param \(3,\)"):
        FISTA([{"params": [p], "weights": [torch.ones(2)]}], lr=0.1)
    with pytest.raises(FxPruneError, match="1 params but 2 weights"):
        FISTA([{"params": [p], "weights": [None, None]}], lr=0.1)


def test_held_entries_stay_at_exact_zero_and_survive_a_state_dict_round_trip():
    params, groups = _two_group_problem()
    opt = FISTA(groups, lr=0.1)
    _steps(params, opt, 3)
    opt.hold_at_zero(params[0], torch.tensor([True, False, True, False, False, False]).view_as(params[0]))
    _steps(params, opt, 5)  # the loss pulls every entry towards a non-zero target
    opt.commit_iterates()
    flat = params[0].detach().flatten()
    assert flat[0] == 0 and flat[2] == 0 and bool((flat[[1, 3]] != 0).all())  # 5 is within lam of its target
    fresh = FISTA(_two_group_problem()[1], lr=0.1)
    fresh.load_state_dict(opt.state_dict())
    assert torch.equal(fresh.state[fresh.param_groups[0]["params"][0]]["held"], opt.state[params[0]]["held"])
