#!/bin/bash
# bench/workers.sh: throughput and latency of atomizer's background workers,
# against a naive SKIP LOCKED queue, on a throwaway durable cluster.
# Run as root (Debian 12, PostgreSQL 15).  See bench/README.md.
# (bench/run, "make bench", is the full benchmark; this is the older,
# narrower one, kept for its batch_size sweep.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
JOBS=${JOBS:-50000}
LAT_N=${LAT_N:-500}
REPS=${REPS:-3}

bench_build
bench_cluster

echo "== drain throughput ($JOBS jobs per run, $REPS repetitions)"
$PY "$BENCH/drain.py" --host "$DIR" --port "$PORT" --jobs "$JOBS" --reps "$REPS" \
	--naive-script "$BENCH/naive_drain.sql" --out "$DIR/drain.json"

echo "== latency ($LAT_N jobs)"
$PY "$BENCH/latency.py" --host "$DIR" --port "$PORT" -n "$LAT_N" --out "$DIR/latency.json"

bench_log_errors
HEADER="## atomizer workers benchmark

$(bench_header_facts); \
durable (fsync, synchronous_commit on), shared_buffers 256MB, atomizer.max_workers 8; \
run took $(( $(date +%s) - START )) s; server log: $ERRORS ERROR/FATAL/PANIC lines."

echo
$PY "$BENCH/report.py" "$DIR/drain.json" "$DIR/latency.json" "$HEADER" | tee "$BENCH/results-workers.md"
echo
echo "(written to bench/results-workers.md)"
