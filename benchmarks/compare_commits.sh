#!/bin/bash
# A benchmark before and after a change, alternating, on one machine with one venv:
#   benchmarks/compare_commits.sh OLD_COMMIT [ROUNDS] [BENCHMARK ARGS...]
# e.g. benchmarks/compare_commits.sh fb22ff2 4 benchmarks/replication.py --runs 5
# runs the benchmark in a temporary checkout of OLD_COMMIT and in this working tree, in turns,
# ROUNDS times each, and removes the checkout afterwards (even when a run fails).
set -euo pipefail
old=${1:?usage: compare_commits.sh OLD_COMMIT [ROUNDS] [BENCHMARK ARGS...]}
rounds=${2:-2}
shift $(( $# >= 2 ? 2 : 1 ))
bench=("${@:-benchmarks/replication.py}")
here=$(cd "$(dirname "$0")/.." && pwd)
python="$here/.venv/bin/python"
checkout=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$checkout" 2>/dev/null || rm -rf "$checkout"' EXIT
git -C "$here" worktree add -q --detach "$checkout" "$old"
for round in $(seq "$rounds"); do
  for tree in "$checkout" "$here"; do
    echo "=== round $round: $(git -C "$tree" log --oneline -1 | cut -c1-70)"
    (cd "$tree" && PYTHONPATH="$tree" "$python" "${bench[@]}")
  done
done
