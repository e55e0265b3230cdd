"""Command line: ``mgrit-nn COMMAND CONFIG [--set section.key=value ...]``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mgrit_nn.commands import outputs


def _launcher(names: tuple[str, ...], default: str) -> str:
    """A value the MPI launcher put in the environment (MPICH/Hydra, Open MPI, PMIx, SLURM),
    known before MPI starts."""
    return next((os.environ[v] for v in names if os.environ.get(v, "").isdigit()), default)


def _rank() -> str:
    return _launcher(("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"), "0")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, printed by one rank only (every rank parses the same
    command line; the launcher's rank variables say which one is rank 0)."""

    def error(self, message: str):
        if _rank() == "0":
            print(f"{self.prog}: error: {message} (see {self.prog.split()[0]} -h)",
                  file=sys.stderr, flush=True)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mgrit-nn", description=(
        "Layer-parallel training of ODE-ResNets with MGRIT. Run under mpiexec/srun; "
        "every rank runs the same command."))
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="MGRIT forward, adjoint and gradient vs. the serial "
                       "network: a verdict on stderr (exit 1 on a failure); last line on "
                       "rank 0: one JSON object")
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
    t.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that holds an earlier run (deletes its "
                   "history and checkpoints)")
    b = sub.add_parser("bench", help="time one gradient: serial autograd vs one-shot vs exact "
                       "MGRIT; last line on rank 0: one JSON object")
    b.add_argument("config", help="YAML config file")
    b.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    mo = sub.add_parser("model", help="the calibrated performance model: predicted one-shot "
                        "gradient time on P ranks against serial autograd; last line on "
                        "rank 0: one JSON object")
    mo.add_argument("config", help="YAML config file")
    mo.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    mo.add_argument("--machine", default=None, metavar="FILE",
                    help="a machine file (kernel_s, element_s, latency_s, bandwidth_Bps; "
                    "configs/machines/) instead of calibrating on this machine")
    mo.add_argument("--ranks", default=None, metavar="P,P,...",
                    help="rank counts to predict (default 1, 2, 4, ... up to model.layers "
                    "and 1024)")
    mo.add_argument("--exact", action="store_true",
                    help="also predict the exact MGRIT gradient (to mgrit.tol)")
    mo.add_argument("--write-machine", default=None, metavar="FILE",
                    help="write the calibrated numbers as a machine file")
    i = sub.add_parser("init", help="write the initialized network as OUT/checkpoints/"
                       "step_00000000.h5 (to start several methods from the same weights)")
    i.add_argument("config", help="YAML config file")
    i.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    i.add_argument("--out", required=True, help="output directory")
    f = sub.add_parser("info", help="a readable summary of a history or checkpoint file")
    f.add_argument("file", help="history.h5 or a checkpoint")
    sub.add_parser("schema", help="print every config key with its default and doc (Markdown)")
    _analysis_parsers(sub)
    for name, command in sub.choices.items():     # what --help says each command gives
        command.description = f"{command.description or ''}\n\n{outputs.of(name)}".strip()
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return p


def _analysis_parsers(sub) -> None:
    """Commands that are not MPI programs: job scripts, scaling studies, reports, plots."""
    j = sub.add_parser("job", help="print a SLURM job script from a template in jobs/")
    j.add_argument("template", help="cpu | gpu | array, or a template file")
    j.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="a template setting, e.g. ACCOUNT=proj (repeatable)")
    s = sub.add_parser("scaling", help="strong or weak scaling study: derived configs and job "
                       "scripts in one folder, run here (--local) or submitted (--submit)")
    s.add_argument("config", help="YAML config file")
    s.add_argument("--kind", required=True, choices=("strong", "weak"),
                   help="strong: the config's N on every rank count; weak: N proportional to P")
    s.add_argument("--ranks", required=True, help="rank counts, e.g. 1,2,4,8")
    s.add_argument("--layers-per-rank", type=int, default=None,
                   help="weak: N = this x P (default: the config's N / the smallest P)")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value in every run (repeatable)")
    s.add_argument("--steps", type=int, default=None, help="train.steps of every run")
    s.add_argument("--out", default=None,
                   help="study folder (default: studies/<config name>_<kind>)")
    s.add_argument("--force", action="store_true",
                   help="start an existing study again (deletes its ranks_* folders)")
    s.add_argument("--template", default="cpu", help="job template: cpu | gpu | a file")
    s.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="job template setting, e.g. ACCOUNT=proj, TIME=00:30:00 (repeatable)")
    s.add_argument("--ranks-per-node", type=_positive(int), default=None,
                   help="ranks (GPUs) per node of the jobs (default: SLURM places them)")
    w = s.add_mutually_exclusive_group()
    w.add_argument("--local", action="store_true",
                   help="run every rank count here, one after another, with mpiexec")
    w.add_argument("--submit", action="store_true", help="sbatch every job")
    s.add_argument("--launcher", default=None,
                   help="--local: MPI launcher, e.g. 'mpirun --oversubscribe -n {n}' "
                   "(default: the mpiexec next to this Python, else on PATH)")
    s.add_argument("--timeout", type=_positive(float), default=None,
                   help="--local: stop a command after this many seconds (default: none)")
    r = sub.add_parser("report", help="plots and a Markdown table of a scaling study or of "
                       "a folder of training runs")
    r.add_argument("folder", help="a study folder or a folder holding run folders")
    r.add_argument("--out", default=None, help="where to write (default: the folder itself)")
    pl = sub.add_parser("plot", help="plots of one training run")
    pl.add_argument("history", help="a history.h5")
    pl.add_argument("--out", default=None, help="where to write (default: next to the file)")


