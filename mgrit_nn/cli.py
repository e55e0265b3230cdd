"""Command line: ``mgrit-nn COMMAND CONFIG [--set section.key=value ...]``."""

from __future__ import annotations

import argparse
import json
import sys

from mgrit_nn.runtime import abort_on_error, world


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
    sub.add_parser("schema", help="print every config key with its default and doc (Markdown)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "schema":
        from mgrit_nn.docs import schema_markdown

        print(schema_markdown())
        return 0
    comm = world()
    with abort_on_error(comm):
        from mgrit_nn.setup_run import setup

        run = setup(args.config, args.set, comm)
        if args.command == "check":
            from mgrit_nn.methods.check import check

            out = check(run)
            if comm.Get_rank() == 0:
                print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
