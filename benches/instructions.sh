#!/bin/bash
# Instructions per proxied request on the gateway's worker thread, under callgrind: the
# one CPU measure that does not drift with the machine's load. Usage:
#   benches/instructions.sh BIN [BIN ...]
# For each binary: two runs (300 and 300+N chat completions through one worker to
# `switchyard mock`), and the difference divided by N, so start-up does not count.
# Env: N (1000, the requests counted); CONCURRENCY (1: one request at a time; more: that
# many in flight, as under wrk); SIM=1 also simulates the caches and branch predictors and
# prints, per request, instruction-cache misses (I1), data-cache misses (D1) and
# mispredicted conditional and indirect branches: what instructions alone do not show
# (valgrind's models, not the machine's; compare binaries, not absolute costs).
set -u
N=${N:-1000}
CONCURRENCY=${CONCURRENCY:-1}
SIM=${SIM:-0}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
cd "$(dirname "$0")/.."
LOAD=target/release/switchyard
[ -x "$LOAD" ] || cargo build --release --locked -q
worker_ir() { # BIN REQUESTS -> the event totals of the proxy worker thread
  local d; d=$(mktemp -d); local M=17401 S=17402 A=17403
  "$LOAD" mock --listen 127.0.0.1:$M --chunks 3 --chunk-delay 0ms >/dev/null 2>&1 & local mp=$!
  cat > "$d/c.yaml" <<Y
listen: 127.0.0.1:$S
admin: { listen: 127.0.0.1:$A }
providers:
  old: { base_url: "http://127.0.0.1:$M/v1", pricing: { deepseek-chat: { input: 0.27, output: 1.10 } } }
  new: { base_url: "http://127.0.0.1:$M/v1", pricing: { deepseek-chat: { input: 0.14, output: 0.42 } } }
migration: { from: old, to: new, phases: [ { name: half, percent: 50 } ], phase: half }
health_check: { interval: 600s }
server: { access_log: false }
state_file: $d/state.json
Y
  # hyper-floor (benches/micro/hyper_floor.rs) is measured the same way: its busiest thread.
  local args=(serve --config "$d/c.yaml") mark="switchyard_proxy::server::serve"
  case $1 in *hyper-floor) args=("127.0.0.1:$S" "127.0.0.1:$M"); mark="hyper_floor";; esac
  local sim=(); [ "$SIM" = 1 ] && sim=(--cache-sim=yes --branch-sim=yes)
  SWITCHYARD_WORKERS=1 SWITCHYARD_LOG=warn valgrind --tool=callgrind --separate-threads=yes "${sim[@]}" \
    --callgrind-out-file="$d/cg.out" "$1" "${args[@]}" >/dev/null 2>&1 & local vp=$!
  for _ in $(seq 200); do curl -s -o /dev/null "127.0.0.1:$S/" 2>/dev/null && break; sleep 0.2; done
  local mode=(--mode sequential); [ "$CONCURRENCY" -gt 1 ] && mode=(--mode concurrent --concurrency "$CONCURRENCY")
  "$LOAD" loadtest --url http://127.0.0.1:$S/v1 "${mode[@]}" --requests "$2" --json >/dev/null 2>&1
  # SIGINT for the gateway (its graceful stop); an async child of a script ignores SIGINT, so
  # hyper-floor, which installs no handler, gets SIGTERM.
  case $1 in *hyper-floor) kill -TERM $vp;; *) kill -INT $vp;; esac; wait $vp 2>/dev/null; kill $mp; wait $mp 2>/dev/null
  # The busiest thread that ran the proxy: its totals (Ir first; with SIM=1, the events below).
  local best=0 line="" f l
  for f in "$d"/cg.out-*; do
    l=$(grep -E "^(summary|totals)" "$f" | head -1 | cut -d' ' -f2-)
    grep -q "$mark" "$f" && [ "${l%% *}" -gt "$best" ] && best=${l%% *} && line=$l
  done
  rm -rf "$d"; echo "$line"
}
# Events with SIM=1: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim.
for bin in "$@"; do
  a=$(worker_ir "$bin" 300); b=$(worker_ir "$bin" $((300 + N)))
  awk -v n="$N" -v a="$a" -v b="$b" -v bin="$bin" -v sim="$SIM" 'BEGIN{
    # callgrind leaves out trailing zero columns: all 13 are read (a missing one is 0).
    split(a, x, " "); split(b, y, " ")
    for (i = 1; i <= 13; i++) d[i] = (y[i] - x[i]) / n
    printf "%s: %.0f instructions per request", bin, d[1]
    if (sim == 1) printf "; I1 misses %.0f, D1 misses %.0f, mispredicted branches %.0f conditional + %.0f indirect", d[4], d[5] + d[6], d[11], d[13]
    printf "\n"}'
done
