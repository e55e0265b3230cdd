"""``local_critic``: Lee, Hsieh and Lee, "Local critic training for model-parallel learning
of deep neural networks" (docs/training.md).

Layer group i is rank i's part of the network (design §3: its steps; the first group also
holds the opening layer, the last the classifier). Every group but the last has a critic
c_i (model/critic.py). f_i is updated by backprop of its local loss L_i = CE(c_i(h_i), y)
alone (the last group: the true loss); c_i is trained on |L_i - L_{i+1}|, the paper's
cascaded L1 objective (its eq. (5)), once L_{i+1} of the same batch arrives, with its own
Adam (``critic.lr``). The gradient of that objective is sign(L_i - L_{i+1}) dL_i/dc_i, with
dL_i/dc_i taken in the same backward pass as f_i's gradient (at the critic that gave L_i).

Pipeline: at trainer step k, rank i works on batch k - i (every rank is handed batch k; the
method keeps the last K). One step on rank i:

    post the receive of L_{i+1}(k-i-1)                (if c_i has an update pending)
    wait for h_{i-1}(k-i); post the receive of h_{i-1}(k-i+1)
    h_i = f_i(h_{i-1}); send h_i right                (detached)
    L_i = CE(c_i(h_i), y); send L_i left              (one number)
    dL_i/df_i -> .grad; dL_i/dc_i kept
    wait for L_{i+1}(k-i-1); Adam step of c_i on sign(L_i - L_{i+1}) * (kept dL_i/dc_i)

Every wait is for a message the neighbour posts before any wait of its own in the same or
an earlier step, so the ranks work at once and cannot deadlock. A rank with no batch yet
(steps k <= i, the pipeline fill-up) leaves ``.grad`` None: torch's SGD and Adam skip such
parameters, so its update is a no-op. The pipeline is not drained: after S steps rank i has
trained on batches 1..S-i. A checkpoint holds what is in flight (the received input of the
next step, the pending critic gradient, the last K batches' indices, per-rank optimizer
counters), so a resumed run continues bitwise as if uninterrupted.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from mgrit_nn.comm import Tag
from mgrit_nn.methods.base import Batch, PartitionedMethod, StepInfo, TrainData, correct
from mgrit_nn.model.critic import build_critic, n_params
from mgrit_nn.model.regularization import regularization
from mgrit_nn.model.stage import Stage
from mgrit_nn.optim import SGD, Adam, load_optimizer_state, optimizer_state, set_state_scalars
from mgrit_nn.runtime import CheckpointError, CollectiveError
from mgrit_nn.setup_run import Run

log = logging.getLogger("mgrit_nn.local_critic")

ACTIVE, LOSS, CORRECT, SIZE, CRITIC = range(5)     # columns of the per-step table


def fresh_state(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    """Give every parameter without optimizer state the state torch creates at its first
    update (Adam: step 0 and zero moments; SGD with momentum: a zero buffer, which its
    first update turns into the gradient, as with no buffer). Then a rank that has not
    updated yet (pipeline fill-up) checkpoints the same entries as the others."""
    for p in params:
        state = opt.state[p]
        if state:
            continue
        if isinstance(opt, Adam):
            state.update(step=torch.tensor(0.0, dtype=torch.float32),
                         exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        elif isinstance(opt, SGD) and opt.defaults["momentum"] != 0:
            state["momentum_buffer"] = torch.zeros_like(p)


class LocalCriticMethod(PartitionedMethod):
    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.msg = self.net.msg
        self.stage = st = Stage(self.net)
        self.i, self.K = st.k, st.K
        c = run.cfg.critic
        self.critic = None if st.last else build_critic(c, run.shapes, run.cfg.model.seed,
                                                        self.i, run.dtype, run.device)
        self.critic_opt = None if st.last else Adam(self.critic.parameters(), lr=c.lr)
        self.batches: deque[Batch] = deque(maxlen=self.K)
        self.tick = 0                 # gradient calls so far (= the trainer's step)
        self.h_next = None            # input of the next step: a posted receive or a tensor
        self.sends: list = []         # posted sends, completed before the next step's
        self.pending = None           # (L_i, dL_i/dc_i) of the last batch, until L_{i+1}
        self.opt = None

    def bind(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt
        fresh_state(opt, self.parameters())

    def critic_parameters(self) -> list[torch.Tensor]:
        return [] if self.critic is None else list(self.critic.parameters())

    # -- one step --------------------------------------------------------------------------
    def _batch(self, ahead: int = 0) -> Batch | None:
        """Batch ``tick - i + ahead`` (None before the first)."""
        n = self.tick - self.i + ahead
        return self.batches[n - self.tick - 1] if n >= 1 else None

    def _complete_sends(self) -> None:
        for s in self.sends:
            s.wait()
        self.sends = []

    def _take_input(self) -> torch.Tensor:
        h, self.h_next = self.h_next, None
        return h if torch.is_tensor(h) else h.wait()

    def _post_next_input(self) -> None:
        st = self.stage
        nxt = None if st.first else self._batch(ahead=1)
        if nxt is None:
            return
        assert self.h_next is None, "local_critic: an input is already waiting"
        buf = torch.empty(st.state_shape(len(nxt.y)), dtype=self.run.dtype,
                          device=self.run.device)
        self.h_next = st.recv_left(buf)

    def settle(self) -> None:
        """Complete every posted message (before a checkpoint, at the end, on errors)."""
        self._complete_sends()
        if self.h_next is not None and not torch.is_tensor(self.h_next):
            self.h_next = self.h_next.wait()

    def step(self, batch: Batch) -> StepInfo:
        x, y, idx, scale = batch.x, batch.y, batch.idx, batch.scale
        st, net = self.stage, self.net
        self.tick += 1
        self.batches.append(Batch(x, y, idx.clone()))
        self._complete_sends()
        l_next = None
        if self.pending is not None:
            buf = torch.empty(1, dtype=self.run.dtype, device=self.run.device)
            l_next = self.msg.irecv(buf, st.right, Tag.CRITIC_LOSS)
        b = self._batch()
        h_in = self._take_input() if b is not None and not st.first else None
        self._post_next_input()
        params = self.parameters()
        row = np.full(5, np.nan)
        row[ACTIVE] = b is not None
        if b is not None:
            with torch.enable_grad():
                h = st.forward(b.x if st.first else h_in)
                if not st.last:
                    self.sends.append(st.send_right(h.detach()))
                logits = st.logits(h) if st.last else self.critic(h)
                L = F.cross_entropy(logits, b.y)
                if st.left is not None:
                    self.sends.append(self.msg.isend(L.detach().reshape(1), st.left,
                                                     Tag.CRITIC_LOSS))
                grads = torch.autograd.grad(L, params + self.critic_parameters(),
                                            allow_unused=True, materialize_grads=True)
            row[LOSS], row[CORRECT], row[SIZE] = L.item(), correct(logits, b.y), len(b.y)
        reg_value, reg_grads = 0.0, None
        if net.reg is not None:                      # collective: every rank, every step
            reg_value, reg_grads = regularization(net, net.reg)
        diff = None
        if l_next is not None:
            diff = self.pending[0] - float(l_next.wait()[0])      # L_i - L_{i+1}
            row[CRITIC] = abs(diff)
        table = np.empty((self.K, 5))
        self.msg.comm.Allgather(row, table)          # the same bits on every rank
        self._check(table)
        if diff is not None:
            self._update_critic(self.pending[1], diff)
        for j, p in enumerate(params):
            if b is None:
                p.grad = None
            else:
                g = grads[j] * scale
                p.grad = g if reg_grads is None else g + scale * reg_grads[j]
        self.pending = None if b is None or st.last else (row[LOSS], grads[len(params):])
        return self._info(table, reg_value, scale, len(y))

    def _check(self, table: np.ndarray) -> None:
        for j in range(self.K):
            if table[j, ACTIVE] and not np.isfinite(table[j, LOSS]):
                self.settle()
                raise CollectiveError(f"local_critic: the local loss of layer group {j} is "
                                      f"{table[j, LOSS]} at step {self.tick}")

    def _update_critic(self, dc: list[torch.Tensor], diff: float) -> None:
        """Adam step of c_i on |L_i - L_{i+1}|: gradient sign(L_i - L_{i+1}) dL_i/dc_i."""
        sign = float(np.sign(diff))
        for p, g in zip(self.critic_parameters(), dc, strict=True):
            p.grad = g * sign
        self.critic_opt.step()

    def _info(self, table: np.ndarray, reg_value: float, scale: float, n: int) -> StepInfo:
        """The step's loss and accuracy are those of the deepest group that has a batch (the
        last group, i.e. the true loss, once the pipeline is full), the same on every rank."""
        deep = max(j for j in range(self.K) if table[j, ACTIVE])
        mine = self.i == deep           # counted once: on that group's rank
        corr = table[deep, CORRECT] * n / table[deep, SIZE] if mine else 0.0
        extra = {f"local_loss_{j}": float(table[j, LOSS]) for j in range(self.K - 1)}
        extra.update({f"critic_loss_{j}": float(table[j, CRITIC]) for j in range(self.K - 1)})
        return StepInfo((float(table[deep, LOSS]) + reg_value) * scale, corr, extra=extra)

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def _sweep(self, x: torch.Tensor, y: torch.Tensor, critics: bool) -> tuple[float, int]:
        """One exact forward sweep over the groups; (summed cross-entropy, correct) of this
        rank's head: the classifier on the last rank, the critic elsewhere if ``critics``."""
        st = self.stage
        if st.first:
            u = st.forward(x)
        else:
            buf = torch.empty(st.state_shape(len(x)), dtype=self.run.dtype,
                              device=self.run.device)
            u = st.forward(self.msg.irecv(buf, st.left, Tag.CRITIC_EVAL).wait())
        send = None if st.last else self.msg.isend(u, st.right, Tag.CRITIC_EVAL)
        head = st.logits if st.last else self.critic if critics else None
        ce, corr = 0.0, 0
        if head is not None:
            logits = head(u)
            ce, corr = F.cross_entropy(logits, y, reduction="sum").item(), correct(logits, y)
        if send is not None:
            send.wait()
        return ce, corr

    def evaluate(self, x, y) -> tuple[float, int]:
        """(summed cross-entropy, correct) of the main network's exact forward pass."""
        return self._sweep(x, y, critics=False)

    def report(self, data: TrainData) -> dict:
        """After training: accuracy and parameter count of every sub-model f_1..f_i + c_i and
        of the full model (the paper's structural optimization / anytime prediction), on the
        validation set (the training set if there is none)."""
        self.settle()
        name, x, y = ("val", data.xv, data.yv) if len(data.yv) else ("train", data.x, data.y)
        ce, corr = self._sweep(x, y, critics=True)
        main = sum(p.numel() for p in self.parameters())
        mine = np.array([main, n_params(self.critic), ce, corr, self.net.hi], dtype=np.float64)
        table = np.empty((self.K, 5))
        self.msg.comm.Allgather(mine, table)
        rows, params = [], 0
        for j in range(self.K):
            params += int(table[j, 0])
            rows.append({"groups": j + 1, "layers": int(table[j, 4]),
                         "head": "classifier" if j == self.K - 1 else "critic",
                         "params": params + int(table[j, 1]),
                         f"{name}_loss": table[j, 2] / len(y),
                         f"{name}_accuracy": table[j, 3] / len(y)})
        if self.run.world.Get_rank() == 0:
            log.info("sub-models f_1..f_i + c_i on the %s set:", name)
            for r in rows:
                log.info("  groups 1..%d (%d layers) + %-10s %8d params  accuracy %.4f",
                         r["groups"], r["layers"], r["head"], r["params"],
                         r[f"{name}_accuracy"])
        return {"submodels": rows, "submodels_set": name}

    # -- checkpoints: main network by global layer index, per-group state under local_critic/
    def _group_arrays(self) -> dict[str, np.ndarray]:
        """This rank's state beyond the main network's weights and optimizer tensors."""
        def host(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy()
        out = {}
        if self.h_next is not None:
            out["h_in"] = host(self.h_next)
        for name, v in optimizer_state(self.opt, self.parameters())[1].items():
            out[f"optimizer/{name}"] = np.array(v)    # per rank: rank i has made k - i steps
        if self.critic is not None:
            for name, t in self.critic.state_dict().items():
                out[f"critic/{name}"] = host(t)
            tensors, scalars = optimizer_state(self.critic_opt, self.critic_parameters())
            for name, ts in tensors.items():
                for j, t in enumerate(ts):
                    out[f"critic_optimizer/{name}/{j}"] = host(t)
            for name, v in scalars.items():
                out[f"critic_optimizer/{name}"] = np.array(v)
        if self.pending is not None:
            out["pending/loss"] = np.array(self.pending[0])
            for j, g in enumerate(self.pending[1]):
                out[f"pending/grad/{j}"] = host(g)
        return out

    def state_dict(self) -> dict:
        """``local_critic``: the groups' critics and what is in flight (on rank 0; see
        docs/hdf5.md)."""
        self.settle()                       # the next step's input is received, not in flight
        parts = self.msg.comm.gather(self._group_arrays(), root=0)   # checkpoint only
        if self.msg.rank != 0:
            return {}
        chain, idx = self.net.chain, [b.idx for b in self.batches]
        out = {"groups": np.array(self.K), "tick": np.array(self.tick),
               "layers": np.array([[max(chain.starts[q], 1) - 1, chain.starts[q + 1] - 1]
                                   for q in range(self.K)], dtype=np.int64),
               "batch_sizes": np.array([len(i) for i in idx], dtype=np.int64),
               "batch_index": torch.cat(idx).numpy() if idx else np.zeros(0, dtype=np.int64)}
        for g, part in enumerate(parts):
            out.update({f"{g}/{k}": v for k, v in part.items()})
        return {"local_critic": out}

    def load_state_dict(self, f) -> None:
        from mgrit_nn.runtime import agree_on_config

        def check() -> None:
            if "local_critic" not in f:
                raise CheckpointError(
                    f"checkpoint {f.filename} was written by train.method {f.attrs['method']} "
                    "and holds no local critics; start from its weights with --init-from")
            K = int(f["local_critic/groups"][()])
            if K != self.K:
                raise CheckpointError(
                    f"checkpoint {f.filename} holds local critics of {K} layer groups (ranks); "
                    f"this run has {self.K}. Resume on {K} ranks, or start a new run from its "
                    "main-network weights with --init-from")
        agree_on_config(check, self.run.world)         # one message, every rank exits
        dev, dt, d = self.run.device, self.run.dtype, self.run.data
        x, y = d.x_train.to(dev, dt), d.y_train.to(dev)
        here = f"local_critic/{self.i}"

        def get(name: str) -> torch.Tensor | None:
            return torch.from_numpy(np.asarray(f[f"{here}/{name}"][()])) \
                if f"{here}/{name}" in f else None
        self.tick = int(f["local_critic/tick"][()])
        index = torch.from_numpy(f["local_critic/batch_index"][()])
        self.batches.clear()
        for idx in torch.split(index, f["local_critic/batch_sizes"][()].tolist()):
            self.batches.append(Batch(x[idx], y[idx], idx.clone()))
        h = get("h_in")
        self.h_next = None if h is None else h.to(dev, dt)
        if f"{here}/optimizer" in f:            # this group's own counters (Adam's step)
            set_state_scalars(self.opt, self.parameters(),
                              {name: float(get(f"optimizer/{name}"))
                               for name in f[f"{here}/optimizer"]})
        self.pending = None
        if self.critic is None:
            return
        self.critic.load_state_dict({name: get(f"critic/{name}")
                                     for name in self.critic.state_dict()})
        cparams = self.critic_parameters()
        tensors, scalars = {}, {}
        for name, obj in f[f"{here}/critic_optimizer"].items() \
                if f"{here}/critic_optimizer" in f else ():
            if isinstance(obj, Mapping):
                tensors[name] = [get(f"critic_optimizer/{name}/{j}").to(p)
                                 for j, p in enumerate(cparams)]
            else:
                scalars[name] = float(obj[()])
        load_optimizer_state(self.critic_opt, cparams, tensors, scalars)
        loss = get("pending/loss")
        if loss is not None:
            self.pending = (float(loss), [get(f"pending/grad/{j}").to(p)
                                          for j, p in enumerate(cparams)])
