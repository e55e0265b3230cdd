"""Command line: ``mgrit-nn COMMAND CONFIG [--set section.key=value ...]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mgrit_nn.runtime import EXIT_STOPPED, abort_on_error, node_ranks, world


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mgrit-nn", description=(
        "Layer-parallel training of ODE-ResNets with MGRIT. Run under mpiexec/srun; "
        "every rank runs the same command."))
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="MGRIT forward solve vs. the serial reference; "
                       "last line on rank 0: one JSON object")
    c.add_argument("config", help="YAML config file")
    c.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable)")
    t = sub.add_parser("train", help="train a network; last line on rank 0: one JSON object")
    t.add_argument("config", help="YAML config file")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable)")
    t.add_argument("--out", default=None,
                   help="output directory: history.h5, checkpoints/, result.json "
                   "(default: out/<config name>)")
    t.add_argument("--quiet", action="store_true", help="no progress bar (batch jobs)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", metavar="PATH|latest",
                   help="continue from a checkpoint (latest: the newest in OUT/checkpoints)")
    g.add_argument("--init-from", metavar="PATH",
                   help="start a fresh run from a checkpoint's model weights")
    b = sub.add_parser("bench", help="time one gradient: serial autograd vs one-shot vs exact "
                       "MGRIT; last line on rank 0: one JSON object")
    b.add_argument("config", help="YAML config file")
    b.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    i = sub.add_parser("init", help="write the initialized network as OUT/checkpoints/"
                       "step_00000000.h5 (to start several methods from the same weights)")
    i.add_argument("config", help="YAML config file")
    i.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    i.add_argument("--out", required=True, help="output directory")
    f = sub.add_parser("info", help="a readable summary of a history or checkpoint file")
    f.add_argument("file", help="history.h5 or a checkpoint")
    sub.add_parser("schema", help="print every config key with its default and doc (Markdown)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "schema":
        from mgrit_nn.docs import schema_markdown

        print(schema_markdown())
        return 0
    if args.command == "info":
        from mgrit_nn.io.info import info

        try:
            print(info(args.file))
        except (OSError, ValueError) as exc:
            print(f"mgrit-nn: {args.file}: {exc}", file=sys.stderr)
            return 2
        return 0
    comm = world()
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format=f"%(asctime)s rank {comm.Get_rank()} %(name)s: %(message)s")
    if comm.Get_rank() != 0:
        logging.getLogger().setLevel(logging.WARNING)
    with abort_on_error(comm):
        from mgrit_nn.setup_run import setup

        node_ranks()            # collective on first call: every rank, before any sub-communicator
        run = setup(args.config, args.set, comm)
        code = 0
        if args.command == "check":
            from mgrit_nn.methods.check import check

            out = check(run)
        elif args.command == "bench":
            from mgrit_nn.methods.bench import bench

            out = bench(run)
        elif args.command == "init":
            from mgrit_nn.io.state import save
            from mgrit_nn.methods.train import Trainer

            path = save(Trainer(run), Path(args.out), 0)
            out = {"checkpoint": str(path)}
        else:
            from mgrit_nn.methods.train import train

            out_dir = args.out or str(Path("out") / Path(args.config).stem)
            out = train(run, out_dir, args.quiet, args.resume, args.init_from)
            code = EXIT_STOPPED if out["stopped_by_signal"] else 0
        if comm.Get_rank() == 0:
            print(json.dumps(out), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
