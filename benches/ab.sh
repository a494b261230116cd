#!/usr/bin/env bash
# Compares two bridge binaries' steady stage (5,000 agents every second) in
# the same minutes, alternately, because this kind of machine's speed drifts.
# The simulator, broker and measurements are this checkout's.
#
#   cargo build --release --benches --bins
#   cp target/release/pbx2mqtt /tmp/pbx2mqtt-old      # before the change
#   ... change, build again ...
#   benches/ab.sh /tmp/pbx2mqtt-old target/release/pbx2mqtt 2   # OLD NEW ROUNDS
#
# Prints, per round and build: the bridge's share of a core, the transition
# latency, the load, resident memory and the disk's one-row commit.
set -euo pipefail
old=$(realpath "${1:?old bridge binary}"); new=$(realpath "${2:?new bridge binary}"); rounds=${3:-2}
cd "$(dirname "$0")/.."
bench=$(ls -t target/release/deps/pipeline-* | grep -v '\.d$' | head -1)
field() { grep "$1" <<<"$2" | awk -F'|' '{print $3}' | xargs; }
for round in $(seq 1 "$rounds"); do
  for binary in "$old" "$new"; do
    out=$(PIPELINE_BRIDGE_BINARY="$binary" PIPELINE_SATURATION_SECONDS=0 PIPELINE_PEER_SECONDS=0 \
      PIPELINE_COMMAND_SECONDS=0 PIPELINE_DWELL=4500ms PIPELINE_SECONDS=${PIPELINE_SECONDS:-30} \
      "$bench" pipeline 2>&1)
    echo "round $round $binary: cpu=$(field 'bridge CPU, % of one core' "$out")" \
      "p50=$(field 'subscriber p50' "$out") p99=$(field 'subscriber p99' "$out")" \
      "load=$(field 'transition events/s' "$out") rss=[$(field 'bridge RSS' "$out")]" \
      "peak=$(field 'VmHWM' "$out") commit=$(field 'one-row commit' "$out" | cut -d'(' -f1)"
  done
done
