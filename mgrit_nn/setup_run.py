"""What every command does first: config, validation, device, data and network on every rank."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from mpi4py import MPI

from mgrit_nn.comm import Messenger
from mgrit_nn.config import Config, ConfigError, read_config, validate
from mgrit_nn.data import Dataset, load_dataset
from mgrit_nn.model.init import Shapes, shapes
from mgrit_nn.model.parallel import ParallelResNet
from mgrit_nn.runtime import (
    DTYPES,
    agree_on_config,
    cuda_aware_mpi,
    node_ranks,
    select_device,
    split_replicas,
)


@dataclass
class Run:
    cfg: Config
    msg: Messenger            # the layer-parallel group of this rank's replica
    data_msg: Messenger       # the same layers in every replica (size = parallel.data_replicas)
    world: MPI.Comm
    device: torch.device
    dtype: torch.dtype
    data: Dataset
    shapes: Shapes

    def network(self) -> ParallelResNet:
        c = self.cfg
        return ParallelResNet(c.model, self.shapes, c.mgrit, self.msg,
                              self.device, self.dtype,
                              c.adjoint.resolved(c.mgrit), c.reg,
                              compile_step=c.runtime.compile, graphs=c.runtime.graphs)


def _threads(cfg: Config, comm: MPI.Comm) -> int:
    """runtime.threads, or (0) the node's cores shared by all ranks on the node: the cores
    the node's ranks may use (the union of their affinity sets) over the ranks of the whole
    job on the node (not only of the communicator the run uses: oversubscribed threads spin
    and stall); at least 1 and never more than the cores this process may use (a launcher
    that binds every rank to its own cores gives each its share)."""
    if cfg.runtime.threads > 0:
        return cfg.runtime.threads
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") \
        else set(range(os.cpu_count() or 1))               # macOS: no affinity sets
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        node = set().union(*local.allgather(sorted(mine)))
    finally:
        local.Free()
    return max(1, min(len(mine), len(node) // node_ranks()))


def setup(config_path: str | None, overrides: list[str], comm: MPI.Comm | None = None,
          check=None) -> Run:
    """Load and validate the config on every rank (one message on failure), then build.
    ``check()``: the command's own argument checks (raise ConfigError), in the same agreement."""
    comm = comm or MPI.COMM_WORLD

    def build():   # no collective calls in here: a rank may fail while others go on
        if check is not None:
            check()
        cfg, notes = read_config(config_path, overrides)
        validate(cfg, comm.Get_size())
        if cfg.runtime.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("runtime.device: cuda requested but no CUDA device is visible")
        if cfg.runtime.graphs == "cuda" and not torch.cuda.is_available():
            raise ConfigError("runtime.graphs: cuda needs a CUDA device and none is visible "
                              "(emulate checks the capture on a CPU)")
        d = cfg.data
        try:
            data = load_dataset(d.name, d.path, d.n_train, d.n_val, d.seed)
        except ValueError as exc:
            raise ConfigError(f"data: {exc}") from None
        return cfg, notes, data, shapes(cfg.model, data.input_shape, data.n_classes)

    cfg, notes, data, shp = agree_on_config(build, comm)
    for note in notes if comm.Get_rank() == 0 else ():    # legal but suspicious: once
        logging.getLogger("mgrit_nn.config").warning("config warning: %s", note)
    if comm.Get_rank() == 0:
        from mgrit_nn.memory import memory_line

        logging.getLogger("mgrit_nn.config").info(memory_line(cfg, comm.Get_size()))
    device = select_device(cfg.runtime.device, comm)
    layer_comm, data_comm = split_replicas(comm, cfg.parallel.data_replicas)
    torch.set_num_threads(_threads(cfg, comm))
    aware = device.type == "cuda" and cuda_aware_mpi(cfg.runtime.cuda_aware)
    return Run(cfg, Messenger(layer_comm, aware), Messenger(data_comm, aware), comm, device,
               DTYPES[cfg.runtime.dtype], data, shp)
