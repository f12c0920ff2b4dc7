"""Batched, per-problem independent L-BFGS (and Adam) for latent optimisation (paper Sec. 3.2).

The paper inverts each image by minimising its own reconstruction objective with L-BFGS
(the official code: a full-batch L-BFGS with a weak-Wolfe line search, history 10, at most
10 line-search evaluations per step, initial trial step 1). Inverting a dataset one image
at a time leaves a GPU idle; summing the images' losses into one ``torch.optim.LBFGS``
problem is not the same algorithm, because curvature pairs, step length and termination
would be shared across unrelated images.

:func:`lbfgs_minimize` runs N independent L-BFGS problems in lock step *by function
evaluation*, not by iteration. Every problem keeps its own curvature history (a ring
buffer of ``history_size`` pairs), its own scaling ``H_diag``, its own bracketing weak-Wolfe
line search with its own trial step, and its own termination. One batched call of the
objective evaluates every still-running problem at its own trial point; since the losses
are independent, the gradient of their sum with respect to problem i's variables is
problem i's own gradient. Problems that have finished are left out of later calls.

Every per-problem quantity is computed row-wise (element-wise operations and reductions
over the last axis only), so a problem's iterates do not depend on its batch-mates; the
tests check this to 1e-10 in float64.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ganviews.core.errors import ConfigError

log = logging.getLogger(__name__)

#: ``fn(x [M, D], index [M]) -> (loss [M], grad [M, D])``: the objective of the problems
#: ``index`` (rows of the full batch) evaluated at ``x``; row j of the outputs belongs to
#: problem ``index[j]`` only.
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Status(enum.IntEnum):
    """Why a problem stopped (``MinimizeResult.status``)."""

    RUNNING = 0  # never returned: every problem ends in one of the states below
    MAX_STEPS = 1  # used its step budget
    GRAD_TOL = 2  # max |gradient| ≤ tolerance_grad
    CHANGE_TOL = 3  # |Δloss| or max |Δx| of the last step ≤ tolerance_change
    LINE_SEARCH_FAILED = 4  # no acceptable step even along steepest descent
    NONFINITE = 5  # loss or gradient at the starting point is NaN/inf


@dataclass(frozen=True)
class LBFGSConfig:
    """Settings of the per-problem L-BFGS; defaults follow the official implementation."""

    history_size: int = 10  # curvature pairs (s, y) kept per problem
    max_evals: int = 10  # objective evaluations per line search at most (official max_ls=10)
    initial_step: float = 1.0  # first trial step length of every line search (official lr=1)
    c1: float = 1e-4  # sufficient-decrease (Armijo) constant
    c2: float = 0.9  # weak-Wolfe curvature constant, c1 < c2 < 1
    extrapolation: float = 2.0  # growth factor of the trial step while no upper bracket exists
    curvature_eps: float = 1e-2  # store a pair only if yᵀs > curvature_eps · sᵀBs
    tolerance_grad: float = 1e-7  # stop when max |g| ≤ this
    tolerance_change: float = 1e-9  # stop when |ΔF| or max |Δx| of a step ≤ this

    def __post_init__(self) -> None:
        checks = [
            ("history_size", self.history_size >= 1, "an integer ≥ 1"),
            ("max_evals", self.max_evals >= 1, "an integer ≥ 1"),
            ("initial_step", self.initial_step > 0, "> 0"),
            ("c1", 0 < self.c1 < 1, "in (0, 1)"),
            ("c2", self.c1 < self.c2 < 1, "in (c1, 1)"),
            ("extrapolation", self.extrapolation > 1, "> 1"),
            ("curvature_eps", self.curvature_eps > 0, "> 0"),
            ("tolerance_grad", self.tolerance_grad >= 0, "≥ 0"),
            ("tolerance_change", self.tolerance_change >= 0, "≥ 0"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"LBFGSConfig.{name}={getattr(self, name)!r}: must be {allowed}")


@dataclass(frozen=True)
class AdamConfig:
    """Per-problem Adam (element-wise, hence independent across problems by construction)."""

    lr: float = 0.01  # step size
    beta1: float = 0.9  # first-moment decay
    beta2: float = 0.999  # second-moment decay
    eps: float = 1e-8  # denominator guard

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"AdamConfig.lr={self.lr!r}: must be > 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"AdamConfig.{name}={getattr(self, name)!r}: must be in [0, 1)")


@dataclass
class MinimizeResult:
    """Per-problem outcome of :func:`lbfgs_minimize` / :func:`adam_minimize`."""

    x: torch.Tensor  # [N, D] final iterate
    loss: torch.Tensor  # [N] objective at x
    grad: torch.Tensor  # [N, D] gradient at x
    iterations: torch.Tensor  # [N] int64 optimiser steps taken (a failed line search counts)
    evaluations: torch.Tensor  # [N] int64 objective evaluations spent on this problem
    status: torch.Tensor  # [N] int64 :class:`Status` codes
    batch_calls: int  # how many batched objective calls were made in total

    def status_counts(self) -> dict[str, int]:
        """``{"MAX_STEPS": 3, ...}`` over the batch, for logging."""
        return {s.name: int((self.status == s).sum()) for s in Status if (self.status == s).any()}


def _check_x0(x0: torch.Tensor, steps: int) -> None:
    if x0.ndim != 2:
        raise ValueError(f"x0: expected a [N, D] tensor, got shape {list(x0.shape)}")
    if not x0.is_floating_point():
        raise ValueError(f"x0: expected a floating-point tensor, got dtype {x0.dtype}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps={steps!r}: must be an integer ≥ 0")


def _evaluate(
    fn: Objective, x: torch.Tensor, index: torch.Tensor, num: int
) -> tuple[torch.Tensor, torch.Tensor]:
    loss, grad = fn(x, index)
    if loss.shape != (num,) or grad.shape != x.shape:
        raise ValueError(
            f"objective returned loss {list(loss.shape)} and grad {list(grad.shape)}; "
            f"expected [{num}] and {list(x.shape)}"
        )
    return loss.detach(), grad.detach()


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product ``[N, D], [N, D] -> [N]`` (a reduction over the last axis only)."""
    return (a * b).sum(dim=-1)


