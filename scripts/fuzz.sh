#!/usr/bin/env bash
# Runs every Go fuzz target of the project for SECONDS each (default 60), one target at a time, one
# worker (-parallel 1), niced; the log of each run goes to ${FUZZ_LOG:-/tmp/fewstep-fuzz}/<target>.log
# and a summary line (executions, new corpus entries, result) to stdout. A crasher is written by Go
# into the package's testdata/fuzz/<target>/: commit it, it becomes a regression case of `go test`.
#
#   scripts/fuzz.sh 600            # the 10-minute run of docs/reliability.md
#   scripts/fuzz.sh 30 FuzzParquet # one target
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
only=${2:-}
logdir=${FUZZ_LOG:-/tmp/fewstep-fuzz}
mkdir -p "$logdir"
targets=(
	./models:FuzzSafetensors
	./models:FuzzWanConfig
	./config:FuzzJobYAML
	./data:FuzzArrowIPC
	./data:FuzzParquet
	./data:FuzzLoaderCursor
	./trainer:FuzzStateJSON
	./eval:FuzzReadTable
)
fail=0
for pt in "${targets[@]}"; do
	pkg=${pt%%:*}
	name=${pt##*:}
	[[ -n $only && $only != "$name" ]] && continue
	log=$logdir/$name.log
	start=$(date +%s)
	nice -n 19 go test "$pkg" -run '^$' -fuzz "^${name}\$" -fuzztime "${secs}s" -parallel 1 >"$log" 2>&1
	rc=$?
	# the last progress line: "fuzz: elapsed: 10m0s, execs: 123456 (205/sec), new interesting: 12 (total: 40)"
	last=$(grep -E '^fuzz: elapsed' "$log" | tail -1)
	result=PASS
	if [[ $rc -ne 0 ]]; then
		result="FAIL (crasher in $pkg/testdata/fuzz/$name/)"
		fail=1
	fi
	echo "$name ($pkg) $(($(date +%s) - start))s: ${last#fuzz: } — $result"
done
exit $fail
