#!/usr/bin/env bash
# Generates the runner-overhead workload into DIR: 200 steps of `true` as a chain and as a fan-out, both as sortie
# plans (local target) and as Makefiles running the same commands. See docs/BENCHMARKS.md for how they are timed.
#   benches/runner-workload.sh DIR
set -euo pipefail
dir=${1:?usage: runner-workload.sh DIR}
n=${STEPS:-200}
mkdir -p "$dir"
for shape in chain fanout; do
    plan="$dir/$shape.yaml" mk="$dir/$shape.mk"
    printf 'plan: %s\nsteps:\n  host: { kind: instance }\n' "$shape" >"$plan"
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
echo "$dir: chain.yaml fanout.yaml chain.mk fanout.mk ($n steps each)"
