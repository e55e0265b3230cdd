"""Bad-input probe (issue 18, "Must show 1"): every wrong input one clear message.

Runs each case as its own process, ``mpiexec -n P python -m mgrit_nn ...`` for the MPI
commands (mostly P = 2, some 1 and 3) and plain ``python -m mgrit_nn ...`` for job,
scaling, report, plot, info and schema, with a timeout, on small peaks configs and
scratch folders; classifies every result and prints a Markdown table and the totals:

- clear:   exit 2 (or the case's documented code), exactly one non-empty stderr line
           (log lines aside) holding the message once, naming the key/file/flag, no
           traceback;
- warning: a legal but suspicious input: exit 0 and a stderr line naming the key;
- unclear: one line, but the wrong exit code or the key/file/flag not named;
- multi-line, raw error (a traceback, an exception class name such as ValueError at
           the start of the message, or a library's own words), silently accepted (exit
           0, nothing said), hang (timeout).

The config cases are generated from the schema (every key: a wrong type, a violated
bound, a nonsense value where the key has a bound or choices); the rest are written out
below. ``tests/test_bad_inputs.py`` loads this file and runs a fast subset.

    python benchmarks/bad_inputs.py [--only REGEX] [--json out.json] [--timeout 60]

In the table, SMALL stands for the overrides that make every run small and short.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
MPIEXEC = shutil.which("mpiexec") or str(Path(sys.executable).with_name("mpiexec"))
CFG = "configs/peaks.yaml"
SMALL = ("--set", "model.layers=8", "--set", "data.n_train=32", "--set", "data.n_val=8",
         "--set", "train.steps=2", "--set", "train.eval_every=0", "--set",
         "runtime.threads=1", "--set", "bench.repeats=1", "--set", "bench.warmup=0")
MPI_COMMANDS = ("check", "train", "bench", "init")
# the section a method owns -> a method that reads it (its bounds are checked then)
SECTION_METHOD = {"critic": "local_critic", "penalty": "penalty", "parpas": "parpas",
                  "clip": "clipped"}
CLASSES = ("clear", "warning", "unclear", "multi-line", "raw error", "silently accepted",
           "hang")


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]          # after ``python -m mgrit_nn``; {tmp} = the case's folder
    named: str | tuple[str, ...]   # what the message must name: key, file or flag (all of)
    ranks: int | None = 2          # None: not an MPI program (plain python)
    expect: str = "error"          # "error" | "warning"
    code: int = 2                  # the documented exit status of an error
    setup: str | None = None       # a SETUPS entry that writes files into {tmp} first
    inproc: bool = False           # a config-only case: load_config + validate raise it


def _set(*pairs: str) -> tuple[str, ...]:
    return tuple(a for p in pairs for a in ("--set", p))


def train(*extra: str) -> tuple[str, ...]:
    return ("train", CFG, *SMALL, "--quiet", "--out", "{tmp}/out", *extra)


# -- the config cases, from the schema ------------------------------------------------
def _misspell(word: str) -> str:
    """A near miss of a choice: two inner letters swapped, or the last one doubled."""
    if len(word) >= 4:
        return word[0] + word[2] + word[1] + word[3:]
    return word + word[-1]


def _kinds(tp) -> tuple[set, list]:
    """The base types of a field's annotation and its Literal choices."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return {"choice"}, list(args)
    if args and origin is not None:
        kinds, choices = set(), []
        for a in args:
            k, c = _kinds(a)
            kinds |= k
            choices += c
        if origin is list:
            kinds.add("list")
        return kinds, choices
    return {tp.__name__ if isinstance(tp, type) else str(tp)}, []


