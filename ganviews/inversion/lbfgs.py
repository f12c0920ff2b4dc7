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
    PROGRESS_TOL = 6  # opt-in: relative loss gain over progress_window steps ≤ progress_tol


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
    progress_tol: float = 0.0  # opt-in (0 = off): stop when a window's relative gain ≤ this
    progress_window: int = 50  # steps per progress check

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
            ("progress_tol", 0 <= self.progress_tol < 1, "in [0, 1)"),
            ("progress_window", self.progress_window >= 1, "an integer ≥ 1"),
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


#: Names of the per-slot state tensors, ``[B]`` or ``[B, D]`` (history ``[B, m(, D)]``).
_ROW_KEYS = ("x", "loss", "grad", "d", "gtd", "t", "lo", "lo_f", "lo_g", "lo_grad", "hi", "hi_f")
_COUNT_KEYS = ("ls_evals", "iterations", "evaluations", "status", "fresh", "since_check")
_HIST_KEYS = ("hs", "hy", "rho", "count", "head", "h_diag", "ckpt_loss")

State = dict[str, torch.Tensor]


def _fresh_state(x0: torch.Tensor, history_size: int) -> State:
    """Slots holding problems that start at ``x0`` [B, D]; their first evaluation is at x0."""
    num, dim = x0.shape
    like = x0.new_zeros(num)
    long = torch.zeros(num, dtype=torch.long, device=x0.device)
    st = {k: like.clone() for k in _ROW_KEYS if k not in ("x", "grad", "d", "lo_grad")}
    st.update({k: x0.new_zeros(num, dim) for k in ("grad", "d", "lo_grad")})
    st["x"] = x0.detach().clone()
    st.update({k: long.clone() for k in _COUNT_KEYS})
    st["fresh"] = torch.ones(num, dtype=torch.bool, device=x0.device)
    st["hs"] = x0.new_zeros(num, history_size, dim)
    st["hy"] = x0.new_zeros(num, history_size, dim)
    st["rho"] = x0.new_zeros(num, history_size)
    st["count"], st["head"] = long.clone(), long.clone()
    st["h_diag"] = x0.new_ones(num)
    st["ckpt_loss"] = like.clone()
    return st


def _trial_point(st: State) -> torch.Tensor:
    """Where each slot is evaluated next: x for a fresh (or finished) slot, else x + t·d."""
    moving = (st["status"] == int(Status.RUNNING)) & ~st["fresh"]
    return torch.where(moving[:, None], st["x"] + st["t"][:, None] * st["d"], st["x"])  # [B, D]


def _direction(st: State, g: torch.Tensor) -> torch.Tensor:
    """``-H g`` per slot by the two-loop recursion over all m ring slots (unused ones masked)."""
    size = st["hs"].shape[1]
    rows = torch.arange(g.shape[0], device=g.device)
    q = g.clone()  # [B, D]
    coeffs = []
    for k in range(size):  # newest pair first
        slot = (st["head"] - 1 - k) % size
        s_k, y_k, rho_k = st["hs"][rows, slot], st["hy"][rows, slot], st["rho"][rows, slot]
        a = torch.where(k < st["count"], rho_k * _dot(s_k, q), torch.zeros_like(rho_k))  # [B]
        q = q - a[:, None] * y_k
        coeffs.append(a)
    r = st["h_diag"][:, None] * q  # [B, D]
    for k in reversed(range(size)):  # oldest pair first
        slot = (st["head"] - 1 - k) % size
        s_k, y_k, rho_k = st["hs"][rows, slot], st["hy"][rows, slot], st["rho"][rows, slot]
        b = torch.where(k < st["count"], rho_k * _dot(y_k, r), torch.zeros_like(rho_k))
        r = r + (coeffs[k] - b)[:, None] * s_k
    return -r


def _push(st: State, mask: torch.Tensor, s: torch.Tensor, y: torch.Tensor, ys: torch.Tensor):
    """Store the pair (s, y) in the ring of the slots in ``mask`` (bool [B]), fixed shapes."""
    size = st["hs"].shape[1]
    at = (torch.arange(size, device=s.device)[None, :] == st["head"][:, None]) & mask[:, None]
    st["hs"] = torch.where(at[:, :, None], s[:, None, :], st["hs"])  # [B, m, D]
    st["hy"] = torch.where(at[:, :, None], y[:, None, :], st["hy"])
    st["rho"] = torch.where(at, (1.0 / ys)[:, None], st["rho"])  # [B, m]
    st["h_diag"] = torch.where(mask, ys / _dot(y, y), st["h_diag"])
    st["head"] = torch.where(mask, (st["head"] + 1) % size, st["head"])
    st["count"] = torch.where(mask, torch.clamp(st["count"] + 1, max=size), st["count"])


