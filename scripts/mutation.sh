#!/usr/bin/env bash
# Mutation testing (docs/reliability.md): go-gremlins mutates one file at a time (arithmetic,
# comparison boundaries and negations, ++/--, negatives), runs the tests of its package (a subset
# where the full suite is minutes long: TESTS below) against each mutant, and counts the mutants
# killed (a test failed) and lived (all passed). Niced, one worker, one file after another; each
# target's log and JSON go to ${MUT_LOG:-/tmp/fewstep-mutation}/.
#
#   go install github.com/go-gremlins/gremlins/cmd/gremlins@v0.6.0
#   scripts/mutation.sh                 # every target below
#   scripts/mutation.sh trainer/optim.go
set -uo pipefail
cd "$(dirname "$0")/.."
gremlins=${GREMLINS:-$(go env GOPATH)/bin/gremlins}
[[ -x $gremlins ]] || { echo "no gremlins: go install github.com/go-gremlins/gremlins/cmd/gremlins@v0.6.0" >&2; exit 2; }
logdir=${MUT_LOG:-/tmp/fewstep-mutation}
mkdir -p "$logdir"
only=${1:-}
# file | tests of its package to run per mutant (-run; -skip) ("" = all)
targets=(
	"trainer/optim.go|TestAdamW|TestToy|TestResume|TestSchedules|TestDecay|TestNonFinite|TestBadSteps|TestTooMany|TestDivergence|TestSave|TestCrash|TestInterrupt|TestNoFirstMoment|"
	"data/loader.go|TestLoader|TestFromJob|TestNonFinite|FuzzLoaderCursor|"
	"objectives/dmd.go|TestDMD|OneStepSharp"
	"trainer/checkpoint.go|TestResume|TestInterrupt|TestCrash|TestSave|TestDivergence|TestParseState|TestResolveCheckpoint|TestTooMany|Fuzz|"
	"models/safetensors.go||"
)
for t in "${targets[@]}"; do
	IFS='|' read -r file rest <<<"$t"
	[[ -n $only && $only != "$file" ]] && continue
	run=${rest%|*}
	skip=${rest##*|}
	pkg=$(dirname "$file")
	excl=()
	for f in "$pkg"/*.go; do
		b=$(basename "$f")
		[[ $b == *_test.go || $f == "$file" ]] && continue
		excl+=(-E "^${b//./\\.}\$")
	done
	flags=""
	[[ -n $run ]] && flags="-run=^($run)"
	[[ -n $skip ]] && flags="$flags -skip=$skip"
	name=${file//\//_}
	start=$(date +%s)
	GOFLAGS="$flags" nice -n 19 "$gremlins" unleash --workers 1 --test-cpu 1 --timeout-coefficient 10 \
		-o "$logdir/$name.json" "${excl[@]}" "./$pkg" >"$logdir/$name.log" 2>&1
	echo "$file ($(($(date +%s) - start))s, tests: ${flags:-all}): $(grep -E 'Killed:|Test efficacy' "$logdir/$name.log" | tr '\n' ' ')"
done
