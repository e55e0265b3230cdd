"""``mgrit-nn check``: the distributed MGRIT forward solve against the serial reference."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from mgrit_nn.comm import Tag
from mgrit_nn.model.serial import SerialResNet
from mgrit_nn.setup_run import Run


def check(run: Run) -> dict:
    cfg, msg = run.cfg, run.msg
    x = run.data.x_train.to(run.device, run.dtype)
    y = run.data.y_train.to(run.device)
    net = run.network()
    msg.comm.Barrier()
    t0 = time.perf_counter()
    res = net.solve_forward(x)
    t_mgrit = time.perf_counter() - t0
    loss_mgrit, _ = net.loss(y)
    t0 = time.perf_counter()
    grads = net.backprop(x, y)
    t_adj = time.perf_counter() - t0
    adj = net.adj_result
    g_mgrit = net.gather_flat(net.flat(grads))
    uN = _final_state_on_rank0(run, net, x)
    out = None
    if msg.rank == 0:
        serial = SerialResNet(cfg.model, run.shapes, run.dtype, run.device)
        t0 = time.perf_counter()
        uN_ref = serial.states(x)[-1]
        loss = F.cross_entropy(serial.head(uN_ref), y) \
            + serial.regularization(cfg.reg)
        loss.backward()
        t_serial = time.perf_counter() - t0
        loss_serial, uN_ref = loss.item(), uN_ref.detach()
        grad_err, grad_max_err = compare_gradients(serial, g_mgrit)
        out = {
            "ranks": msg.size,
            "layers": cfg.model.layers,
            "levels": len(net.solver.levels),
            "cfactor": cfg.mgrit.cfactor,
            "relax": cfg.mgrit.relax,
            "cycle": cfg.mgrit.cycle,
            "dtype": cfg.runtime.dtype,
            "device": str(run.device),
            "batch": int(x.shape[0]),
            "fwd_iters": res.iters,
            "fwd_residuals": res.residuals,
            "fwd_conv_factor": res.conv_factor,
            "state_rel_err": float((uN - uN_ref).norm() / uN_ref.norm()),
            "loss_serial": loss_serial,
            "loss_mgrit": loss_mgrit,
            "adj_iters": adj.iters,
            "adj_residuals": adj.residuals,
            "adj_conv_factor": adj.conv_factor,
            "grad_rel_err": grad_err,
            "grad_max_rel_err": grad_max_err,
            "serial_gradient_s": t_serial,
            "mgrit_forward_s": t_mgrit,
            "mgrit_adjoint_s": t_adj,
        }
    return out


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