def _values(f, tp) -> list[tuple[str, str]]:
    """(label, YAML value) of a wrong type, a violated bound and a nonsense value."""
    kinds, choices = _kinds(tp)
    ge, gt = f.metadata.get("ge"), f.metadata.get("gt")
    out = []
    if "choice" in kinds:
        out += [("type", "3"), ("nonsense", _misspell(str(choices[-1])))]
    elif "bool" in kinds:
        out += [("type", "sometimes")]
    elif "str" in kinds:
        out += [("type", "[1, 2]")]
    else:
        out += [("type", "abc")]
        number = "float" if "float" in kinds else "int"
        if ge is not None:
            out.append(("bound", str(int(ge) - 1) if number == "int" else str(ge - 1.0)))
        if gt is not None:
            out.append(("bound", str(int(gt)) if number == "int" else str(float(gt))))
        out.append(("nonsense", ".nan" if number == "float" else str(2 ** 70)))
    return out


def config_cases() -> list[Case]:
    from mgrit_nn.config import SECTIONS

    cases = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        method = SECTION_METHOD.get(section)
        pre = _set(f"train.method={method}") if method else ()
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            choice = "choice" in _kinds(hints[f.name])[0]
            for label, value in _values(f, hints[f.name]):
                named = (key, "did you mean") if choice and label == "nonsense" else key
                cases.append(Case(f"{key} {label}", train(*pre, *_set(f"{key}={value}")),
                                  named, inproc=True))
    return cases


# -- files the cases read ---------------------------------------------------------------
def _write(name: str, text: str | bytes):
    def setup(tmp: Path) -> None:
        p = tmp / name
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
    return setup


def _checkpoint(tmp: Path) -> None:
    """A step-0 checkpoint of the small peaks network (adam) in {tmp}/ck, and a history."""
    subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "mgrit_nn", "init", CFG, *SMALL,
                    "--out", str(tmp / "ck")], cwd=ROOT, capture_output=True, timeout=120,
                   check=True)
    import h5py

    with h5py.File(tmp / "history.h5", "w") as f:
        f.create_group("steps")


def _history(tmp: Path) -> None:
    """A real run's folder, {tmp}/run (history.h5 of 2 steps, a checkpoint), and a file."""
    subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "mgrit_nn", "train", CFG, *SMALL,
                    "--quiet", "--out", str(tmp / "run")], cwd=ROOT, capture_output=True,
                   timeout=300, check=True)
    (tmp / "afile").write_text("x\n")


