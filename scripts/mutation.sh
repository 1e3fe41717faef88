#!/usr/bin/env bash
# Mutation testing (docs/reliability.md): go-gremlins mutates one file at a time (arithmetic,
# comparison boundaries and negations, ++/--, negatives), runs the tests of its package against each
# mutant, and counts the mutants killed (a test failed) and lived (all passed). Where the package's
# suite is minutes long, gremlins runs a subset (RUN / SKIP below); every mutant that lives through
# the subset, or that gremlins calls "not covered" (its coverage map misses every `case` condition
# of an expression switch, and the subset may not reach a path), is then run again by
# scripts/mutation_rerun.py against the package's WHOLE suite. Niced, one worker, one file after
# another; each target's logs go to ${MUT_LOG:-/tmp/fewstep-mutation}/.
#
#   go install github.com/go-gremlins/gremlins/cmd/gremlins@v0.6.0
#   scripts/mutation.sh                      # every target below
#   scripts/mutation.sh trainer/optim.go     # one
#   MUT_RERUN=0 scripts/mutation.sh ...      # gremlins only
set -uo pipefail
cd "$(dirname "$0")/.."
gremlins=${GREMLINS:-$(go env GOPATH)/bin/gremlins}
[[ -x $gremlins ]] || { echo "no gremlins: go install github.com/go-gremlins/gremlins/cmd/gremlins@v0.6.0" >&2; exit 2; }
logdir=${MUT_LOG:-/tmp/fewstep-mutation}
mkdir -p "$logdir"
only=${1:-}
# the objectives' training tests (seconds each) and GPU tests, left to the whole-suite rerun
objskip='Trains$|OneStepSharp|TestResumeExactAdversarialSelfForcingConsistency|GPU'
# the trainer's two long data-parallel tests (20 s and 13 s), left to the whole-suite rerun
trskip='TestDataParallelMatchesOneRank$|TestDataParallelResume$|GPU'
# file ; tests of its package gremlins runs per mutant (-run; "" = all) ; tests it skips (-skip)
targets=(
	"trainer/optim.go;TestAdamW|TestToy|TestResume|TestSchedules|TestDecay|TestNonFinite|TestBadSteps|TestTooMany|TestDivergence|TestSave|TestCrash|TestInterrupt|TestNoFirstMoment|TestDataParallelSameAfterEachStep|TestDataParallelGradAccum;"
	"trainer/checkpoint.go;TestResume|TestInterrupt|TestCrash|TestSave|TestDivergence|TestParseState|TestResolveCheckpoint|TestTooMany|Fuzz;"
	"data/loader.go;TestLoader|TestFromJob|TestNonFinite|FuzzLoaderCursor;"
	"models/safetensors.go;;"
	"objectives/dmd.go;TestDMD|OneStepSharp;"
	"objectives/common.go;;$objskip"
	"objectives/objective.go;;$objskip"
	"objectives/recipe.go;;$objskip"
	"objectives/flowmatch.go;;$objskip"
	"objectives/consistency.go;;$objskip"
	"objectives/odeinit.go;;$objskip"
	"objectives/adversarial.go;;$objskip"
	"objectives/adversarial_head.go;;$objskip"
	"objectives/selfforcing.go;;$objskip"
	"objectives/selfforcing_dmd.go;;$objskip"
	"trainer/trainer.go;;$trskip"
	"trainer/odepairs.go;;$trskip"
	"trainer/job.go;;$trskip"
	"trainer/launch.go;TestGPUOrdinals|TestOpenRanksCPU|TestJobHash;"
	"trainer/dist.go;TestDataParallel|TestFullShard|TestLastBackward|TestOptimizerShard|TestLoaderCursor|TestSaveRefusesNonFiniteOnEveryRank;$trskip"
	"trainer/metrics.go;;$trskip"
	"trainer/lock.go;;$trskip"
	"trainer/memory.go;;$trskip"
	"trainer/describe.go;;$trskip"
)
for t in "${targets[@]}"; do
	IFS=';' read -r file run skip <<<"$t"
	[[ -n $only && $only != "$file" ]] && continue
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
	cp "$file" "$logdir/$name.src" # the copy gremlins mutates, for the rerun (the tree may move on)
	echo "$flags" >"$logdir/$name.flags" # the subset it runs, the rerun's first stage
	# the tree it runs on (tracked files with their changes), which the rerun takes: the working
	# tree may move on (a rebase) before the rerun
	tree=$(git stash create 2>/dev/null)
	echo "${tree:-$(git rev-parse HEAD)}" >"$logdir/$name.commit"
	start=$(date +%s)
	GOFLAGS="$flags" nice -n 19 "$gremlins" unleash --workers 1 --test-cpu 1 --timeout-coefficient 10 \
		-o "$logdir/$name.json" "${excl[@]}" "./$pkg" >"$logdir/$name.log" 2>&1
	echo "$file ($(($(date +%s) - start))s, tests: ${flags:-all}): $(grep -E 'Killed:|Test efficacy' "$logdir/$name.log" | tr '\n' ' ')"
	if [[ ${MUT_RERUN:-1} != 0 ]] && grep -qE '^\s*(LIVED|NOT COVERED)' "$logdir/$name.log"; then
		start=$(date +%s)
		scripts/mutation_rerun.py "$logdir/$name.log" "$file" --source "$logdir/$name.src" --timeout "${MUT_RERUN_TIMEOUT:-600}" >"$logdir/$name.rerun" 2>&1
		echo "  rerun against the whole suite ($(($(date +%s) - start))s): $(tail -1 "$logdir/$name.rerun")"
	fi
done
