#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md once and records the medians under
# the run name given (default: the date), then redraws docs/benchmarks.svg.
#
#   tools/run_benches.sh run1
#
# The benchmarks are the workspace member benches/ (static_call_benches).
#
# Honours CARGO_TARGET_DIR (criterion writes to $CARGO_TARGET_DIR/criterion).
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-$(date -u +%Y-%m-%dT%H:%M)}"
# Absolute: cargo runs the benchmarks in benches/, where criterion resolves
# a relative CARGO_TARGET_DIR.
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
export CARGO_TARGET_DIR="$target"
out="${BENCH_OUT:-docs/benchmarks.json}"
mkdir -p "$(dirname "$out")"
for i in 1 2 3; do cargo bench -p static_call_benches --bench calls -- --table; done | tee "$target/costs-table-$run.txt"
for i in 1 2; do cargo bench -p static_call_benches --bench regimes -- --table; done | tee "$target/regimes-table-$run.txt"
cargo bench -p static_call_benches --bench calls
cargo bench -p static_call_benches --bench regimes
cargo bench -p static_call_benches --bench updates
STATIC_CALL_WRITER=mprotect cargo bench -p static_call_benches --bench updates
note="$(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs, Linux $(uname -r), $(rustc --version | cut -d' ' -f1-2), run $run"
python3 tools/bench_chart.py collect --criterion "$target/criterion" --run "$run" --out "$out" --note "$note"
python3 tools/bench_chart.py render --data "$out"
