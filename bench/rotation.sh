#!/bin/bash
# bench/rotation.sh: the rotating-hot-table experiment (bench/rotation.sql,
# bench/rotation.py; results and reading in bench/README.md, "A rotating hot
# table").  A throwaway durable cluster as for make bench; as root.
# JOBS, CHUNK, EVERY (jobs per partition before a switch) and RUNS (e.g.
# rot:held,one:held) override the defaults of bench/rotation.py.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_cluster
"${PSQL[@]}" -d bench -f "$BENCH/rotation.sql" >/dev/null
$PY "$BENCH/rotation.py" --host "$DIR" --port "$PORT" --jobs "${JOBS:-1000000}" \
	--chunk "${CHUNK:-100000}" --every "${EVERY:-50000}" ${RUNS:+--runs "$RUNS"} --out "$DIR/rotation.json"
echo "== $(bench_header_facts | sed 's/, built from ?//')"
