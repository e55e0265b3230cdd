#!/usr/bin/env bash
# The whole test suite: serial tests, then the MPI tests under mpiexec on 1, 2, 3 and 4 ranks.
# Every MPI test asserts on values shared by all ranks, so a failure never leaves ranks waiting;
# the timeout is a last guard against a hang.
set -euo pipefail
cd "$(dirname "$0")/.."
MPIEXEC=${MPIEXEC:-mpiexec}
python -m pytest -q -p no:cacheprovider tests --ignore=tests/mpi
for n in 1 2 3 4; do
  echo "== MPI tests on $n rank(s)"
  timeout 600 "$MPIEXEC" -n "$n" python -m pytest -q -p no:cacheprovider --with-mpi tests/mpi
done
