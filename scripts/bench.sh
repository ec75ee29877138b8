#!/usr/bin/env bash
# The benchmarks docs/BENCHMARKS.md reports, printed as its Markdown tables, each sortie figure paired with its
# peer measured in the same run (machines here are noisy: compare ratios across runs, not seconds).
#
#   scripts/bench.sh [--quick] [runner] [compile] [inproc] [quickstart] [aws]
#
#   runner      chains and fan-outs of `true` (benches/runner-workload.sh): sortie's `plan apply` against
#               GNU make -j10 and Snakemake -c2 (pinned in benches/requirements-bench.txt, installed here into
#               a venv) on the same DAGs: wall, CPU (the whole process tree, detached supervisors included),
#               peak RSS; 200, 2,000 and 10,000 steps (Snakemake up to 2,000: its DAG phase grows faster)
#   compile     `plan validate` of 100, 1,000 and 10,000-step plans, whole process
#   inproc      cargo bench --bench runner: re-entry latency (1,000 and 10,000 steps) and checkpoint latency
#               (whole document and journal append, 200 to 10,000 steps)
#   quickstart  `plan apply examples/quickstart.yaml` in a fresh copy of the repo, whole process
#   aws         one run step on the test endpoint with production pacing (benches/aws-pacing.sh)
#
#   No argument: runner compile inproc. --quick: 200 steps, one pair per figure, compile at 1,000, in-process
#   at the small sizes; under 2 minutes once built, for use during development.
#
# PLAN names the binary to time (default: a release build, made here). SIZES (e.g. "200") limits the runner
# to those sizes. RUNS sets the pairs per 200-step figure (default 3; larger plans get one). Needs python3
# (benches/measure.py) and make.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
quick=0
what=()
for a in "$@"; do
    case "$a" in
        --quick) quick=1 ;;
        *) what+=("$a") ;;
    esac
