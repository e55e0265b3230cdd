"""Command line: ``mgrit-nn COMMAND CONFIG [--set section.key=value ...]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from mgrit_nn.runtime import abort_on_error, node_ranks, world


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
    t.add_argument("--out", default=None, help="output directory (config, history, result)")
    t.add_argument("--quiet", action="store_true", help="no progress bar (batch jobs)")
    sub.add_parser("schema", help="print every config key with its default and doc (Markdown)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "schema":
        from mgrit_nn.docs import schema_markdown

        print(schema_markdown())
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
        if args.command == "check":
            from mgrit_nn.methods.check import check

            out = check(run)
        else:
            from mgrit_nn.methods.train import train

            out = train(run, args.out, args.quiet)
        if comm.Get_rank() == 0:
            print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
