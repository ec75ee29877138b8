#!/usr/bin/env bash
# The benchmarks docs/BENCHMARKS.md reports, with the peers measured in the same run (machines here are noisy,
# so ratios of paired runs are what to compare across runs).
#
#   scripts/bench.sh [runner] [quickstart] [criterion]     (no argument: all three)
#
#   runner      200 steps of `true` as a chain and a fan-out (benches/runner-workload.sh): sortie against
#               GNU make -j10 and, when `snakemake` is on PATH (pip install snakemake), Snakemake -c2;
#               runs interleaved A B A B, median wall seconds and the median of the paired ratios
#   quickstart  `plan apply examples/quickstart.yaml` in a fresh copy of the repo, whole process
#   criterion   cargo bench: plan compilation, re-entry, checkpoint writes
#   aws         one run step on the test endpoint with production pacing (benches/aws-pacing.sh): API calls,
#               request to first command, and how late the step's end is seen; AWS_STEP_SECONDS sets the
#               step lengths (default "0 3 60"; docs/BENCHMARKS.md also quotes 600 and 1800)
#
# PLAN names the binary to time (default: a release build, made here). RUNS sets the repetitions (default 5).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs=${RUNS:-5}
what=("$@")
[[ ${#what[@]} -gt 0 ]] || what=(runner quickstart criterion)

if [[ -z "${PLAN:-}" ]]; then
    (cd "$repo" && cargo build --release --bin plan -q)
    PLAN="${CARGO_TARGET_DIR:-$repo/target}/release/plan"
fi
echo "binary: $PLAN ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores)"

# Wall seconds of one run of "$@" in the current directory (output discarded).
wall() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

median() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }

# pair LABEL_A "CMD A" LABEL_B "CMD B" PREP: RUNS interleaved pairs, PREP before each command.
pair() {
    local la=$1 a=$2 lb=$3 b=$4 prep=$5 ta=() tb=() ratios=() x y i
    for ((i = 0; i < runs; i++)); do
        eval "$prep"; x=$(wall sh -c "$a")
        eval "$prep"; y=$(wall sh -c "$b")
        ta+=("$x") tb+=("$y") ratios+=("$(awk -v a="$x" -v b="$y" 'BEGIN { printf "%.1f", a / b }')")
    done
    printf '  %-28s %8ss   %-22s %8ss   ratio %6s×\n' "$la" "$(printf '%s\n' "${ta[@]}" | median)" \
        "$lb" "$(printf '%s\n' "${tb[@]}" | median)" "$(printf '%s\n' "${ratios[@]}" | median)"
}

bench_runner() {
    local dir shape
    dir=$(mktemp -d)
    bash "$repo/benches/runner-workload.sh" "$dir" >/dev/null
    cd "$dir"
    echo "runner: 200 steps of true (median of $runs paired runs)"
    for shape in fanout chain; do
        pair "sortie $shape" "$PLAN apply $shape.yaml --new" "make -j10 $shape" "make -s -j10 -f $shape.mk" \
            "rm -rf .sortie"
        if command -v snakemake >/dev/null 2>&1; then
            pair "sortie $shape" "$PLAN apply $shape.yaml --new" "snakemake -c2 $shape" \
                "snakemake -q -c2 -s $shape.smk" "rm -rf .sortie out .snakemake"
        fi
    done
    cd "$repo"
    rm -rf "$dir"
}

bench_quickstart() {
    local dir times=() i
    dir=$(mktemp -d)
    git -C "$repo" archive HEAD | tar -x -C "$dir"
    cd "$dir"
    for ((i = 0; i < runs; i++)); do
        times+=("$(wall "$PLAN" apply examples/quickstart.yaml)")
    done
    echo "quickstart: plan apply examples/quickstart.yaml, median wall $(printf '%s\n' "${times[@]}" | median)s" \
        "(first: ${times[0]}s)"
    cd "$repo"
    rm -rf "$dir"
}

bench_aws() {
    # shellcheck disable=SC2086 # a list of lengths
    bash "$repo/benches/aws-pacing.sh" "$PLAN" ${AWS_STEP_SECONDS:-0 3 60}
}

bench_criterion() {
    (cd "$repo" && cargo bench --bench compile --bench runner 2>&1 | grep -E '^[a-z].*time:|^\S.*\[' || true)
}

for w in "${what[@]}"; do
    case "$w" in
        runner) bench_runner ;;
        quickstart) bench_quickstart ;;
        criterion) bench_criterion ;;
        aws) bench_aws ;;
        *) echo "scripts/bench.sh: unknown benchmark $w (runner, quickstart, criterion, aws)" >&2; exit 2 ;;
    esac
done
