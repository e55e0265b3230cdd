"""``mgrit-nn check``: the layer-parallel forward solve, adjoint solve and gradient against the
serial network (plain autograd on rank 0), with a verdict.

The check passes when

- the forward and the adjoint MGRIT solves reach their residual tolerance within their
  ``max_iter``: ``mgrit.tol`` and ``adjoint.tol`` as configured, raised to
  ``10 eps ||u_C||`` (forward; ``10 eps ||lam_C||`` adjoint) where that is larger. ``eps`` is
  the dtype's machine epsilon and ``||u_C||`` the norm of the solve's own final states at the
  level-0 C-points, the points the residual sums over: a residual cannot go below the
  rounding of the states it compares (in float32 ``1e-10`` is out of reach; in float64 the
  configured tolerance is kept unless it is below that floor). Every MGRIT solve stops at
  that floor (``MGRIT.reachable``); the check reports it;
- the final state ``u_N`` and the gradient (over all parameters, and of the worst single
  tensor) agree with the serial network's to a relative error of ``sqrt(eps)``: half the
  digits of the dtype (1.5e-8 in float64, 3.5e-4 in float32).

Rank 0 prints the verdict to stderr and returns the JSON object; every rank learns the
verdict (exit status 1 when a check fails).
"""

from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn.functional as F

from mgrit_nn.comm import Tag
from mgrit_nn.mgrit.solver import ROUNDING_FLOOR as FLOOR
from mgrit_nn.model.serial import SerialResNet
from mgrit_nn.runtime import idle_barrier
from mgrit_nn.setup_run import Run


def check(run: Run) -> tuple[dict | None, bool]:
    """(the JSON object on rank 0, None elsewhere; whether every check passed, on every rank)."""
    msg = run.msg
    x = run.data.x_train.to(run.device, run.dtype)
    y = run.data.y_train.to(run.device)
    net = run.network()
    ref = _serial(run, net, x, y) if msg.rank == 0 else None
    idle_barrier(msg.comm)               # the other ranks sleep while rank 0 computes it
    t0 = time.perf_counter()
    res = net.solve_forward(x)
    t_fwd = time.perf_counter() - t0
    loss_mgrit, _ = net.loss(y)
    t0 = time.perf_counter()
    grads = net.backprop(x, y)
    t_adj = time.perf_counter() - t0
    # the tolerances each solve stopped at: configured, raised to its rounding floor
    tols = (net.solver.reachable(net.solver.opts.tol),
            net.adjoint.reachable(net.adjoint.opts.tol))
    eps = torch.finfo(run.dtype).eps
    g_mgrit = net.gather_flat(net.flat(grads))
    uN = _final_state_on_rank0(run, net, x)
    out = None
    if msg.rank == 0:
        out = _result(run, net, ref, res, uN, g_mgrit, loss_mgrit, (t_fwd, t_adj))
        out.update(verdict(out, tols, math.sqrt(eps)))
        sys.stderr.write(verdict_text(out, net.solver.opts, net.adjoint.opts) + "\n")
        sys.stderr.flush()                    # in one write: before the JSON line on stdout
    passed = run.world.bcast(out["passed"] if run.world.Get_rank() == 0 else None, root=0)
    return out, bool(passed)


def _result(run: Run, net, ref: dict, res, uN, g_mgrit, loss_mgrit: float,
            seconds: tuple[float, float]) -> dict:
    cfg, adj = run.cfg, net.adj_result
    grad_err, grad_max_err = compare_gradients(ref["net"], g_mgrit)
    return {
        "ranks": run.msg.size,
        "layers": cfg.model.layers,
        "levels": len(net.solver.levels),
        "cfactor": cfg.mgrit.cfactor,
        "relax": cfg.mgrit.relax,
        "cycle": cfg.mgrit.cycle,
        "dtype": cfg.runtime.dtype,
        "device": str(run.device),
        "batch": int(uN.shape[0]),
        "fwd_iters": res.iters,
        "fwd_residuals": res.residuals,
        "fwd_conv_factor": res.conv_factor,
        "state_rel_err": float((uN - ref["uN"]).norm() / ref["uN"].norm()),
        "loss_serial": ref["loss"],
        "loss_mgrit": loss_mgrit,
        "adj_iters": adj.iters,
        "adj_residuals": adj.residuals,
        "adj_conv_factor": adj.conv_factor,
        "grad_rel_err": grad_err,
        "grad_max_rel_err": grad_max_err,
        "serial_gradient_s": ref["seconds"],
        "mgrit_forward_s": seconds[0],
        "mgrit_adjoint_s": seconds[1],
    }


