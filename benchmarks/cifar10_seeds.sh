#!/usr/bin/env bash
# benchmarks/cifar10.py once per seed, JOBS seeds at a time, then one table over all of them.
#
# One ResNet-20 run leaves a GPU mostly idle (small kernels, one batch at a time), so a GPU
# gets through many dense starts faster as parallel processes than one after another:
#
#     JOBS=8 benchmarks/cifar10_seeds.sh "3 4 5 6 7 8 9 10" --data DIR --model resnet20 \
#         --protocol quick --methods dense l1 l1+rec epfs epfs+rec slimming --device cuda \
#         --dense-per-seed --grid-seed 3 --out out/cifar10-gpu
#
# Hyper-parameters are chosen once, on the grid seed's validation: run that seed alone first
# (cifar10.py --seeds 3 --grid-seed 3 ...) so that grid.json exists before the processes start,
# and give every process the same --grid-seed.
#
# Every argument after the seeds goes to each process (give --out, and --dense-per-seed for a
# dense start per seed); each process gets --seeds N --threads ${THREADS:-1} --no-progress and
# logs to ${LOG_DIR:-out/cifar10-logs}/seedN.log. Rows already on disk are reused as usual,
# so a run cut short can be started again. Decode the data once before (any run of
# cifar10.py on it fills the cache), or the processes all decode it at the same time.
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,16p' "$0" >&2
    exit 2
fi
seeds=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
jobs=${JOBS:-4}
logs=${LOG_DIR:-out/cifar10-logs}
mkdir -p "$logs"

running=0
for seed in $seeds; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true  # a failed seed is in its log; the others go on
        running=$((running - 1))
    fi
    echo "seed $seed: $logs/seed$seed.log"
    "$python" "$here/cifar10.py" "$@" --seeds "$seed" --threads "${THREADS:-1}" --no-progress \
        >"$logs/seed$seed.log" 2>&1 &
    running=$((running + 1))
done
wait || true
# shellcheck disable=SC2086  # the seeds are words
"$python" "$here/cifar10.py" "$@" --seeds $seeds --report
