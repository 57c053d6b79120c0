#!/usr/bin/env bash
# The same benchmarks on two commits of headkit, alternated, so a change's cost is read off one session:
#   benchmarks/before_after.sh BEFORE AFTER [OUT]      e.g. benchmarks/before_after.sh fb141a9 HEAD
# Each commit is checked out in its own worktree and imported from there (PYTHONPATH; its adapters folder is
# linked in as headkit/adapters, as the editable install maps it). Runs overhead.py on the tiny model three
# times per commit, alternating, then once per commit on Gemma 3 270M, then montecarlo_speed.py once each.
# Needs the current virtualenv (TransformerLens, nnsight) and the cached default model.
set -euo pipefail
before=$1; after=$2; out=${3:-before_after_out}
mkdir -p "$out"; out=$(cd "$out" && pwd)
root=$(git rev-parse --show-toplevel)
trees=$(mktemp -d); trap 'git -C "$root" worktree remove --force "$trees/before"; git -C "$root" worktree remove --force "$trees/after"; rm -rf "$trees"' EXIT
for side in before after; do
    git -C "$root" worktree add -q --detach "$trees/$side" "${!side}"
    ln -s "$trees/$side/adapters" "$trees/$side/headkit/adapters"
done
run() {  # side, script, args...
    local side=$1 script=$2; shift 2
    (cd "$trees" && PYTHONPATH="$trees/$side" python "$trees/$side/benchmarks/$script" "$@")
}
for round in 1 2 3; do
    for side in before after; do
        run "$side" overhead.py --models tiny --rounds 30 --out "$out/tiny_${side}_$round.md" > /dev/null
    done
done
for side in before after; do run "$side" overhead.py --models gemma --rounds 20 --out "$out/gemma_$side.md" > /dev/null; done
for side in after before; do run "$side" montecarlo_speed.py --models pythia160m,gpt2,gemma --masks 16 --rounds 3 > "$out/mc_$side.md"; done
echo "results in $out"
