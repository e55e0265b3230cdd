"""``mgrit-nn check``: the distributed MGRIT forward solve against the serial reference."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

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

    # u_N travels from the last rank to rank 0, where the serial reference runs
    uN = torch.empty((x.shape[0],) + run.shapes.state, dtype=run.dtype, device=run.device)
    last = net.chain.ranks[-1]
    if msg.rank == last:
        uN.copy_(net.final_state())
    if last != 0:
        if msg.rank == last:
            msg.isend(uN, 0, 7).wait()
        elif msg.rank == 0:
            msg.irecv(uN, last, 7).wait()
    out = None
    if msg.rank == 0:
        serial = SerialResNet(cfg.model, run.shapes, run.dtype, run.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            uN_ref = serial.states(x)[-1]
            loss_serial = F.cross_entropy(serial.classifier(uN_ref.flatten(1)), y).item()
        t_serial = time.perf_counter() - t0
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
            "serial_forward_s": t_serial,
            "mgrit_forward_s": t_mgrit,
        }
    return out
