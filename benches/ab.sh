#!/usr/bin/env bash
# Compares two builds' steady stage (5,000 agents every second) in the same
# minutes, alternately, because this kind of machine's speed drifts.
#
#   git worktree add ../old <commit>            # once; copy target/ to save a cold build
#   (cd ../old && cargo build --release --benches --bins)
#   cargo build --release --benches --bins
#   benches/ab.sh ../old . 2                    # OLD NEW ROUNDS
#
# Prints, per round and build: the bridge's share of a core, the transition
# latency, the load, resident memory and the disk's one-row commit.
set -euo pipefail
old=$(cd "${1:?old checkout}" && pwd); new=$(cd "${2:?new checkout}" && pwd); rounds=${3:-2}
field() { grep "$1" <<<"$2" | awk -F'|' '{print $3}' | xargs; }
for round in $(seq 1 "$rounds"); do
  for tree in "$old" "$new"; do
    bench=$(ls -t "$tree"/target/release/deps/pipeline-* | grep -v '\.d$' | head -1)
    out=$(cd "$tree" && PIPELINE_SATURATION_SECONDS=0 PIPELINE_PEER_SECONDS=0 PIPELINE_COMMAND_SECONDS=0 \
      PIPELINE_DWELL=4500ms PIPELINE_SECONDS=30 "$bench" pipeline 2>&1)
    echo "round $round $tree: cpu=$(field 'bridge CPU, % of one core' "$out")" \
      "p50=$(field 'subscriber p50' "$out") p99=$(field 'subscriber p99' "$out")" \
      "load=$(field 'transition events/s' "$out") rss=[$(field 'bridge RSS' "$out")]" \
      "peak=$(field 'VmHWM' "$out") commit=$(field 'one-row commit' "$out" | cut -d'(' -f1)"
  done
done