def _analysis(args) -> int:
    if args.command == "scaling":
        from mgrit_nn.commands.scaling import main as scaling

        return scaling(args)
    if args.command == "job":
        from mgrit_nn.commands.job import TemplateError, parse_vars, render_kind

        try:
            print(render_kind(args.template, parse_vars(args.var)), end="")
        except TemplateError as exc:
            print(f"mgrit-nn job: {exc}", file=sys.stderr)
            return 2
        return 0
    from mgrit_nn.analysis import AnalysisError, plot_history, report

    try:
        written = report(args.folder, args.out) if args.command == "report" \
            else plot_history(args.history, args.out)
    except (AnalysisError, OSError) as exc:
        print(f"mgrit-nn {args.command}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"written": [str(w) for w in written]}))
    return 0


def _positive(cast):
    """An argparse type: a number > 0 (argparse names the flag in its one-line error)."""
    def parse(text: str):
        value = cast(text)                  # ValueError: "invalid int value: 'x'"
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value
    parse.__name__ = cast.__name__
    return parse


def _check_args(args) -> None:
    """Arguments that are wrong whatever the config (checked with it: one message, exit 2)."""
    from mgrit_nn.config import ConfigError

    out = getattr(args, "out", None)
    if out is not None and not out.strip():
        raise ConfigError("--out: the output folder is an empty path (leave --out out for "
                          "the default out/<config name>)")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if getattr(args, "overwrite", False) and getattr(args, "resume", None):
        raise ConfigError("--overwrite deletes the run that --resume would continue: give one "
                          "of them")


_WHAT = {
    "train": "training {config}",
    "check": "checking {config}: the MGRIT forward solve, adjoint solve and gradient against "
             "the serial network",
    "bench": "timing one gradient of {config}: serial autograd, one-shot and exact MGRIT",
    "init": "writing the initial network of {config}",
    "model": "the performance model of {config}",
    "scaling": "preparing a {kind} scaling study of {config} on {ranks} ranks",
    "report": "reading {folder} (loading matplotlib)",
    "plot": "plotting {history} (loading matplotlib)",
}


def _announce(args) -> None:
    """The first line of a command, on rank 0's stderr, before anything slow is imported
    (torch, MPI and matplotlib take seconds to load, more on a busy machine). Not for
    schema, job and info, whose output is the product and comes at once (info: about 1.5 s
    on a 2-core machine at load 10)."""
    if args.command not in _WHAT or _rank() != "0":
        return
    what = _WHAT[args.command].format(**vars(args))
    if args.command in ("train", "check", "bench", "init", "model"):
        size = _launcher(("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS",
                          "SLURM_NTASKS"), "1")
        what += f" on {size} rank{'s' if size != '1' else ''}: loading torch, MPI and the config"
    print(f"mgrit-nn {args.command}: {what} ...", file=sys.stderr, flush=True)


def _overrides(args) -> list[str]:
    """``--set`` values; ``check`` first sets float64 (an exactness check, whatever dtype the
    config trains in), which its own ``--set runtime.dtype=...`` still overrides."""
    return (["runtime.dtype=float64"] if args.command == "check" else []) + args.set


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _announce(args)
    if args.command == "schema":
        from mgrit_nn.docs import schema_markdown

        print(schema_markdown())
        return 0
    if args.command == "info":
        from mgrit_nn.commands.info import info

        try:
            print(info(args.file))
        except (OSError, ValueError) as exc:
            print(f"mgrit-nn: {args.file}: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command in ("job", "scaling", "report", "plot"):
        return _analysis(args)
    from mgrit_nn.runtime import EXIT_STOPPED, abort_on_error, node_ranks, world

    comm = world()
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format=f"%(asctime)s rank {comm.Get_rank()} %(name)s: %(message)s")
    if comm.Get_rank() != 0:
        logging.getLogger().setLevel(logging.WARNING)
    with abort_on_error(comm):
        from mgrit_nn.setup_run import setup

        node_ranks()            # collective on first call: every rank, before any sub-communicator
        run = setup(args.config, _overrides(args), comm, check=lambda: _check_args(args))
        code = 0
        if args.command == "check":
            from mgrit_nn.commands.check import check

            out, passed = check(run)
            code = 0 if passed else 1
        elif args.command == "bench":
            from mgrit_nn.commands.bench import bench

            out = bench(run)
        elif args.command == "model":
            from mgrit_nn.commands.model import model_command

            out = model_command(run, args.machine, args.ranks, args.exact, args.write_machine)
        elif args.command == "init":
            from mgrit_nn.train.checkpoint import save
            from mgrit_nn.train.loop import Trainer

            path = save(Trainer(run), Path(args.out), 0)
            out = {"checkpoint": str(path)}
        else:
            from mgrit_nn.train.loop import train

            out_dir = args.out or str(Path("out") / Path(args.config).stem)
            out = train(run, out_dir, args.quiet, args.resume, args.init_from, args.overwrite)
            code = EXIT_STOPPED if out["stopped_by_signal"] else 0
        if comm.Get_rank() == 0:
            print(json.dumps(out), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