class _History:
    """Ring buffers of curvature pairs, one per problem, and the two-loop recursion."""

    def __init__(self, num: int, dim: int, size: int, like: torch.Tensor) -> None:
        self.size = size
        self.s = like.new_zeros(num, size, dim)  # [N, m, D]
        self.y = like.new_zeros(num, size, dim)  # [N, m, D]
        self.rho = like.new_zeros(num, size)  # [N, m]  1 / yᵀs
        self.count = torch.zeros(num, dtype=torch.long, device=like.device)  # [N] pairs stored
        self.head = torch.zeros(num, dtype=torch.long, device=like.device)  # [N] next slot
        self.h_diag = like.new_ones(num)  # [N] initial inverse-Hessian scale yᵀs / yᵀy
        self.rows = torch.arange(num, device=like.device)

    def push(self, mask: torch.Tensor, s: torch.Tensor, y: torch.Tensor, ys: torch.Tensor) -> None:
        """Store (s, y) for the problems in ``mask`` (bool [N])."""
        rows = self.rows[mask]
        slot = self.head[mask]
        self.s[rows, slot] = s[mask]
        self.y[rows, slot] = y[mask]
        self.rho[rows, slot] = 1.0 / ys[mask]
        self.h_diag[mask] = ys[mask] / _dot(y[mask], y[mask])
        self.head[mask] = (slot + 1) % self.size
        self.count[mask] = torch.clamp(self.count[mask] + 1, max=self.size)

    def clear(self, mask: torch.Tensor) -> None:
        """Forget the pairs of the problems in ``mask``; their scale ``h_diag`` is kept."""
        self.count[mask] = 0
        self.head[mask] = 0

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        """``-H g`` per problem, H the L-BFGS inverse-Hessian estimate (two-loop recursion)."""
        q = g.clone()  # [N, D]
        depth = int(self.count.max()) if self.count.numel() else 0
        coeffs = []
        for k in range(depth):  # newest pair first
            valid = k < self.count  # [N]
            slot = (self.head - 1 - k) % self.size
            s_k, y_k, rho_k = (
                self.s[self.rows, slot],
                self.y[self.rows, slot],
                self.rho[self.rows, slot],
            )
            a = torch.where(valid, rho_k * _dot(s_k, q), torch.zeros_like(rho_k))  # [N]
            q = q - a[:, None] * y_k
            coeffs.append(a)
        r = self.h_diag[:, None] * q  # [N, D]
        for k in reversed(range(depth)):  # oldest pair first
            valid = k < self.count
            slot = (self.head - 1 - k) % self.size
            s_k, y_k, rho_k = (
                self.s[self.rows, slot],
                self.y[self.rows, slot],
                self.rho[self.rows, slot],
            )
            b = torch.where(valid, rho_k * _dot(y_k, r), torch.zeros_like(rho_k))
            r = r + (coeffs[k] - b)[:, None] * s_k
        return -r


