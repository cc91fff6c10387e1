"""FISTA: proximal gradient with Beck-Teboulle momentum, for mask and gate parameters.

Solves ``min_x f(x) + lam * sum_i w_i |x_i|`` (optionally subject to ``x >= 0``)
where ``f`` is the smooth training loss whose gradient autograd provides
(Beck & Teboulle, "A Fast Iterative Shrinkage-Thresholding Algorithm for
Linear Inverse Problems", SIAM J. Imaging Sciences 2009). Each ``step()``::

    x_{k+1} = prox(y_k - lr * grad f(y_k))          prox = soft-threshold by lr*lam*w
    t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2           t_1 = 1
    y_{k+1} = x_{k+1} + ((t_k - 1) / t_{k+1}) (x_{k+1} - x_k)

The parameter tensor holds ``y`` (the point where the next gradient is taken);
the optimizer state keeps ``x`` (the proximal iterate, with exact zeros) and
``t``. Call :meth:`FISTA.commit_iterates` to write ``x`` into the parameters,
e.g. before reading which masks are zero.

With ``nonneg`` the prox is ``max(v - lr*lam*w, 0)`` (l1 plus the indicator of
``x >= 0``): ``x`` is feasible, while ``y`` may dip slightly below zero, as in
FISTA for constrained problems. Weight decay is never applied: the l1 term is
the only penalty.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Union

import torch

from fxprune.errors import FxPruneError

Threshold = Union[float, torch.Tensor]


def soft_threshold(x: torch.Tensor, thr: Threshold) -> torch.Tensor:
    """The proximal operator of ``thr * |.|``: ``sign(x) * max(|x| - thr, 0)``.

    Computed as ``x - clamp(x, -thr, thr)`` so entries with ``|x| <= thr`` become
    exactly ``+0.0`` (no rounding residue, no ``-0.0``).

    Args:
        x: any tensor.
        thr: a non-negative scalar, or a tensor broadcastable to ``x``.

    Returns:
        A new tensor shaped like ``x``.

    Example:
        >>> soft_threshold(torch.tensor([-2.0, -0.5, 0.3, 1.5]), 1.0)
        tensor([-1.0000,  0.0000,  0.0000,  0.5000])
    """
    if not torch.is_tensor(thr):
        return x - x.clamp(-thr, thr)
    thr = thr.to(dtype=x.dtype, device=x.device)
    return x - torch.maximum(torch.minimum(x, thr), -thr)


def nonneg_soft_threshold(x: torch.Tensor, thr: Threshold) -> torch.Tensor:
    """The proximal operator of ``thr * |.|`` plus the indicator of ``x >= 0``: ``max(x - thr, 0)``.

    Example:
        >>> nonneg_soft_threshold(torch.tensor([-2.0, 0.5, 1.5]), 1.0)
        tensor([0.0000, 0.0000, 0.5000])
    """
    if torch.is_tensor(thr):
        thr = thr.to(dtype=x.dtype, device=x.device)
    return (x - thr).clamp_min(0.0)


def next_momentum(t: float) -> float:
    """Beck-Teboulle's momentum sequence: ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``.

    Example:
        >>> next_momentum(1.0) == (1 + 5 ** 0.5) / 2
        True
    """
    return (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0


def momentum_coefficient(t: float, t_next: float) -> float:
    """The extrapolation weight ``(t_k - 1) / t_{k+1}`` (0 on the first step, tends to 1).

    Example:
        >>> momentum_coefficient(1.0, next_momentum(1.0))
        0.0
    """
    return (t - 1.0) / t_next


def momentum_sequence(n: int) -> list[float]:
    """The first ``n`` terms ``t_1 = 1, t_2, ..., t_n`` of the momentum sequence.

    Example:
        >>> [round(t, 4) for t in momentum_sequence(3)]
        [1.0, 1.618, 2.1935]
    """
    ts = [1.0]
    while len(ts) < n:
        ts.append(next_momentum(ts[-1]))
    return ts[:n]


class FISTA(torch.optim.Optimizer):
    """FISTA on a weighted l1 penalty, per parameter group (see the module docstring).

    Args:
        params: parameters or parameter groups. A group may set ``lr``, ``lam``,
            ``nonneg`` and ``weights``: a list aligned with the group's params,
            each entry ``None`` (weight 1) or a non-negative tensor broadcastable
            to that parameter; the threshold is ``lr * lam * weight``.
        lr: step size on the smooth loss (``1/L`` for an ``L``-smooth loss).
        lam: l1 strength.
        nonneg: project the proximal iterate onto ``x >= 0``.
        restart: ``None`` (never), an int ``N`` (reset momentum every ``N``
            steps) or ``"gradient"`` (O'Donoghue & Candes 2015: reset when
            ``<y_k - x_{k+1}, x_{k+1} - x_k> > 0``, per parameter).

    Example:
        >>> mask = torch.nn.Parameter(torch.ones(4))
        >>> opt = FISTA([{"params": [mask], "lam": 0.5}], lr=1.0, nonneg=True)
        >>> (mask * torch.tensor([0.0, 0.0, 1.0, 1.0])).sum().neg().backward()
        >>> opt.step()
        >>> opt.commit_iterates(); mask.data
        tensor([0.5000, 0.5000, 1.5000, 1.5000])
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        lam: float = 0.0,
        *,
        nonneg: bool = False,
        restart: Union[None, int, str] = None,
    ):
        if not lr > 0:
            raise FxPruneError(f"FISTA needs lr > 0, got {lr}",
                               hint="use 1/L, L the Lipschitz constant of the loss's gradient")
        _check_restart(restart)
        defaults = dict(lr=lr, lam=lam, nonneg=nonneg, restart=restart, weights=None)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group, checking ``lam``, ``weights`` and that no weight decay was asked for."""
        if param_group.get("weight_decay"):
            raise FxPruneError(
                "FISTA applies no weight decay; the l1 term is its only penalty",
                hint="drop weight_decay from the mask/gate parameter group",
            )
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.pop("weight_decay", None)
        if group["lam"] < 0:
            raise FxPruneError(f"FISTA needs lam >= 0, got {group['lam']}")
        _check_restart(group["restart"])
        weights = group["weights"]
        if weights is None:
            group["weights"] = [None] * len(group["params"])
        elif len(weights) != len(group["params"]):
            raise FxPruneError(
                f"FISTA group has {len(group['params'])} params but {len(weights)} weights",
                hint="give one weight tensor (or None) per parameter",
            )
        for p, w in zip(group["params"], group["weights"]):
            if w is not None and not _weight_fits(w, p):
                raise FxPruneError(
                    f"FISTA weight of shape {tuple(w.shape)} does not fit param {tuple(p.shape)} or is negative",
                    hint="weights must be non-negative and broadcast to the parameter's shape",
                )

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None) -> Optional[torch.Tensor]:
        """One proximal-gradient step with momentum on every parameter that has a gradient.

        Args:
            closure: optional, re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, if a closure was given.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p, w in zip(group["params"], group["weights"]):
                if p.grad is not None:
                    self._step_param(p, w, group)
        return loss

    def _step_param(self, p: torch.Tensor, w: Optional[torch.Tensor], group: dict) -> None:
        state = self.state[p]
        if not state:
            state["x"] = p.detach().clone()
            state["t"] = 1.0
            state["step"] = 0
        thr = group["lr"] * group["lam"]
        if w is not None:
            thr = w.to(device=p.device, dtype=p.dtype) * thr
        prox = nonneg_soft_threshold if group["nonneg"] else soft_threshold
        x_prev, t = state["x"], state["t"]
        x_next = prox(p - group["lr"] * p.grad, thr)
        held = state.get("held")
        if held is not None:
            x_next.masked_fill_(held, 0.0)
        state["step"] += 1
        if _should_restart(group["restart"], state["step"], p, x_next, x_prev):
            t = 1.0
        t_next = next_momentum(t)
        p.copy_(x_next + momentum_coefficient(t, t_next) * (x_next - x_prev))
        if held is not None:
            p.masked_fill_(held, 0.0)
        state["x"], state["t"] = x_next, t_next

    @torch.no_grad()
    def hold_at_zero(self, p: torch.Tensor, where: torch.Tensor) -> None:
        """Set ``p[where]`` to exactly zero and keep it there in every later step.

        Gradual pruning switches structures off during training; held entries stay off
        whatever their gradient says. The set only grows; it is part of the state dict.
        """
        state = self.state[p]
        if not state:
            state["x"], state["t"], state["step"] = p.detach().clone(), 1.0, 0
        where = where.to(device=p.device, dtype=torch.bool)
        state["held"] = where.clone() if state.get("held") is None else state["held"] | where
        p.masked_fill_(state["held"], 0.0)
        state["x"].masked_fill_(state["held"], 0.0)

    def restart(self) -> None:
        """Reset momentum (``t = 1``) and move every parameter to its proximal iterate ``x``."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state:
                    p.data.copy_(state["x"])
                    state["t"] = 1.0

    @torch.no_grad()
    def commit_iterates(self) -> None:
        """Write the proximal iterates ``x`` (exact zeros, feasible) into the parameters.

        Also resets momentum, so training may continue from there.
        """
        self.restart()


def _check_restart(restart) -> None:
    ok = restart is None or restart == "gradient" or (isinstance(restart, int) and restart > 0)
    if not ok:
        raise FxPruneError(f"FISTA restart must be None, a positive int or 'gradient', got {restart!r}")


def _weight_fits(w: torch.Tensor, p: torch.Tensor) -> bool:
    try:
        fits = torch.broadcast_shapes(w.shape, p.shape) == p.shape
    except RuntimeError:
        return False
    return fits and not bool((w < 0).any())


def _should_restart(restart, step: int, y: torch.Tensor, x_next: torch.Tensor, x_prev: torch.Tensor) -> bool:
    if restart is None:
        return False
    if restart == "gradient":
        return torch.dot((y - x_next).flatten(), (x_next - x_prev).flatten()).item() > 0
    return step % restart == 0