def _truncated(tmp: Path) -> None:
    _checkpoint(tmp)
    data = (tmp / "ck/checkpoints/step_00000000.h5").read_bytes()
    (tmp / "cut.h5").write_bytes(data[: len(data) // 3])


def _study(tmp: Path) -> None:
    (tmp / "study").mkdir()
    (tmp / "study/study.json").write_text("{not json")


SETUPS = {
    "dup": _write("c.yaml", "model:\n  width: 8\n  width: 16\n"),
    "tabs": _write("c.yaml", "model:\n\twidth: 8\n"),
    "binary": _write("c.yaml", bytes(range(256)) * 4),
    "empty": _write("c.yaml", ""),
    "comments": _write("c.yaml", "# nothing here\n\n"),
    "list": _write("c.yaml", "- model\n- train\n"),
    "scalar": _write("c.yaml", "42\n"),
    "unclosed": _write("c.yaml", "model: {width: 8\n"),
    "unknown_section": _write("c.yaml", "modle:\n  width: 8\n"),
    "unknown_key": _write("c.yaml", "model:\n  widht: 8\n"),
    "section_scalar": _write("c.yaml", "model: 3\n"),
    "null_value": _write("c.yaml", "model:\n  width:\n"),
    "python_tag": _write("c.yaml", "model: !!python/object/apply:os.getcwd []\n"),
    "int_key": _write("c.yaml", "1: 2\n"),
    "latin1": _write("c.yaml", "model:\n  kind: d\xe9nse\n".encode("latin-1")),
    "text": _write("notes.txt", "not a checkpoint\n"),
    "file": _write("afile", "x\n"),
    "empty_file": _write("empty.h5", b""),
    "ckpt": _checkpoint,
    "truncated": _truncated,
    "study": _study,
    "history": _history,
    "template": _write("t.sbatch", "#!/bin/bash\n#SBATCH --time={{TIME}}\necho {{NOPE}}\n"),
}


def yaml_cases() -> list[Case]:
    c = "{tmp}/c.yaml"
    small = (*SMALL, "--quiet", "--out", "{tmp}/out")
    rows = [("yaml duplicate key", "dup", "width"), ("yaml tab indentation", "tabs", c),
            ("yaml binary file", "binary", c), ("yaml list at top", "list", c),
            ("yaml scalar at top", "scalar", c), ("yaml unclosed brace", "unclosed", c),
            ("yaml unknown section", "unknown_section", "modle"),
            ("yaml unknown key", "unknown_key", "model.widht"),
            ("yaml section not a mapping", "section_scalar", "model"),
            ("yaml null value", "null_value", "model.width"),
            ("yaml python tag", "python_tag", c), ("yaml int key", "int_key", "1"),
            ("yaml latin-1 text", "latin1", c)]
    cases = [Case(n, ("train", c, *small), named, setup=s, inproc=True) for n, s, named in rows]
    cases += [
        Case("yaml empty file", ("train", c, *small), c, setup="empty", expect="warning",
             inproc=True),
        Case("yaml only comments", ("train", c, *small), c, setup="comments",
             expect="warning", inproc=True),
        Case("config is a directory", ("train", "{tmp}", *small), "{tmp}", inproc=True),
        Case("config missing file", ("train", "{tmp}/nope.yaml", *small), "{tmp}/nope.yaml",
             inproc=True),
        Case("config missing, check -n 3", ("check", "{tmp}/nope.yaml"), "{tmp}/nope.yaml",
             ranks=3, inproc=True),
    ]
    return cases


def set_cases() -> list[Case]:
    """--set syntax, unknown and misspelt keys, sections and choices ("did you mean")."""
    rows = [("--set without =", "model.width", "model.width"),
            ("--set without section", "width=8", "width"),
            ("--set three parts", "model.width.x=8", "model.width.x"),
            ("--set empty section", ".width=8", ".width"),
            ("--set empty value", "model.width=", "model.width"),
            ("--set unparsable value", "model.width=[8", "model.width"),
            ("--set unknown key widht", "model.widht=8", "did you mean 'model.width'"),
            ("--set unknown section modle", "modle.width=8", "did you mean 'model'"),
            ("--set unknown section trian", "trian.lr=0.1", "did you mean 'train'"),
            ("--set key in the wrong section", "model.lr=0.1", "did you mean 'train.lr'"),
            ("--set method oneshoot", "train.method=oneshoot", "did you mean 'oneshot'"),
            ("--set activation tahn", "model.activation=tahn", "did you mean 'tanh'"),
            ("--set optimizer Adam", "train.optimizer=Adam", "did you mean 'adam'"),
            ("--set data.name peak", "data.name=peak", "did you mean 'peaks'"),
            ("--set dtype float63", "runtime.dtype=float63", "did you mean 'float64'"),
            ("--set relax list typo", "mgrit.relax=[FCF, FFC]", "mgrit.relax")]
    return [Case(n, train("--set", v), named, inproc=True) for n, v, named in rows]


def value_cases() -> list[Case]:
    """The issue's items 7-10 and cross-field checks, on 1, 2 and 3 ranks."""
    rows = [
        ("width 1e6 (memory)", ["model.width=1000000"], "model.width", 2),
        ("n_train 1e10 (YAML string)", ["data.n_train=1e10"], "data.n_train", 2),
        ("n_train 10^10 (memory)", ["data.n_train=10000000000"], "data.n_train", 2),
        ("layers 1e8 (memory)", ["model.layers=100000000"], "model.layers", 2),
        ("seed 1e23 (YAML string)", ["model.seed=1e23"], "model.seed", 2),
        ("seed 1.0e23 (float)", ["model.seed=1.0e+23"], "model.seed", 2),
        ("data.seed negative", ["data.seed=-1"], "data.seed", 2),
        ("batch > n_train", ["data.batch_size=33"], "data.batch_size", 2),
        ("factor negative", ["train.factor=-0.5"], "train.factor", 2),
        ("milestones negative", ["train.milestones=[1, -3]"], "train.milestones", 2),
        ("lbfgs_max_ls 0", ["train.optimizer=lbfgs", "train.lbfgs_max_ls=0"],
         "train.lbfgs_max_ls", 2),
        ("lbfgs with mini-batches", ["train.optimizer=lbfgs", "data.batch_size=8"],
         "train.optimizer", 2),
        ("momentum negative", ["train.optimizer=sgd", "train.momentum=-0.1"],
         "train.momentum", 2),
        ("weight_decay negative", ["train.weight_decay=-1"], "train.weight_decay", 2),
        ("lr inf", ["train.lr=.inf"], "train.lr", 2),
        ("T inf", ["model.T=.inf"], "model.T", 2),
        ("data_replicas 0", ["parallel.data_replicas=0"], "parallel.data_replicas", 2),
        ("data_replicas 2 on 3 ranks", ["parallel.data_replicas=2"],
         "parallel.data_replicas", 3),
        ("layers 1 on 3 ranks", ["model.layers=1"], "model.layers", 3),
        ("serial on 3 ranks", ["train.method=serial"], "train.method", 3),
        ("serial on 2 ranks", ["train.method=serial"], "train.method", 2),
        ("batch -1 on 1 rank", ["data.batch_size=-1"], "data.batch_size", 1),
        ("n_train 0 synthetic", ["data.n_train=0"], "data.n_train", 1),
        ("n_train negative", ["data.n_train=-5"], "data.n_train", 2),
        ("parpas coarsen not a divisor", ["train.method=parpas", "model.layers=9"],
         "parpas.coarsen", 2),
        ("conv critic on dense", ["train.method=local_critic", "critic.kind=conv"],
         "critic.kind", 2),
        ("mnist without path", ["data.name=mnist"], "data.path", 2),
        ("mnist path missing", ["data.name=mnist", "data.path={tmp}/nope"], "data.path", 2),
        ("cuda without GPU", ["runtime.device=cuda"], "runtime.device", 2),
        ("cfactor empty list", ["mgrit.cfactor=[]"], "mgrit.cfactor", 2),
        ("penalty tol empty list", ["train.method=penalty", "penalty.tol=[]"], "penalty.tol",
         2),
        ("mmap store_dir unwritable", ["train.method=penalty", "penalty.store=mmap",
                                       "penalty.store_dir=/proc/no-such-store"],
         "penalty.store_dir", 2),
        ("threads 10^6", ["runtime.threads=1000000"], "runtime.threads", 2),
    ]
    return [Case(n, train(*_set(*v)), named, ranks=r, inproc=True) for n, v, named, r in rows]


def cli_cases() -> list[Case]:
    ck = "{tmp}/ck/checkpoints/step_00000000.h5"
    t = ("train", CFG, *SMALL, "--quiet")
    rows = [
        ("no command", (), "command", 2, None),
        ("unknown command", ("bogus",), "bogus", 2, None),
        ("misspelt command trian", ("trian", CFG), "trian", 2, None),
        ("train without config", ("train",), "config", 2, None),
        ("train two configs", ("train", CFG, CFG), CFG, 2, None),
        ("unknown flag --outt", ("train", CFG, "--outt", "x"), "--outt", 2, None),
        ("--set without argument", ("train", CFG, "--set"), "--set", 2, None),
        ("--out without argument", ("train", CFG, "--out"), "--out", 2, None),
        ("--resume without argument", ("train", CFG, "--resume"), "--resume", 2, None),
        ("--quiet with a value", ("train", CFG, "--quiet=yes"), "--quiet", 2, None),
        ("--resume and --init-from", ("train", CFG, "--resume", "latest", "--init-from", ck),
         "--init-from", 2, None),
        ("--out empty", (*t, "--out", ""), "--out", 2, None),
        ("--out is a file", (*t, "--out", "{tmp}/afile"), "{tmp}/afile", 2, "file"),
        ("--out below a file", (*t, "--out", "{tmp}/afile/run"), "{tmp}/afile", 2, "file"),
        ("--out unwritable", (*t, "--out", "/proc/no-such-out"), "/proc/no-such-out", 2,
         None),
        ("--out unwritable -n 1", (*t, "--out", "/proc/no-such-out"), "/proc/no-such-out",
         1, None),
        ("--resume missing file", (*t, "--out", "{tmp}/o", "--resume", "{tmp}/nope.h5"),
         "{tmp}/nope.h5", 2, None),
        ("--resume a text file", (*t, "--out", "{tmp}/o", "--resume", "{tmp}/notes.txt"),
         "{tmp}/notes.txt", 2, "text"),
        ("--resume a directory", (*t, "--out", "{tmp}/o", "--resume", "{tmp}"), "{tmp}", 2,
         None),
        ("--resume an empty file", (*t, "--out", "{tmp}/o", "--resume", "{tmp}/empty.h5"),
         "{tmp}/empty.h5", 2, "empty_file"),
        ("--resume latest, nothing there", (*t, "--out", "{tmp}/o", "--resume", "latest"),
         "latest", 2, None),
        ("--resume a history file", (*t, "--out", "{tmp}/o", "--resume", "{tmp}/history.h5"),
         "{tmp}/history.h5", 2, "ckpt"),
        ("--resume a truncated checkpoint", (*t, "--out", "{tmp}/o", "--resume",
                                             "{tmp}/cut.h5"), "{tmp}/cut.h5", 2, "truncated"),
        ("--init-from missing file", (*t, "--out", "{tmp}/o", "--init-from", "{tmp}/nope.h5"),
         "{tmp}/nope.h5", 2, None),
        ("--init-from a text file", (*t, "--out", "{tmp}/o", "--init-from",
                                     "{tmp}/notes.txt"), "{tmp}/notes.txt", 2, "text"),
        ("--init-from other width", (*t, *_set("model.width=4"), "--out", "{tmp}/o",
                                     "--init-from", ck), ck, 2, "ckpt"),
        ("--resume other layers -n 3", (*t, *_set("model.layers=12"), "--out", "{tmp}/o",
                                        "--resume", ck), ck, 3, "ckpt"),
        ("--resume adam checkpoint with sgd", (*t, *_set("train.optimizer=sgd"), "--out",
                                               "{tmp}/o", "--resume", ck), "train.optimizer",
         2, "ckpt"),
        ("--resume into a used --out", (*t, "--out", "{tmp}/ck", "--overwrite", "--resume",
                                        ck), "--overwrite", 2, "ckpt"),
        ("fresh run into a used --out", (*t, "--out", "{tmp}/ck"), "{tmp}/ck", 2, "ckpt"),
        ("init without --out", ("init", CFG), "--out", 2, None),
        ("init --out is a file", ("init", CFG, *SMALL, "--out", "{tmp}/afile"),
         "{tmp}/afile", 2, "file"),
        ("check with --out", ("check", CFG, "--out", "x"), "--out", 2, None),
        ("check -n 1 unknown key", ("check", CFG, *_set("model.depth=3")), "model.depth", 1,
         None),
        ("bench -n 3 bad bound", ("bench", CFG, *SMALL, *_set("bench.repeats=0")),
         "bench.repeats", 3, None),
        ("init -n 1 bad type", ("init", CFG, *_set("model.layers=x"), "--out", "{tmp}/o"),
         "model.layers", 1, None),
    ]
    cases = [Case(n, a, named, ranks=r, setup=s) for n, a, named, r, s in rows]
    cases += [Case("--resume with other batch_size", (*t, *_set("data.batch_size=16"), "--out",
                                                      "{tmp}/o", "--resume", ck),
                   "data.batch_size", expect="warning", setup="ckpt"),
              Case("--resume with other n_train", (*t, *_set("data.n_train=64"), "--out",
                                                   "{tmp}/o", "--resume", ck),
                   "data.n_train", expect="warning", setup="ckpt")]
    return cases


def plain_cases() -> list[Case]:
    """The commands that are not MPI programs."""
    s = ("scaling", CFG, "--out", "{tmp}/st")
    rows = [
        ("info without file", ("info",), "file", None),
        ("info missing file", ("info", "{tmp}/nope.h5"), "{tmp}/nope.h5", None),
        ("info a directory", ("info", "{tmp}"), "{tmp}", None),
        ("info a text file", ("info", "{tmp}/notes.txt"), "{tmp}/notes.txt", "text"),
        ("info an empty file", ("info", "{tmp}/empty.h5"), "{tmp}/empty.h5", "empty_file"),
        ("info a truncated checkpoint", ("info", "{tmp}/cut.h5"), "{tmp}/cut.h5", "truncated"),
        ("schema with an argument", ("schema", "model"), "model", None),
        ("job unknown template", ("job", "gpuu"), "gpuu", None),
        ("job --var without =", ("job", "cpu", "--var", "ACCOUNT"), "ACCOUNT", None),
        ("job --var unknown name", ("job", "cpu", "--var", "NOPE=1"), "NOPE", None),
        ("job --var lower case", ("job", "cpu", "--var", "account=x"), "account", None),
        ("job template file missing", ("job", "{tmp}/nope.sbatch"), "{tmp}/nope.sbatch", None),
        ("job template with unknown setting", ("job", "{tmp}/t.sbatch"), "NOPE", "template"),
        ("scaling without --kind", ("scaling", CFG, "--ranks", "1,2"), "--kind", None),
        ("scaling --kind bad", (*s, "--kind", "strongg", "--ranks", "1,2"), "--kind", None),
        ("scaling --ranks x", (*s, "--kind", "strong", "--ranks", "1,x"), "--ranks", None),
        ("scaling --ranks 0", (*s, "--kind", "strong", "--ranks", "0,2"), "--ranks", None),
        ("scaling --ranks empty", (*s, "--kind", "strong", "--ranks", ""), "--ranks", None),
        ("scaling --layers-per-rank strong", (*s, "--kind", "strong", "--ranks", "1,2",
                                              "--layers-per-rank", "8"), "--layers-per-rank",
         None),
        ("scaling --layers-per-rank 0", (*s, "--kind", "weak", "--ranks", "1,2",
                                         "--layers-per-rank", "0"), "--layers-per-rank", None),
        ("scaling --steps 0", (*s, "--kind", "strong", "--ranks", "1,2", "--steps", "0"),
         "--steps", None),
        ("scaling --steps x", (*s, "--kind", "strong", "--ranks", "1,2", "--steps", "x"),
         "--steps", None),
        ("scaling --local and --submit", (*s, "--kind", "strong", "--ranks", "1,2",
                                          "--local", "--submit"), "--submit", None),
        ("scaling --timeout x", (*s, "--kind", "strong", "--ranks", "1,2", "--timeout", "x"),
         "--timeout", None),
        ("scaling --timeout negative", (*s, "--kind", "strong", "--ranks", "1,2", "--local",
                                        "--timeout", "-5"), "--timeout", None),
        ("scaling --ranks-per-node 0", (*s, "--kind", "strong", "--ranks", "1,2",
                                        "--ranks-per-node", "0"), "--ranks-per-node", None),
        ("scaling --template missing", (*s, "--kind", "strong", "--ranks", "1,2",
                                        "--template", "nope"), "nope", None),
        ("scaling --out is a file", ("scaling", CFG, "--kind", "strong", "--ranks", "1,2",
                                     "--out", "{tmp}/afile"), "{tmp}/afile", "file"),
        ("scaling missing config", ("scaling", "{tmp}/nope.yaml", "--kind", "strong",
                                    "--ranks", "1,2"), "{tmp}/nope.yaml", None),
        ("scaling bad --set", (*s, "--kind", "strong", "--ranks", "1,2", "--set",
                               "model.widht=3"), "model.widht", None),
        ("scaling --var clash", (*s, "--kind", "strong", "--ranks", "1,2", "--var",
                                 "NTASKS=4"), "NTASKS", None),
        ("scaling layers < ranks", (*s, "--kind", "strong", "--ranks", "1,16",
                                    "--set", "model.layers=8"), "model.layers", None),
        ("report missing folder", ("report", "{tmp}/nope"), "{tmp}/nope", None),
        ("report a file", ("report", "{tmp}/afile"), "{tmp}/afile", "file"),
        ("report an empty folder", ("report", "{tmp}"), "{tmp}", None),
        ("report a broken study.json", ("report", "{tmp}/study"), "study.json", "study"),
        ("plot missing file", ("plot", "{tmp}/nope.h5"), "{tmp}/nope.h5", None),
        ("plot a text file", ("plot", "{tmp}/notes.txt"), "{tmp}/notes.txt", "text"),
        ("plot a directory", ("plot", "{tmp}"), "{tmp}", None),
        ("plot an empty history", ("plot", "{tmp}/history.h5"), "{tmp}/history.h5", "ckpt"),
        ("plot --out is a file", ("plot", "{tmp}/run/history.h5", "--out", "{tmp}/afile"),
         "{tmp}/afile", "history"),
        ("plot a checkpoint", ("plot", "{tmp}/ck/checkpoints/step_00000000.h5"),
         "step_00000000.h5", "ckpt"),
    ]
    return [Case(n, a, named, ranks=None, setup=st) for n, a, named, st in rows]


def all_cases() -> list[Case]:
    cases = config_cases() + yaml_cases() + set_cases() + value_cases() + cli_cases() + \
        plain_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


# -- running and classifying --------------------------------------------------------------
# not the message: log lines, and the line a command starts with (what it does, "...")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ rank \d+ |^mgrit-nn \w+: .* \.\.\.$")
RAW = re.compile(r"(^|: )(\w+\.)*[A-Z]\w*(Error|Exception|Interrupt)\b|Traceback|MPI_Abort|"
                 r"BAD TERMINATION|HDF5-DIAG|\[Errno|Segmentation fault|Killed|"
                 r"Unable to (synchronously )?\w+|file signature not found|errno = ")
PREFIX = re.compile(r"mgrit-nn( \w+)?: (config error: )?")


def command(case: Case, tmp: Path) -> list[str]:
    args = [a.replace("{tmp}", str(tmp)) for a in case.args]
    py = [sys.executable, "-m", "mgrit_nn", *args]
    return py if case.ranks is None else [MPIEXEC, "-n", str(case.ranks), *py]


def classify(case: Case, rc: int | None, stderr: str, stdout: str, tmp: Path) -> str:
    named = [n.replace("{tmp}", str(tmp)) for n in
             ((case.named,) if isinstance(case.named, str) else case.named)]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    said = [ln for ln in lines if not LOG_LINE.match(ln)]
    if rc is None:
        return "hang"
    if "Traceback" in stderr + stdout:
        return "raw error"
    if rc == 0:
        return "warning" if any(all(n in ln for n in named) for ln in lines) \
            else "silently accepted"
    if any(RAW.search(ln) for ln in said):
        return "raw error"
    if len(said) != 1:
        return "multi-line" if said else "raw error"
    line = said[0]
    if rc != case.code or not all(n in line for n in named) or len(PREFIX.findall(line)) > 1:
        return "unclear"
    return "clear"


def _spawn(cmd: list[str], env: dict, timeout: float) -> tuple[int | None, str, str]:
    """(exit status or None after the timeout, stdout, stderr) of one command; the whole
    process group is killed at the timeout."""
    try:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    except BlockingIOError as exc:
        return -1, "", f"probe: cannot start the command: {exc}"
    try:
        stdout, stderr = p.communicate(timeout=timeout)
        return p.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        stdout, stderr = p.communicate()
        return None, stdout, stderr


def run_case(case: Case, root: Path, timeout: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="case_", dir=root))
    if case.setup:
        SETUPS[case.setup](tmp)
    cmd = command(case, tmp)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MGRIT_NN_TRACEBACK", None)
    t0 = time.perf_counter()
    for attempt in range(4):         # a busy machine may refuse a fork (EAGAIN): try again
        rc, stdout, stderr = _spawn(cmd, env, timeout * (1 + (attempt > 0)))
        busy = "Resource temporarily unavailable" in stderr
        if not busy and (rc is not None or attempt) or attempt == 3:
            break                    # a timeout counts as a hang when a second one, twice
        time.sleep(10 if busy else 0)   # as long, times out too (a busy machine is slow)
    cls = classify(case, rc, stderr, stdout, tmp)
    said = [ln for ln in stderr.splitlines() if ln.strip() and not LOG_LINE.match(ln)]
    first = (said or [ln for ln in stderr.splitlines() if ln.strip()] or [""])[0]
    shutil.rmtree(tmp, ignore_errors=True)
    shown = " ".join(cmd[cmd.index("mgrit_nn") + 1:]).replace(" ".join(SMALL), "SMALL")
    return {"case": case.name, "command": shown.replace(str(tmp), "{tmp}"),
            "ranks": case.ranks, "expect": case.expect, "class": cls, "rc": rc,
            "lines": len(said), "first_line": first.replace(str(tmp), "{tmp}"),
            "seconds": round(time.perf_counter() - t0, 1)}


def table(results: list[dict]) -> str:
    def cell(text: str, n: int = 160) -> str:
        text = text if len(text) <= n else text[: n - 1] + "…"
        return text.replace("|", "\\|")
    rows = ["| case | command | P | class | rc | first line of stderr |",
            "|---|---|---|---|---|---|"]
    rows += [f"| {cell(r['case'])} | `{cell(r['command'], 90)}` | {r['ranks'] or '-'} | "
             f"{r['class']} | {r['rc']} | {cell(r['first_line'])} |" for r in results]
    totals = {c: sum(r["class"] == c for r in results) for c in CLASSES}
    rows += ["", "| class | cases |", "|---|---|"]
    rows += [f"| {c} | {n} |" for c, n in totals.items()] + [f"| total | {len(results)} |"]
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="run the cases whose name matches REGEX")
    ap.add_argument("--jobs", type=int, default=1, help="cases at once (default 1: serial)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a 'hang'")
    ap.add_argument("--json", default=None, help="also write the results as JSON")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--again", action="store_true",
                    help="keep the results already in --json, run only the other cases")
    args = ap.parse_args()
    cases = [c for c in all_cases() if args.only is None or re.search(args.only, c.name)]
    done = json.loads(Path(args.json).read_text()) if args.again and args.json and \
        Path(args.json).is_file() else []
    cases = [c for c in cases if c.name not in {r["case"] for r in done}]
    if args.list:
        print("\n".join(f"{c.name}: mgrit_nn {' '.join(c.args)}" for c in cases))
        return 0
    root = Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(run_case, c, root, args.timeout) for c in cases]
        results = list(done)
        for i, fut in enumerate(futures):
            results.append(fut.result())
            r = results[-1]
            print(f"[{i + 1}/{len(cases)}] {r['class']:>17}  {r['case']}", file=sys.stderr,
                  flush=True)
            if args.json:                    # what is done survives an interrupted probe
                Path(args.json).write_text(json.dumps(results, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