def lbfgs_minimize(
    fn: Objective,
    x0: torch.Tensor,
    *,
    steps: int,
    config: LBFGSConfig = LBFGSConfig(),
) -> MinimizeResult:
    """Minimise N independent objectives from ``x0`` [N, D], at most ``steps`` steps each.

    Each step: direction ``d = -H g`` from the problem's own history (steepest descent when
    the history is empty or ``d`` is not a descent direction), then a bracketing weak-Wolfe
    line search starting at ``t = initial_step``: while no upper bracket exists the trial
    grows by ``extrapolation``; afterwards the next trial minimises the quadratic through
    (α, F_α, F'_α) and (β, F_β), safeguarded to the middle 80 % of [α, β] (bisection when
    that quadratic is not convex or F_β is not finite). A step is accepted when
    F(x + t d) ≤ F + c1·t·gᵀd and ∇F(x + t d)ᵀd ≥ c2·gᵀd. The pair (s, y) is stored only
    if yᵀs > curvature_eps · sᵀBs (B the current quasi-Newton Hessian, Bs = -t g).
    A line search that has not succeeded after ``max_evals`` evaluations takes its best
    Armijo point if it found one (the official code would return to x instead); if not, x
    stays, the history is cleared and the next step goes along scaled steepest descent —
    or, with an empty history already, it resumes from the trial step the search would
    have tried next; ``LINE_SEARCH_FAILED`` once that step no longer moves x. Loss and
    gradient are evaluated together: every evaluation is one forward and one backward pass.
    """
    _check_x0(x0, steps)
    num, dim = x0.shape
    device = x0.device
    cfg = config
    rows = torch.arange(num, device=device)
    x = x0.detach().clone()  # [N, D]
    loss, grad = _evaluate(fn, x, rows, num)  # [N], [N, D]
    calls = 1
    evaluations = torch.ones(num, dtype=torch.long, device=device)
    iterations = torch.zeros(num, dtype=torch.long, device=device)
    status = torch.zeros(num, dtype=torch.long, device=device)

    finite = torch.isfinite(loss) & torch.isfinite(grad).all(dim=-1)
    status[~finite] = Status.NONFINITE
    status[finite & (grad.abs().amax(dim=-1) <= cfg.tolerance_grad)] = Status.GRAD_TOL
    if steps == 0:
        status[status == Status.RUNNING] = Status.MAX_STEPS

    hist = _History(num, dim, cfg.history_size, x)
    inf = torch.full_like(loss, math.inf)
    nan = torch.full_like(loss, math.nan)
    # Per-problem line-search state (meaningful for running problems only).
    d = torch.zeros_like(x)  # [N, D] search direction
    gtd = torch.zeros_like(loss)  # [N] directional derivative gᵀd at x
    t = torch.zeros_like(loss)  # [N] current trial step
    lo, lo_f, lo_g = torch.zeros_like(loss), loss.clone(), torch.zeros_like(loss)  # α, F(α), F'(α)
    lo_grad = grad.clone()  # [N, D] gradient at x + α d (the best Armijo point so far)
    hi, hi_f = inf.clone(), nan.clone()  # β, F(β)
    ls_evals = torch.zeros(num, dtype=torch.long, device=device)

    def start_step(mask: torch.Tensor, first_trial: torch.Tensor) -> None:
        """New direction and fresh line search for the problems in ``mask``."""
        new_d = hist.direction(grad)  # [N, D]
        new_gtd = _dot(grad, new_d)
        bad = mask & ~(new_gtd < 0)  # not a descent direction (or NaN): scaled steepest descent
        if bool(bad.any()):
            hist.clear(bad)
            sd = -hist.h_diag[:, None] * grad
            new_d = torch.where(bad[:, None], sd, new_d)
            new_gtd = torch.where(bad, _dot(grad, sd), new_gtd)
        d.copy_(torch.where(mask[:, None], new_d, d))
        gtd.copy_(torch.where(mask, new_gtd, gtd))
        t.copy_(torch.where(mask, first_trial, t))
        lo.masked_fill_(mask, 0.0)
        lo_f.copy_(torch.where(mask, loss, lo_f))
        lo_g.copy_(torch.where(mask, gtd, lo_g))
        lo_grad.copy_(torch.where(mask[:, None], grad, lo_grad))
        hi.masked_fill_(mask, math.inf)
        hi_f.masked_fill_(mask, math.nan)
        ls_evals.masked_fill_(mask, 0)

    initial = torch.full_like(loss, cfg.initial_step)
    running = status == Status.RUNNING
    if bool(running.any()):
        start_step(running, initial)

    while bool(running.any()):
        active = rows[running]  # [M]
        x_trial = x + t[:, None] * d  # [N, D] (only running rows are evaluated)
        loss_a, grad_a = _evaluate(fn, x_trial[active], active, int(active.numel()))
        calls += 1
        new_loss = nan.clone()
        new_loss[active] = loss_a
        new_grad = grad.clone()
        new_grad[active] = grad_a
        evaluations += running.long()
        ls_evals += running.long()

        legal = torch.isfinite(new_loss) & torch.isfinite(new_grad).all(dim=-1)
        armijo = legal & (new_loss <= loss + cfg.c1 * t * gtd)
        new_gtd = _dot(new_grad, d)
        curvature = new_gtd >= cfg.c2 * gtd
        accept = running & armijo & curvature
        too_short = running & armijo & ~curvature
        too_long = running & ~armijo

        # Update the bracket [α, β] and choose the next trial step.
        lo.copy_(torch.where(too_short, t, lo))
        lo_f.copy_(torch.where(too_short, new_loss, lo_f))
        lo_g.copy_(torch.where(too_short, new_gtd, lo_g))
        lo_grad.copy_(torch.where(too_short[:, None], new_grad, lo_grad))
        hi.copy_(torch.where(too_long, t, hi))
        hi_f.copy_(torch.where(too_long, torch.where(legal, new_loss, nan), hi_f))
        width = hi - lo
        curv = (hi_f - lo_f - lo_g * width) / (width * width)  # quadratic coefficient
        t_quad = lo - lo_g / (2.0 * curv)
        quad_ok = torch.isfinite(hi_f) & (curv > 0) & torch.isfinite(t_quad)
        t_interp = torch.where(
            quad_ok,
            torch.minimum(torch.maximum(t_quad, lo + 0.1 * width), hi - 0.1 * width),
            lo + 0.5 * width,
        )
        t_next = torch.where(torch.isinf(hi), t * cfg.extrapolation, t_interp)
        unfinished = (too_short | too_long) & (ls_evals >= cfg.max_evals)
        t.copy_(torch.where((too_short | too_long) & ~unfinished, t_next, t))
        # An unfinished search that found an Armijo point takes it (curvature unproven);
        # one that found none leaves x where it was.
        partial = unfinished & (lo > 0)
        failed = unfinished & ~partial

        restart = torch.zeros_like(running)
        first_trial = initial.clone()
        take = accept | partial
        if bool(take.any()):
            step = torch.where(accept, t, lo)  # [N]
            x_new = torch.where(take[:, None], x + step[:, None] * d, x)  # the evaluated points
            g_new = torch.where(accept[:, None], new_grad, lo_grad)
            f_new = torch.where(accept, new_loss, lo_f)
            s = x_new - x  # [N, D]
            y = g_new - grad  # [N, D]
            ys = _dot(y, s)
            s_bs = -step * step * gtd  # sᵀBs with Bs = -t g (the direction solves B d = -g)
            hist.push(take & (ys > cfg.curvature_eps * s_bs), s, y, ys)
            loss_change = (f_new - loss).abs()
            x.copy_(x_new)
            loss.copy_(torch.where(take, f_new, loss))
            grad.copy_(torch.where(take[:, None], g_new, grad))
            iterations += take.long()
            small_grad = take & (grad.abs().amax(dim=-1) <= cfg.tolerance_grad)
            small_change = (
                take
                & ~small_grad
                & (
                    (loss_change <= cfg.tolerance_change)
                    | (s.abs().amax(dim=-1) <= cfg.tolerance_change)
                )
            )
            status[small_grad] = Status.GRAD_TOL
            status[small_change] = Status.CHANGE_TOL
            restart |= take & ~small_grad & ~small_change

        if bool(failed.any()):
            # With a history: forget it and retry along scaled steepest descent from the
            # initial trial step. Without one: go on from the step the search would have
            # tried next, until that step no longer moves x.
            iterations += failed.long()
            had_history = failed & (hist.count > 0)
            hist.clear(had_history)
            continue_search = failed & ~had_history
            degenerate = continue_search & (
                ((x + t_next[:, None] * d) == x).all(dim=-1)
                | ((t_next[:, None] * d).abs().amax(dim=-1) <= cfg.tolerance_change)
            )
            status[degenerate] = Status.LINE_SEARCH_FAILED
            first_trial = torch.where(continue_search, t_next, first_trial)
            restart |= failed & ~degenerate

        out_of_steps = restart & (iterations >= steps)
        status[out_of_steps] = Status.MAX_STEPS
        restart &= ~out_of_steps
        if bool(restart.any()):
            start_step(restart, first_trial)
        running = status == Status.RUNNING

    log.debug("L-BFGS: %d problems, %d batched calls", num, calls)
    return MinimizeResult(
        x=x,
        loss=loss,
        grad=grad,
        iterations=iterations,
        evaluations=evaluations,
        status=status,
        batch_calls=calls,
    )


