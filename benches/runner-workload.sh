#!/usr/bin/env bash
# Generates the runner-overhead workload into DIR: 200 steps of `true` as a chain and as a fan-out, as sortie
# plans (local target), as Makefiles and as Snakefiles running the same commands (Snakemake needs a file per job,
# so each of its jobs also touches one). scripts/bench.sh times them; see docs/BENCHMARKS.md.
#   benches/runner-workload.sh DIR
set -euo pipefail
dir=${1:?usage: runner-workload.sh DIR}
n=${STEPS:-200}
mkdir -p "$dir"
for shape in chain fanout; do
    plan="$dir/$shape.yaml" mk="$dir/$shape.mk"
    printf 'plan: %s\nsteps:\n  host: { kind: instance }\n' "$shape" >"$plan"
    smk="$dir/$shape.smk"
    printf 'rule all:\n    input: [%s]\n' "$(seq -f '"out/s%g"' -s, 1 "$n")" >"$smk"
    for i in $(seq 1 "$n"); do
        printf 'rule s%s:\n' "$i" >>"$smk"
        if [ "$shape" = chain ] && [ "$i" -gt 1 ]; then printf '    input: "out/s%s"\n' "$((i - 1))" >>"$smk"; fi
        printf '    output: "out/s%s"\n    shell: "true && touch {output}"\n' "$i" >>"$smk"
    done
    printf 'all:' >"$mk"
    for i in $(seq 1 "$n"); do printf ' s%s' "$i" >>"$mk"; done
    printf '\n' >>"$mk"
    for i in $(seq 1 "$n"); do
        need=""
        if [ "$shape" = chain ] && [ "$i" -gt 1 ]; then need="s$((i - 1))"; fi
        printf '  s%s: { kind: run, run: "true", needs: [%s] }\n' "$i" "$need" >>"$plan"
        printf 's%s:%s\n\ttrue\n' "$i" "${need:+ $need}" >>"$mk"
    done
done
echo "$dir: chain.yaml fanout.yaml chain.mk fanout.mk chain.smk fanout.smk ($n steps each)"