def _clear(st: State, mask: torch.Tensor) -> None:
    """Forget the pairs of the slots in ``mask``; their scale ``h_diag`` is kept."""
    st["count"] = torch.where(mask, 0, st["count"])
    st["head"] = torch.where(mask, 0, st["head"])


def _start_step(st: State, mask: torch.Tensor, first_trial: torch.Tensor) -> None:
    """New direction and fresh line search for the slots in ``mask``."""
    grad = st["grad"]
    new_d = _direction(st, grad)  # [B, D]
    new_gtd = _dot(grad, new_d)
    bad = mask & ~(new_gtd < 0)  # not a descent direction (or NaN): scaled steepest descent
    _clear(st, bad)
    sd = -st["h_diag"][:, None] * grad
    new_d = torch.where(bad[:, None], sd, new_d)
    new_gtd = torch.where(bad, _dot(grad, sd), new_gtd)
    col = mask[:, None]
    st["d"] = torch.where(col, new_d, st["d"])
    st["gtd"] = torch.where(mask, new_gtd, st["gtd"])
    st["t"] = torch.where(mask, first_trial, st["t"])
    st["lo"] = torch.where(mask, 0.0, st["lo"])
    st["lo_f"] = torch.where(mask, st["loss"], st["lo_f"])
    st["lo_g"] = torch.where(mask, st["gtd"], st["lo_g"])
    st["lo_grad"] = torch.where(col, grad, st["lo_grad"])
    st["hi"] = torch.where(mask, math.inf, st["hi"])
    st["hi_f"] = torch.where(mask, math.nan, st["hi_f"])
    st["ls_evals"] = torch.where(mask, 0, st["ls_evals"])