def _serial(run: Run, net, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Rank 0's serial reference: u_N, the loss, the gradient (in the network's .grad)."""
    serial = SerialResNet(run.cfg.model, run.shapes, run.dtype, run.device)
    t0 = time.perf_counter()
    us = serial.states(x)
    loss = F.cross_entropy(serial.head(us[-1]), y) + serial.regularization(run.cfg.reg)
    loss.backward()
    seconds = time.perf_counter() - t0
    return {"net": serial, "uN": us[-1].detach(), "loss": loss.item(), "seconds": seconds}


def verdict(out: dict, tols: tuple[float, float], err_tol: float) -> dict:
    """The pass/fail fields of the JSON object (tolerances as used, see the module doc)."""
    v = {"fwd_tol": tols[0], "adj_tol": tols[1], "err_tol": err_tol,
         "fwd_converged": out["fwd_residuals"][-1] <= tols[0],
         "adj_converged": out["adj_residuals"][-1] <= tols[1],
         "state_ok": out["state_rel_err"] <= err_tol,
         "grad_ok": max(out["grad_rel_err"], out["grad_max_rel_err"]) <= err_tol}
    v["passed"] = all(v[k] for k in ("fwd_converged", "adj_converged", "state_ok", "grad_ok"))
    return v


def verdict_text(out: dict, fwd_opts, adj_opts) -> str:
    """What a person reads: one line per check and the verdict, e.g.
    ``forward: 8 iterations, residual 3.6e-15 <= 1e-10 OK; state error 2.4e-17 <= 1.5e-08 OK``.
    """
    def cmp(value: float, ok: bool, limit: float) -> str:
        return f"{value:.2g} {'<=' if ok else '>'} {limit:.2g} {'OK' if ok else 'FAIL'}"

    def solve(name: str, opts, states: str) -> str:
        ok, tol, n = out[f"{name}_converged"], out[f"{name}_tol"], out[f"{name}_iters"]
        line = f"{n} iteration{'s' if n != 1 else ''}, residual " \
            f"{cmp(out[f'{name}_residuals'][-1], ok, tol)}"
        if not ok and n >= opts.max_iter:
            line += f" (stopped at max_iter {opts.max_iter})"
        if tol > opts.tol:
            line += f" (tol {opts.tol:.2g} raised to the {out['dtype']} rounding floor " \
                f"{FLOOR:g} eps |{states}|)"
        return line
    e = out["err_tol"]
    worst = max(out["grad_rel_err"], out["grad_max_rel_err"])
    failed = [k for k, key in (("forward", "fwd_converged"), ("state", "state_ok"),
                               ("adjoint", "adj_converged"), ("gradient", "grad_ok"))
              if not out[key]]
    return "\n".join([
        f"mgrit-nn check: {out['ranks']} rank(s), N = {out['layers']}, {out['levels']} levels, "
        f"{out['dtype']}, batch {out['batch']}; against the serial network",
        f"  forward:  {solve('fwd', fwd_opts, 'u_C')}; state error "
        f"{cmp(out['state_rel_err'], out['state_ok'], e)}",
        f"  adjoint:  {solve('adj', adj_opts, 'lam_C')}",
        f"  gradient: error {out['grad_rel_err']:.2g}, worst tensor "
        f"{cmp(worst, out['grad_ok'], e)}",
        "mgrit-nn check: PASS" if out["passed"] else
        f"mgrit-nn check: FAIL ({', '.join(failed)})"])


def _final_state_on_rank0(run: Run, net, x: torch.Tensor) -> torch.Tensor:
    """u_N travels from the last rank to rank 0, where the serial reference runs."""
    msg = run.msg
    uN = torch.empty((x.shape[0],) + run.shapes.state, dtype=run.dtype, device=run.device)
    last = net.chain.ranks[-1]
    if msg.rank == last:
        uN.copy_(net.final_state())
    if last != 0:
        if msg.rank == last:
            msg.isend(uN, 0, Tag.FINAL_STATE).wait()
        elif msg.rank == 0:
            msg.irecv(uN, last, Tag.FINAL_STATE).wait()
    return uN


def serial_tensors(serial: SerialResNet) -> list[torch.Tensor]:
    """The serial network's gradient tensors in the global flat order (see ParallelResNet.flat)."""
    ts = [serial.opening.weight.grad, serial.opening.bias.grad]
    for layer in serial.layers:
        ts += [layer.weight.grad, layer.bias.grad]
    return ts + [serial.classifier.weight.grad, serial.classifier.bias.grad]


def gradient_errors(run: Run, net, grads: list[torch.Tensor], x, y) -> tuple[float, float]:
    """:func:`compare_gradients` of this MGRIT gradient against serial autograd, on every rank.

    The gradient is gathered on rank 0, where the serial reference runs."""
    g = net.gather_flat(net.flat(grads))
    errs = torch.zeros(2, dtype=torch.float64)
    if run.msg.rank == 0:
        ref = SerialResNet(run.cfg.model, run.shapes, run.dtype, run.device)
        ref.loss(x, y, run.cfg.reg).backward()
        errs[:] = torch.tensor(compare_gradients(ref, g))
    run.msg.bcast_tensor(errs, root=0)
    return float(errs[0]), float(errs[1])


def compare_gradients(serial: SerialResNet, g_mgrit: torch.Tensor) -> tuple[float, float]:
    """(||g - g_serial|| / ||g_serial|| over everything, worst relative error of one tensor)."""
    ref = serial_tensors(serial)
    parts = torch.split(g_mgrit.to(ref[0].device), [t.numel() for t in ref])
    worst, num, den = 0.0, 0.0, 0.0
    for g, r in zip(parts, ref, strict=True):
        d = float((g - r.flatten()).norm())
        n = float(r.norm())
        num, den = num + d * d, den + n * n
        worst = max(worst, d / n if n > 0 else d)
    return (num / den) ** 0.5, worst