def adam_minimize(
    fn: Objective,
    x0: torch.Tensor,
    *,
    steps: int,
    config: AdamConfig = AdamConfig(),
) -> MinimizeResult:
    """``steps`` Adam updates per problem, then one evaluation at the final iterate.

    Adam's update is element-wise, so problems are independent by construction; every
    problem runs exactly ``steps`` updates (status ``MAX_STEPS``; ``NONFINITE`` stops a
    problem at the iterate where its loss or gradient became NaN/inf).
    """
    _check_x0(x0, steps)
    num, _ = x0.shape
    device = x0.device
    rows = torch.arange(num, device=device)
    x = x0.detach().clone()  # [N, D]
    m1 = torch.zeros_like(x)  # [N, D]
    m2 = torch.zeros_like(x)  # [N, D]
    status = torch.zeros(num, dtype=torch.long, device=device)
    iterations = torch.zeros(num, dtype=torch.long, device=device)
    evaluations = torch.zeros(num, dtype=torch.long, device=device)
    calls = 0
    for step in range(1, steps + 1):
        running = status == Status.RUNNING
        if not bool(running.any()):
            break
        active = rows[running]
        loss_a, grad_a = _evaluate(fn, x[active], active, int(active.numel()))
        calls += 1
        evaluations[active] += 1
        bad = ~(torch.isfinite(loss_a) & torch.isfinite(grad_a).all(dim=-1))
        status[active[bad]] = Status.NONFINITE
        ok = active[~bad]
        g = grad_a[~bad]
        m1[ok] = config.beta1 * m1[ok] + (1 - config.beta1) * g
        m2[ok] = config.beta2 * m2[ok] + (1 - config.beta2) * g * g
        m_hat = m1[ok] / (1 - config.beta1**step)
        v_hat = m2[ok] / (1 - config.beta2**step)
        x[ok] = x[ok] - config.lr * m_hat / (v_hat.sqrt() + config.eps)
        iterations[ok] += 1
    status[status == Status.RUNNING] = Status.MAX_STEPS
    loss, grad = _evaluate(fn, x, rows, num)
    calls += 1
    evaluations += 1
    return MinimizeResult(
        x=x,
        loss=loss,
        grad=grad,
        iterations=iterations,
        evaluations=evaluations,
        status=status,
        batch_calls=calls,
    )