def make_update(
    config: LBFGSConfig, steps: int
) -> Callable[[State, torch.Tensor, torch.Tensor], State]:
    """The bookkeeping of one batched evaluation: ``update(state, loss [B], grad [B, D])``.

    Pure tensor code with fixed shapes and no host reads (masks and ``torch.where`` instead of
    boolean indexing), so it compiles with ``torch.compile(fullgraph=True)`` and can be
    captured in a CUDA graph. ``loss``/``grad`` are the objective at :func:`_trial_point`.
    """
    cfg = config

    def update(st: State, new_loss: torch.Tensor, new_grad: torch.Tensor) -> State:
        st = dict(st)
        running = st["status"] == int(Status.RUNNING)
        fresh = st["fresh"] & running
        ls = running & ~st["fresh"]  # slots inside a line search
        st["evaluations"] = st["evaluations"] + running.long()

        # A fresh slot's evaluation is its starting point.
        st["loss"] = torch.where(fresh, new_loss, st["loss"])
        st["grad"] = torch.where(fresh[:, None], new_grad, st["grad"])
        finite = torch.isfinite(new_loss) & torch.isfinite(new_grad).all(dim=-1)
        small = new_grad.abs().amax(dim=-1) <= cfg.tolerance_grad
        status = st["status"]
        status = torch.where(fresh & ~finite, int(Status.NONFINITE), status)
        status = torch.where(fresh & finite & small, int(Status.GRAD_TOL), status)
        if steps == 0:
            status = torch.where(fresh & finite & ~small, int(Status.MAX_STEPS), status)
        begin = fresh & (status == int(Status.RUNNING))
        st["ckpt_loss"] = torch.where(fresh, new_loss, st["ckpt_loss"])
        st["fresh"] = torch.zeros_like(st["fresh"])

        # Line-search slots: the evaluation is at x + t·d.
        nan = torch.full_like(new_loss, math.nan)
        new_loss = torch.where(ls, new_loss, nan)
        new_grad = torch.where(ls[:, None], new_grad, st["grad"])
        st["ls_evals"] = st["ls_evals"] + ls.long()
        loss, grad, t, gtd = st["loss"], st["grad"], st["t"], st["gtd"]
        legal = torch.isfinite(new_loss) & torch.isfinite(new_grad).all(dim=-1)
        armijo = legal & (new_loss <= loss + cfg.c1 * t * gtd)
        new_gtd = _dot(new_grad, st["d"])
        curvature = new_gtd >= cfg.c2 * gtd
        accept = ls & armijo & curvature
        too_short = ls & armijo & ~curvature
        too_long = ls & ~armijo

        # Update the bracket [α, β] and choose the next trial step.
        lo = torch.where(too_short, t, st["lo"])
        lo_f = torch.where(too_short, new_loss, st["lo_f"])
        lo_g = torch.where(too_short, new_gtd, st["lo_g"])
        lo_grad = torch.where(too_short[:, None], new_grad, st["lo_grad"])
        hi = torch.where(too_long, t, st["hi"])
        hi_f = torch.where(too_long, torch.where(legal, new_loss, nan), st["hi_f"])
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
        unfinished = (too_short | too_long) & (st["ls_evals"] >= cfg.max_evals)
        st["t"] = torch.where((too_short | too_long) & ~unfinished, t_next, t)
        st.update(lo=lo, lo_f=lo_f, lo_g=lo_g, lo_grad=lo_grad, hi=hi, hi_f=hi_f)
        # An unfinished search that found an Armijo point takes it (curvature unproven);
        # one that found none leaves x where it was.
        partial = unfinished & (lo > 0)
        failed = unfinished & ~partial

        take = accept | partial
        step = torch.where(accept, t, lo)  # [B]
        x = st["x"]
        x_new = torch.where(take[:, None], x + step[:, None] * st["d"], x)  # the evaluated points
        g_new = torch.where(accept[:, None], new_grad, lo_grad)
        f_new = torch.where(accept, new_loss, lo_f)
        s = x_new - x  # [B, D]
        y = g_new - grad  # [B, D]
        ys = _dot(y, s)
        s_bs = -step * step * gtd  # sᵀBs with Bs = -t g (the direction solves B d = -g)
        _push(st, take & (ys > cfg.curvature_eps * s_bs), s, y, ys)
        loss_change = (f_new - loss).abs()
        st["x"] = x_new
        st["loss"] = torch.where(take, f_new, loss)
        st["grad"] = torch.where(take[:, None], g_new, grad)
        iterations = st["iterations"] + take.long()
        small_grad = take & (st["grad"].abs().amax(dim=-1) <= cfg.tolerance_grad)
        small_change = (
            take
            & ~small_grad
            & (
                (loss_change <= cfg.tolerance_change)
                | (s.abs().amax(dim=-1) <= cfg.tolerance_change)
            )
        )
        status = torch.where(small_grad, int(Status.GRAD_TOL), status)
        status = torch.where(small_change, int(Status.CHANGE_TOL), status)
        restart = take & ~small_grad & ~small_change
        if cfg.progress_tol > 0:
            # Opt-in: stop when the last progress_window steps gained < progress_tol (relative).
            st["since_check"] = st["since_check"] + take.long()
            check = restart & (st["since_check"] >= cfg.progress_window)
            ckpt = st["ckpt_loss"]
            stalled = check & (ckpt - st["loss"] <= cfg.progress_tol * ckpt.abs())
            status = torch.where(stalled, int(Status.PROGRESS_TOL), status)
            st["ckpt_loss"] = torch.where(check, st["loss"], ckpt)
            st["since_check"] = torch.where(check, 0, st["since_check"])
            restart = restart & ~stalled

        # A failed search with a history forgets it and retries along scaled steepest descent
        # from the initial trial step; without one it goes on from the step it would have
        # tried next, until that step no longer moves x.
        iterations = iterations + failed.long()
        had_history = failed & (st["count"] > 0)
        _clear(st, had_history)
        continue_search = failed & ~had_history
        degenerate = continue_search & (
            ((x + t_next[:, None] * st["d"]) == x).all(dim=-1)
            | ((t_next[:, None] * st["d"]).abs().amax(dim=-1) <= cfg.tolerance_change)
        )
        status = torch.where(degenerate, int(Status.LINE_SEARCH_FAILED), status)
        initial = torch.full_like(t, cfg.initial_step)
        first_trial = torch.where(continue_search, t_next, initial)
        restart = restart | (failed & ~degenerate)

        out_of_steps = restart & (iterations >= steps)
        status = torch.where(out_of_steps, int(Status.MAX_STEPS), status)
        st["iterations"], st["status"] = iterations, status
        _start_step(st, (restart & ~out_of_steps) | begin, torch.where(begin, initial, first_trial))
        return st

    return update


