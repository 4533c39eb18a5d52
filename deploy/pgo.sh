#!/usr/bin/env bash
# make release-pgo: the release binary optimized with a profile of the gateway's own hot path
# (profile-guided optimization). The compiler then lays out what every request runs together
# and apart from what it never runs, inlines by measured calls, and predicts branches by
# measured outcomes: about a fifth fewer instructions per request, a third fewer
# instruction-cache misses and a sixth less CPU (benches/README.md, "A profile-guided build").
#
#   1. an instrumented build (target/pgo-gen);
#   2. a short training run: the instrumented gateway in front of two `switchyard mock`
#      providers (one HTTP/1.1, one h2c, plain TCP: the TLS client is not trained), half
#      the traffic on each, a shadow share, chat completions as JSON answers and SSE
#      streams driven by `switchyard loadtest` (about half a minute); every request must
#      succeed, or the build stops with the gateway's log;
#   3. the profile merged with the toolchain's own llvm-profdata (rustup's llvm-tools
#      component, installed when missing: it must match rustc's LLVM);
#   4. the optimized build: target/pgo/release/switchyard.
# Two full builds beside `make build`'s: about 10 minutes on 2 cores. Env: REQUESTS (30000
# JSON answers, a tenth as many SSE streams; at least 100).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-30000}
[ "$REQUESTS" -ge 100 ] 2>/dev/null || { echo "pgo: REQUESTS must be a number of at least 100" >&2; exit 2; }
# The untouched release binary runs the mock providers and the load, so that only the
# gateway's own work is in the profile.
TOOL=target/release/switchyard
[ -x "$TOOL" ] || cargo build --release --locked

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | awk '/^host:/ {print $2}')
PROFDATA=$sysroot/lib/rustlib/$host/bin/llvm-profdata
if [ ! -x "$PROFDATA" ] && command -v rustup >/dev/null; then
  echo "pgo: installing rustup's llvm-tools component (llvm-profdata)" >&2
  rustup component add llvm-tools >/dev/null
fi
[ -x "$PROFDATA" ] || { echo "pgo: needs llvm-profdata from rustc's own LLVM at $PROFDATA (rustup component add llvm-tools)" >&2; exit 2; }
# The user's own flags are kept; the profile's are added.
flags=${RUSTFLAGS:-}

data=$(pwd)/target/pgo-data
rm -rf "$data"; mkdir -p "$data"
echo "pgo: 1/4 instrumented build (target/pgo-gen)" >&2
# Build scripts run instrumented too: their profiles go to the build's default place, not
# into the gateway's.
RUSTFLAGS="$flags -Cprofile-generate=$data/build" CARGO_TARGET_DIR=target/pgo-gen \
  cargo build --release --locked -q -p switchyard

dir=$(mktemp -d)
pids=()
cleanup() {
  local rc=$?
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "$rc" != 0 ] && [ -s "$dir/gateway.log" ]; then
    echo "pgo: failed; the training gateway's log:" >&2
    cat "$dir/gateway.log" >&2
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Ports no other script here uses (bench 170xx, soak 172xx, streams 173xx, instructions 174xx).
OLD=17501 NEW=17502 SY=17503 SYA=17504
"$TOOL" mock --listen 127.0.0.1:$OLD --name old --http1-only --chunks 8 --chunk-delay 0ms >/dev/null 2>&1 & pids+=($!)
"$TOOL" mock --listen 127.0.0.1:$NEW --name new --chunks 8 --chunk-delay 0ms >/dev/null 2>&1 & pids+=($!)
cat > "$dir/switchyard.yaml" <<YAML
listen: 127.0.0.1:$SY
admin: { listen: 127.0.0.1:$SYA }
providers:
  old:
    base_url: http://127.0.0.1:$OLD/v1
    pricing: { deepseek-chat: { input: 0.27, output: 1.10 } }
  new:
    base_url: http://127.0.0.1:$NEW/v1
    http2: true
    pricing: { deepseek-chat: { input: 0.14, output: 0.42 } }
migration:
  from: old
  to: new
  phases: [ { name: half, percent: 50 } ]
  phase: half
  shadow_percent: 5
health_check: { interval: 60s }
server: { access_log: false }
state_file: $dir/state.json
YAML
echo "pgo: 2/4 training run ($REQUESTS JSON answers, $((REQUESTS / 10)) SSE streams)" >&2
LLVM_PROFILE_FILE="$data/gateway-%p-%m.profraw" SWITCHYARD_LOG=warn \
  target/pgo-gen/release/switchyard serve --config "$dir/switchyard.yaml" 2>"$dir/gateway.log" & sy=$!
pids+=($sy)
for _ in $(seq 100); do curl -fs "127.0.0.1:$SYA/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "127.0.0.1:$SYA/healthz" >/dev/null || { echo "pgo: the training gateway did not start" >&2; exit 1; }
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "pgo: a mock provider did not start (ports $OLD, $NEW)" >&2; exit 1; }; done
url=http://127.0.0.1:$SY/v1
"$TOOL" loadtest --url "$url" --mode concurrent --concurrency 64 --requests "$REQUESTS" --json >"$dir/json.out"
"$TOOL" loadtest --url "$url" --mode concurrent --concurrency 32 --requests $((REQUESTS / 10)) --stream --json >"$dir/sse.out"
# A profile of failing requests would train the error paths: every request must succeed.
for out in json sse; do
  tr -d ' \n' <"$dir/$out.out" | grep -q '"failed":0[,}]' || { echo "pgo: training requests failed:" >&2; cat "$dir/$out.out" >&2; exit 1; }
done
# The profile is written when the gateway exits: its graceful stop.
kill -INT $sy; wait $sy || true
kill "${pids[@]}" 2>/dev/null || true
ls "$data"/gateway-*.profraw >/dev/null 2>&1 || { echo "pgo: the training run left no profile" >&2; exit 1; }

echo "pgo: 3/4 merging the profile" >&2
"$PROFDATA" merge -o "$data/switchyard.profdata" "$data"/gateway-*.profraw

echo "pgo: 4/4 optimized build (target/pgo)" >&2
RUSTFLAGS="$flags -Cprofile-use=$data/switchyard.profdata" CARGO_TARGET_DIR=target/pgo \
  cargo build --release --locked -q -p switchyard
echo "pgo: target/pgo/release/switchyard" >&2
