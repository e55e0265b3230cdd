#!/usr/bin/env bash
# The whole test suite: serial tests, then the MPI tests under mpiexec on 1, 2, 3 and 4 ranks.
# One pytest output: the serial part, then rank 0's output of every MPI part (the other ranks'
# only when that part fails, and then only of a rank that failed other tests than rank 0), and
# one closing line over all parts: N passed, N failed, N skipped.
# The exit status is non-zero when any part failed.
# Every MPI test asserts on values shared by all ranks, so a failure never leaves ranks waiting;
# the timeout is a last guard against a hang.
# For trials: TESTS_SERIAL (default: tests --ignore=tests/mpi), TESTS_MPI (default: tests/mpi;
# empty: no MPI part), TESTS_RANKS (default: 1 2 3 4), e.g.
#   TESTS_SERIAL=tests/test_docs.py TESTS_MPI=tests/mpi/test_comm.py TESTS_RANKS=2 bash tests/run.sh
# TESTS_REPORTS=DIR keeps every part's junit XML (with each test's duration) in DIR.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
MPIEXEC=${MPIEXEC:-mpiexec}
read -r -a SERIAL <<< "${TESTS_SERIAL-tests --ignore=tests/mpi}"
read -r -a MPI_TESTS <<< "${TESTS_MPI-tests/mpi}"
read -r -a RANKS <<< "${TESTS_RANKS-1 2 3 4}"
if [ -n "${TESTS_REPORTS:-}" ]; then
  REPORTS=$TESTS_REPORTS
  mkdir -p "$REPORTS" || exit 2
else
  REPORTS=$(mktemp -d)
  trap 'rm -rf "$REPORTS"' EXIT
fi
# The suite starts ~150 Python processes: byte-compile the package once for all of them
# (where PYTHONDONTWRITEBYTECODE is set, each would compile it again).
python -m compileall -q mgrit_nn > /dev/null || exit 2
PYTEST=(python -m pytest -q -p no:cacheprovider)
failed=0

if [ "${#SERIAL[@]}" -gt 0 ]; then
  "${PYTEST[@]}" --junitxml="$REPORTS/serial.xml" "${SERIAL[@]}" || failed=1
fi

# One pytest per rank; rank 0 writes to the terminal, rank r > 0 into $REPORTS/mpiN.rank<r>.log.
# The rank comes from the launcher: MPICH/Hydra (PMI_RANK), Open MPI, PMIx, SLURM.
# Each rank gets its own pytest tmp folder: sharing pytest's numbered ones, the ranks race
# in removing the old ones ("PytestWarning: (rm_rf) error removing .../garbage-...").
# shellcheck disable=SC2016  # expanded by the rank's shell
PER_RANK='r=${PMI_RANK:-${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${SLURM_PROCID:-0}}}}
base=$1; shift
if [ "$r" = 0 ]; then exec "$@" --basetemp="$base.tmp.rank$r" --junitxml="$base.xml"; fi
exec "$@" --basetemp="$base.tmp.rank$r" --junitxml="$base.rank$r.xml" > "$base.rank$r.log" 2>&1'
failures() {   # the tests a junit report has failing or in error, one per line
  python -c 'import sys, xml.etree.ElementTree as ET
for c in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    if {x.tag for x in c} & {"failure", "error"}:
        print(c.get("classname"), c.get("name"))' "$1"
}
for n in "${RANKS[@]}"; do
  [ "${#MPI_TESTS[@]}" -gt 0 ] || break
  echo "== MPI tests on $n rank(s)"
  base="$REPORTS/mpi$n"
  if ! timeout 600 "$MPIEXEC" -n "$n" bash -c "$PER_RANK" per-rank "$base" \
      "${PYTEST[@]}" --with-mpi "${MPI_TESTS[@]}"; then
    failed=1
    for log in "$base".rank*.log; do
      [ -e "$log" ] || continue
      r=${log##*.rank}
      r=${r%.log}
      if [ -s "$base.xml" ] && [ -s "$base.rank$r.xml" ] &&
          [ "$(failures "$base.xml")" = "$(failures "$base.rank$r.xml")" ]; then
        echo "== MPI tests on $n rank(s): rank $r failed the same tests as rank 0"
      else
        echo "== MPI tests on $n rank(s): the output of rank $r"
        cat "$log"
      fi
    done
  fi
done

# The closing line: every part's tests, from its junit reports; a test of an MPI part counts
# as failed when it failed on any rank.
python - "$REPORTS" "${#SERIAL[@]}" "${#MPI_TESTS[@]}" "${RANKS[@]}" <<'EOF' || failed=1
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

reports, serial, mpi, ranks = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
parts = (["serial"] if serial else []) + ([f"mpi{n}" for n in ranks] if mpi else [])
ORDER = ("passed", "skipped", "errors", "failed")        # the worst outcome over the ranks wins
total = dict.fromkeys(ORDER, 0)
missing = []
for part in parts:
    if not (reports / f"{part}.xml").is_file():     # crashed or timed out before its report
        missing.append("serial" if part == "serial" else f"MPI on {part[3:]} rank(s)")
        total["errors"] += 1
        continue
    outcome = {}
    for path in [reports / f"{part}.xml", *sorted(reports.glob(f"{part}.rank*.xml"))]:
        for case in ET.parse(path).getroot().iter("testcase"):
            tags = {child.tag for child in case}
            now = "failed" if "failure" in tags else "errors" if "error" in tags else \
                "skipped" if "skipped" in tags else "passed"
            key = (case.get("classname"), case.get("name"))
            outcome[key] = max(outcome.get(key, "passed"), now, key=ORDER.index)
    for now in outcome.values():
        total[now] += 1
line = f"{total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped"
if total["errors"]:
    line += f", {total['errors']} errors"
names = [p if p == "serial" else f"MPI on {p[3:]} rank(s)" for p in parts]
note = f"; no report from: {', '.join(missing)}" if missing else ""
print(f"== {line} (all parts: {', '.join(names)}{note})")
sys.exit(1 if total["failed"] or total["errors"] else 0)
EOF
exit "$failed"
