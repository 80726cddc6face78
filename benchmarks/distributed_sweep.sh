#!/usr/bin/env bash
# The whole distributed benchmark of BENCHMARKS.md: timing at W = 1, 2, 4 (interleaved modes,
# median of 5) and peak memory per rank (one call per fresh process, every mode, W = 1, 2, 4;
# the ring also at W = 8).
#
#   benchmarks/distributed_sweep.sh           # TIME_SIZES=16384, MEM_SIZES="16384 65536"
#   TIME_SIZES="16384 65536" BACKWARD_SIZES=16384 benchmarks/distributed_sweep.sh
#       # also time 64k (long: ~30 calls of the whole sequence) and fwd+bwd at 16k
#
# PY (default .venv/bin/python) runs torch.distributed.run; results go to OUT (bench-out/).
# The default sweep took ~15 minutes on 2 loaded cores, the 64k memory runs most of it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench-out}
TIME_SIZES=${TIME_SIZES:-16384}
BACKWARD_SIZES=${BACKWARD_SIZES:-}
MEM_SIZES=${MEM_SIZES:-16384 65536}
export PYTHONPATH=${PYTHONPATH:-$PWD}
mkdir -p "$OUT"

run() {  # run W args...
    local w=$1
    shift
    "$PY" -m torch.distributed.run --nproc-per-node "$w" --master-addr 127.0.0.1 \
        --master-port "$(( 29500 + RANDOM % 1000 ))" benchmarks/distributed.py "$@" 2>&1 \
        | grep -v "^W1\|OMP_NUM_THREADS\|\*\*\*\*"
}

for w in 1 2 4; do
    # shellcheck disable=SC2086
    run "$w" --sizes $TIME_SIZES --backward-sizes $BACKWARD_SIZES --out "$OUT/distributed-$w.json"
done
for n in $MEM_SIZES; do
    run 1 --memory --sizes "$n" --out "$OUT/mem-$n-1.json"
    for w in 2 4; do
        for mode in ring allgather ulysses; do
            run "$w" --memory --modes "$mode" --sizes "$n" --out "$OUT/mem-$n-$w-$mode.json"
        done
    done
    # memory only (8 ranks on 2 cores say nothing about time): the ring from W = 4 to 8, where
    # every rank holds two blocks in flight on both sides of the comparison
    run 8 --memory --modes ring --sizes "$n" --out "$OUT/mem-$n-8-ring.json"
done
for w in 1 2 4; do  # ring's backward: the dK/dV accumulators travel with the blocks
    run "$w" --memory --backward --modes ring --sizes 16384 --out "$OUT/mem-bwd-16384-$w.json"
done
"$PY" benchmarks/distributed_table.py "$OUT"
