#!/usr/bin/env bash
# Plants each of the small, plausible bugs of issue 15 (docs/reliability.md) one at a time in a
# scratch copy of the committed tree, runs the tests that should catch it, and says CAUGHT or MISSED.
# The working tree is never touched. Exit status 1 if any bug is missed.
#
#   scripts/planted-bugs.sh            # all
#   scripts/planted-bugs.sh adamw      # those whose name contains "adamw"
set -uo pipefail
cd "$(dirname "$0")/.."
only=${1:-}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# name | file | perl substitution (applied once per line that matches) | package | tests (-run)
bugs=(
	"adamw-decay-flag-inverted|trainer/optim.go|s/if ru\.Decay \{/if !ru.Decay {/|./trainer|TestAdamWAgainstFloat64"
	"adamw-bias-correction-off-by-one|kernels/cpu_gate.go|s/step := GateCount\(gt, role\)/step := GateCount(gt, role) + 1/|./trainer|TestAdamWAgainstFloat64"
	"accumulation-division-dropped|trainer/optim.go|s/if accum > 1 \{/if accum > 1 \&\& false {/|./trainer|TestAdamWAgainstFloat64"
	"dmd-normaliser-from-wrong-x0|objectives/dmd.go|s/dev\.Combine\(o\.diff, x, o\.x0Real,/dev.Combine(o.diff, x, o.x0Fake,/|./objectives|TestDMDGradientHostFormula"
	"dmd-gradient-sign|objectives/dmd.go|s/o\.coefA\[i\], o\.coefB\[i\] = c, -c/o.coefA[i], o.coefB[i] = -c, c/|./objectives|TestDMDGradientHostFormula"
	"loader-leaves-out-last-row|data/loader.go|s/^\tfor i := range perm \{/\tfor i := range perm[:n-1] {/|./data|TestLoaderEveryRowOncePerEpoch"
	"loader-shuffle-skips-last-row|data/loader.go|s/rng\.Shuffle\(n, /rng.Shuffle(n-1, /|./data|TestLoaderEveryRowOncePerEpoch"
	"safetensors-keeps-last-chunk-only|models/safetensors.go|s/k \+= decode\(dst\[k:\], b, e\.DType, es\)/_ = decode(dst[k:], b, e.DType, es)/|./models|TestSafetensorsLargerThanChunk"
	"denoising-list-ignores-shift|sampler/schedule.go|s/e := EulerSigmas\(k, shift\)/e := EulerSigmas(k, 1)/|./sampler|TestScheduleLiterals|TestSamplersVisitTheSchedule"
	"euler-grid-divides-by-n-plus-1|sampler/schedule.go|s/Shift\(1-float64\(i\)\/float64\(n\), shift\)/Shift(1-float64(i)\/float64(n+1), shift)/|./sampler|TestScheduleLiterals|TestSamplersVisitTheSchedule"
	"consistency-snap-grid-unshifted|sampler/schedule.go|s/grid := EulerSigmas\(n, shift\)/grid := EulerSigmas(n, 1)/|./sampler|TestScheduleLiterals|TestSamplersVisitTheSchedule"
	"ode-pairs-grid-unshifted|trainer/odepairs.go|s/sampler\.EulerSigmas\(o\.Steps, o\.Shift\)/sampler.EulerSigmas(o.Steps, 1)/|./trainer|TestODEPairsLevelsIndependent"
	"ode-pairs-levels-unshifted|trainer/odepairs.go|s/sampler\.Shift\(t\/1000, o\.Shift\)/t\/1000/|./trainer|TestODEPairsLevelsIndependent"
	"role-schedule-default-filled-wrong|config/defaults.go|s/r\.Schedule = RoleDefaults\.Schedule/r.Schedule = \"cosine\"/|./config|TestReadmeDefaultsAreLoaded"
	"clip-norm-default-changed|config/defaults.go|s/ClipNorm:    1\.0,/ClipNorm:    0.5,/|./config|TestReadmeDefaultsAreLoaded"
)
missed=0
for b in "${bugs[@]}"; do
	IFS='|' read -r name file subst pkg tests <<<"$b"
	[[ -n $only && $name != *"$only"* ]] && continue
	rm -rf "$scratch/tree" && mkdir -p "$scratch/tree"
	git archive HEAD | tar -x -C "$scratch/tree"
	perl -pi -e "$subst" "$scratch/tree/$file"
	if cmp -s "$scratch/tree/$file" <(git show "HEAD:$file"); then
		echo "$name: the substitution did not apply to $file (the code moved): update this script"
		missed=1
		continue
	fi
	if (cd "$scratch/tree" && go test -count=1 -run "^(${tests})\$" "$pkg" >"$scratch/log" 2>&1); then
		echo "$name: MISSED by $tests"
		missed=1
	else
		echo "$name: CAUGHT by $(grep -m1 -oE -- '--- FAIL: [A-Za-z0-9_]+' "$scratch/log" | sed 's/--- FAIL: //' || echo "$tests (build)")"
	fi
done
exit $missed