def lbfgs_minimize(
    fn: Objective,
    x0: torch.Tensor,
    *,
    steps: int,
    config: LBFGSConfig = LBFGSConfig(),
    batch_size: int | None = None,
    compile: bool = False,
    on_finished: Callable[[list[int], MinimizeResult], None] | None = None,
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

    Continuous batching: ``batch_size`` slots (default: all N) are evaluated together at a
    fixed shape; when a slot's problem stops, its result is kept and the slot is refilled
    with the next problem (fresh state), so the batch stays full while problems remain.
    Once none remain, the batch halves whenever at most half of its slots are still busy
    (a few fixed shapes, little wasted work); on the CPU, where a new shape costs nothing,
    every idle slot is dropped at once. ``fn`` always receives the problem ids of the
    slots as ``index``. ``compile``: run the bookkeeping through ``torch.compile``
    (fullgraph; on CUDA with CUDA graphs, ``mode="reduce-overhead"``); the batch then keeps
    its one shape to the end, so nothing is compiled or captured twice. ``on_finished(ids,
    result)``: called as soon as problems stop, with their ids; their rows of ``result`` are
    final (the caller can save them while the others run on).
    """
    _check_x0(x0, steps)
    num, dim = x0.shape
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r}: must be None or an integer ≥ 1")
    width = num if batch_size is None else min(batch_size, num)
    update = make_update(config, steps)
    if compile:
        mode = "reduce-overhead" if x0.device.type == "cuda" else None
        update = torch.compile(update, fullgraph=True, mode=mode)
    out = MinimizeResult(
        x=x0.detach().clone(),
        loss=x0.new_full((num,), math.nan),
        grad=torch.zeros_like(x0),
        iterations=torch.zeros(num, dtype=torch.long, device=x0.device),
        evaluations=torch.zeros(num, dtype=torch.long, device=x0.device),
        status=torch.zeros(num, dtype=torch.long, device=x0.device),
        batch_calls=0,
    )
    if num == 0:
        return out
    item = list(range(width))  # host copy: the problem each slot holds (-1: none)
    slot_item = torch.arange(width, device=x0.device)
    st = _fresh_state(x0[:width], config.history_size)
    queued = width
    while True:
        loss_a, grad_a = _evaluate(fn, _trial_point(st), slot_item, len(item))
        out.batch_calls += 1
        st = update(st, loss_a, grad_a)
        done = (st["status"] != int(Status.RUNNING)).tolist()  # the one host read per evaluation
        ended = [j for j, (d, i) in enumerate(zip(done, item, strict=True)) if d and i >= 0]
        if ended:
            _harvest(out, st, ended, [item[j] for j in ended])
            if on_finished is not None:
                on_finished([item[j] for j in ended], out)
            refill = ended[: num - queued]
            for j in ended[len(refill) :]:
                item[j] = -1
            if refill:
                ids = list(range(queued, queued + len(refill)))
                queued += len(refill)
                _load(st, refill, x0[ids], config.history_size)
                for j, i in zip(refill, ids, strict=True):
                    item[j] = i
            slot_item = torch.tensor([max(i, 0) for i in item], device=x0.device)
            busy = [j for j, i in enumerate(item) if i >= 0]
            if not busy:
                break
            exact = x0.device.type == "cpu"  # new shapes cost nothing on the CPU
            if (
                queued == num
                and not compile
                and len(busy) < len(item)
                and (exact or len(busy) <= len(item) // 2)
            ):
                st, item = _shrink(st, item, busy, exact=exact)
                slot_item = torch.tensor([max(i, 0) for i in item], device=x0.device)
    log.debug("L-BFGS: %d problems in %d slots, %d batched calls", num, width, out.batch_calls)
    return out


def _harvest(out: MinimizeResult, st: State, slots: list[int], items: list[int]) -> None:
    """Copy the results of finished slots into their problems' rows of ``out``."""
    src = torch.tensor(slots, device=st["x"].device)
    dst = torch.tensor(items, device=st["x"].device)
    for name in ("x", "loss", "grad", "iterations", "evaluations", "status"):
        getattr(out, name)[dst] = st[name][src]


def _load(st: State, slots: list[int], x0: torch.Tensor, history_size: int) -> None:
    """Refill ``slots`` with problems starting at ``x0`` [K, D]: every per-slot field fresh."""
    src = torch.tensor(slots, device=x0.device)
    for key, value in _fresh_state(x0, history_size).items():
        st[key] = st[key].index_copy(0, src, value)


def _shrink(
    st: State, item: list[int], busy: list[int], *, exact: bool = False
) -> tuple[State, list[int]]:
    """Halve the batch (repeatedly) once at most half its slots still hold a problem, or
    (``exact``) keep just the busy slots."""
    width = len(item)
    if exact:
        width = len(busy)
    while width > 1 and len(busy) <= width // 2:
        width //= 2
    idle = [j for j, i in enumerate(item) if i < 0]
    keep = busy + idle[: width - len(busy)]
    rows = torch.tensor(keep, device=st["x"].device)
    return {k: v.index_select(0, rows) for k, v in st.items()}, [item[j] for j in keep]


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