done
[[ ${#what[@]} -gt 0 ]] || what=(runner compile inproc)
runs=${RUNS:-3}
[[ $quick = 0 ]] || runs=1

if [[ -z "${PLAN:-}" ]]; then
    (cd "$repo" && cargo build --release --bin plan -q)
    PLAN="${CARGO_TARGET_DIR:-$repo/target}/release/plan"
fi
echo "binary: $PLAN ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r))"
echo

# measure DIR PREP CMD...: "wall cpu rss_kib" of one run.
measure() {
    local dir=$1 prep=$2
    shift 2
    python3 "$repo/benches/measure.py" --cwd "$dir" --prep "$prep" -- "$@"
}

median() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
col() { awk -v c="$1" '{print $c}'; }

snakemake_bin() {
    local venv=${SORTIE_BENCH_VENV:-$HOME/.cache/sortie/bench-venv}
    if [[ ! -x $venv/bin/snakemake ]]; then
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install -q -r "$repo/benches/requirements-bench.txt" >&2
    fi
    echo "$venv/bin/snakemake"
}

# Goal verdicts.
verdict_le() { awk -v v="$1" -v g="$2" 'BEGIN { if (v <= g) printf "met (≤ %s×)", g; else printf "**missed** by %.1f× (goal ≤ %s×)", v / g, g }'; }
verdict_ge() { awk -v v="$1" -v g="$2" 'BEGIN { if (v >= g) printf "met (≥ %s×)", g; else printf "**missed**: %.1f× short of %s×", g / v, g }'; }

# pair_rows DIR SHAPE N PEER PEER_CMD PREP PAIRS: PAIRS interleaved pairs; prints a table row.
pair_rows() {
    local dir=$1 shape=$2 n=$3 peer=$4 peer_cmd=$5 prep=$6 pairs=$7
    local s=() p=() ratios=() i a b
    for ((i = 0; i < pairs; i++)); do
        a=$(measure "$dir" "$prep" "$PLAN" apply "$shape.yaml" --new)
        b=$(measure "$dir" "$prep" sh -c "$peer_cmd")
        s+=("$a") p+=("$b")
        ratios+=("$(awk -v x="${a%% *}" -v y="${b%% *}" 'BEGIN { printf "%.3f", x / y }')")
    done
    local sw sc sr pw ratio
    sw=$(printf '%s\n' "${s[@]}" | col 1 | median)
    sc=$(printf '%s\n' "${s[@]}" | col 2 | median)
    sr=$(printf '%s\n' "${s[@]}" | col 3 | median)
    pw=$(printf '%s\n' "${p[@]}" | col 1 | median)
    ratio=$(printf '%s\n' "${ratios[@]}" | median)
    local goal=""
    if [[ $n = 200 && $peer = make* ]]; then goal=$(verdict_le "$ratio" 1.5); fi
    if [[ $n = 200 && $peer = Snakemake* ]]; then
        goal=$(verdict_ge "$(awk -v r="$ratio" 'BEGIN { printf "%.3f", 1 / r }')" 10)
    fi
    printf '| %s | %s | %.2f s | %.2f s | %.1f ms | %.0f MB | %s | %.2f s | %.2f× | %s |\n' "$shape" "$n" "$sw" \
        "$sc" "$(awk -v c="$sc" -v n="$n" 'BEGIN { print c * 1000 / n }')" "$(awk -v r="$sr" 'BEGIN { print r / 1024 }')" \
        "$peer" "$pw" "$ratio" "$goal"
    echo "$shape $n $(awk -v c="$sc" -v n="$n" 'BEGIN { print c * 1000 / n }') $sr" >>"$cpu_file"
}

bench_runner() {
    local sizes=(200 2000 10000) snk dir shape n pairs
    [[ $quick = 0 ]] || sizes=(200)
    [[ -z "${SIZES:-}" ]] || read -r -a sizes <<<"$SIZES"
    snk=$(snakemake_bin)
    cpu_file=$(mktemp)
    echo "### Runner: steps of \`true\` (sortie wall/CPU/RSS: median of the pairs; ratio: median of sortie ÷ peer per pair)"
    echo
    echo "| shape | steps | sortie wall | sortie CPU | CPU / step | sortie peak RSS | peer | peer wall | ratio | goal |"
    echo "|---|---:|---:|---:|---:|---:|---|---:|---:|---|"
    for n in "${sizes[@]}"; do
        dir=$(mktemp -d)
        STEPS=$n bash "$repo/benches/runner-workload.sh" "$dir" >/dev/null
        pairs=$runs
        [[ $n = 200 ]] || pairs=1
        for shape in chain fanout; do
            pair_rows "$dir" "$shape" "$n" "make -j10" "make -s -j10 -f $shape.mk" "rm -rf .sortie" "$pairs"
            if [[ $n -le 2000 ]]; then
                pair_rows "$dir" "$shape" "$n" "Snakemake -c2" "$snk -q -c2 -s $shape.smk" \
                    "rm -rf .sortie out .snakemake" "$pairs"
            fi
        done
        rm -rf "$dir"
    done
    echo
    # CPU per step against the 200-step figure of the same shape (within 20%: linear, not quadratic), and the
    # peak RSS at 10,000 steps (under 100 MB).
    awk '{ key = $1 " " $2; if (!(key in cpu)) { cpu[key] = $3; rss[key] = $4; order[++k] = key } }
        END {
            for (i = 1; i <= k; i++) {
                split(order[i], f, " "); base = cpu[f[1] " 200"]
                if (f[2] != 200 && base > 0) {
                    r = cpu[order[i]] / base
                    printf "- %s %s: CPU per step %.1f ms = %.2f× the 200-step figure: %s\n", f[1], f[2], cpu[order[i]], r,
                        (r <= 1.2 ? "met (within 20%)" : "**missed**")
                }
                if (f[2] == 10000)
                    printf "- %s 10000: peak RSS %.0f MB: %s\n", f[1], rss[order[i]] / 1024,
                        (rss[order[i]] < 100 * 1024 ? "met (under 100 MB)" : "**missed**")
            }
        }' "$cpu_file"
    rm -f "$cpu_file"
    echo
}

bench_compile() {
    local sizes=(100 1000 10000) dir n t=()
    [[ $quick = 0 ]] || sizes=(1000)
    echo "### Compile: \`plan validate\` of an N-step chain, whole process (median of $runs)"
    echo
    echo "| steps | wall | per step | peak RSS |"
    echo "|---:|---:|---:|---:|"
    for n in "${sizes[@]}"; do
        dir=$(mktemp -d)
        STEPS=$n bash "$repo/benches/runner-workload.sh" "$dir" >/dev/null
        t=()
        for ((i = 0; i < runs; i++)); do t+=("$(measure "$dir" "" "$PLAN" validate chain.yaml)"); done
        local w r
        w=$(printf '%s\n' "${t[@]}" | col 1 | median)
        r=$(printf '%s\n' "${t[@]}" | col 3 | median)
        printf '| %s | %.0f ms | %.1f µs | %.0f MB |\n' "$n" "$(awk -v w="$w" 'BEGIN { print w * 1000 }')" \
            "$(awk -v w="$w" -v n="$n" 'BEGIN { print w * 1e6 / n }')" "$(awk -v r="$r" 'BEGIN { print r / 1024 }')"
        rm -rf "$dir"
    done
    echo
}

bench_inproc() {
    echo "### In-process: re-entry and checkpoint latency (cargo bench --bench runner)"
    echo
    local args=()
    [[ $quick = 0 ]] || args=(-- quick)
    (cd "$repo" && cargo bench -q --bench runner "${args[@]}" 2>/dev/null | sed 's/^/- /')
    echo
}

bench_quickstart() {
    local dir times=() i
    dir=$(mktemp -d)
    git -C "$repo" archive HEAD | tar -x -C "$dir"
    for ((i = 0; i < runs; i++)); do
        times+=("$(measure "$dir" "" "$PLAN" apply examples/quickstart.yaml | col 1)")
    done
    echo "quickstart: plan apply examples/quickstart.yaml, median wall $(printf '%s\n' "${times[@]}" | median)s" \
        "(first: ${times[0]}s)"
    rm -rf "$dir"
}

bench_aws() {
    # shellcheck disable=SC2086 # a list of lengths
    bash "$repo/benches/aws-pacing.sh" "$PLAN" ${AWS_STEP_SECONDS:-0 3 60}
}

for w in "${what[@]}"; do
    case "$w" in
        runner) bench_runner ;;
        compile) bench_compile ;;
        inproc) bench_inproc ;;
        quickstart) bench_quickstart ;;
        aws) bench_aws ;;
        *) echo "scripts/bench.sh: unknown benchmark $w (runner, compile, inproc, quickstart, aws)" >&2; exit 2 ;;
    esac
done
