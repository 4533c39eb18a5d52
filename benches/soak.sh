#!/usr/bin/env bash
# benches/soak.sh: an hour, flat (issue 27). Not a test: it runs for DURATION (1h).
#
# The gateway in front of two `switchyard mock` providers — `old` over HTTP/1.1 only, `new`
# over h2c — at half of nginx's saturation rate (RATE_SHARE of what nginx proxying `old`
# serves under wrk), mixed JSON and SSE (SSE_SHARE of the requests), shadow on, a reload
# every minute, a rollback and a phase move every ten. Every 10 s: RSS, open fds,
# upstream sockets, client connections and answers in flight of the gateway, printed as a
# table row ("-" where the admin API did not answer). Pass: RSS at the end within 10%
# of its value at minute 5, fds back to the baseline once the load stops and idle
# connections close, no failed request.
#
# Env: DURATION (3600 s), RATE_SHARE (0.5), RATE (requests/s; measured when unset),
# SSE_SHARE (0.2), RELOAD_S (60: seconds between reloads), SLOT_S (300: seconds between a
# rollback and the next phase move; shorter to find what a rise follows). The heap columns
# are jemalloc's own count at the gateway's latest purge (once a minute under load): in
# use (`stats.allocated`), and resident beyond it (`stats.resident` less that: the
# allocator's pages not yet given back, and its metadata); a leak moves the first,
# fragmentation the second. Loopback only;
# nginx and wrk (installed like make bench does) measure the rate when RATE is unset.
# Where the load generators share the gateway's cores (2 here), half of nginx's saturation
# cannot be generated: set RATE (4000 served an hour here with no failure). Do not edit
# this file while it runs: bash reads it as it goes.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-3600}
RATE_SHARE=${RATE_SHARE:-0.5}
SSE_SHARE=${SSE_SHARE:-0.2}
RELOAD_S=${RELOAD_S:-60}
SLOT_S=${SLOT_S:-300}
BIN=target/release/switchyard
[ -x "$BIN" ] || cargo build --release --locked
# nginx and wrk measure the saturation rate; a given RATE needs neither.
if [ -z "${RATE:-}" ]; then
  command -v nginx >/dev/null && command -v wrk >/dev/null || {
    echo "needs nginx and wrk to measure the rate (make bench installs them), or set RATE" >&2; exit 2; }
fi
(( RELOAD_S > 0 && SLOT_S > 0 )) || { echo "RELOAD_S and SLOT_S must be positive" >&2; exit 2; }
ulimit -n 65536 2>/dev/null || true

dir=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  [ -f "$dir/px.pid" ] && kill "$(cat "$dir/px.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

OLD=17201 NEW=17202 SY=17203 SYA=17204 PX=17205
"$BIN" mock --listen 127.0.0.1:$OLD --name old --http1-only --chunks 10 --chunk-delay 50ms >/dev/null 2>&1 & pids+=($!)
"$BIN" mock --listen 127.0.0.1:$NEW --name new --chunks 10 --chunk-delay 50ms >/dev/null 2>&1 & pids+=($!)
cat > "$dir/switchyard.yaml" <<YAML
listen: 127.0.0.1:$SY
admin: { listen: 127.0.0.1:$SYA }
providers:
  old:
    base_url: http://127.0.0.1:$OLD/v1
    upstream_idle_timeout: 15s
    pricing: { deepseek-chat: { input: 0.27, output: 1.10 } }
  new:
    base_url: http://127.0.0.1:$NEW/v1
    http2: true
    upstream_idle_timeout: 15s
    pricing: { deepseek-chat: { input: 0.14, output: 0.42 } }
migration:
  from: old
  to: new
  phases: [ { name: tenth, percent: 10 }, { name: half, percent: 50 } ]
  phase: tenth
  shadow_percent: 10
health_check: { interval: 5s }
server: { access_log: false, keepalive_timeout: 15s }
state_file: $dir/state.json
YAML
SWITCHYARD_LOG=warn,switchyard::memory=debug "$BIN" serve --config "$dir/switchyard.yaml" 2>"$dir/gateway.log" & sy=$!; pids+=($sy)
for _ in $(seq 100); do curl -fs "127.0.0.1:$SYA/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

if [ -z "${RATE:-}" ]; then
  cat > "$dir/proxy.conf" <<NGX
worker_processes auto; error_log $dir/nginx-error.log warn; events { worker_connections 20000; }
pid $dir/px.pid;
http {
  access_log off;
  client_body_temp_path $dir/b; proxy_temp_path $dir/p; fastcgi_temp_path $dir/f; uwsgi_temp_path $dir/u; scgi_temp_path $dir/s;
  upstream llm { server 127.0.0.1:$OLD; keepalive 128; }
  server { listen 127.0.0.1:$PX; location / { proxy_pass http://llm; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGX
  nginx -c "$dir/proxy.conf" -p "$dir" 2>/dev/null
  cat > "$dir/post.lua" <<'LUA'
wrk.method = "POST"; wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"deepseek-chat","messages":[{"role":"user","content":"Say hello."}]}'
LUA
  sat=$(wrk -t2 -c64 -d5s -s "$dir/post.lua" "http://127.0.0.1:$PX/v1/chat/completions" | awk '/Requests\/sec/ {print $2}')
  kill "$(cat "$dir/px.pid")" 2>/dev/null || true
  RATE=$(awk -v s="$sat" -v k="$RATE_SHARE" 'BEGIN{printf "%d", s*k}')
  echo "nginx saturates at $sat req/s through the HTTP/1.1 mock; the soak runs at $RATE req/s" >&2
fi
json_rate=$(awk -v r="$RATE" -v s="$SSE_SHARE" 'BEGIN{printf "%d", r*(1-s)}')
sse_rate=$(awk -v r="$RATE" -v s="$SSE_SHARE" 'BEGIN{n=int(r*s); if (n<1) n=1; print n}')

rss() { awk '/VmRSS/ {print $2}' /proc/$sy/status; }
fds() { ls /proc/$sy/fd | wc -l; }
# The latest trim's line: "in_use_kb=N free_kb=N …".
heap() { grep -o "in_use_kb=[0-9]* free_kb=[0-9]*" "$dir/gateway.log" 2>/dev/null | tail -1 |
  sed 's/in_use_kb=\([0-9]*\) free_kb=\([0-9]*\)/\1 \2/'; }
upstream() { ss -Htn state established "( dport = :$OLD or dport = :$NEW )" 2>/dev/null | wc -l; }
# What RSS follows besides a leak: the load in the gateway at that moment (client connections
# open, answers in flight), which grows when the shared machine slows the generators down.
clients() { ss -Htn state established "( sport = :$SY )" 2>/dev/null | wc -l; }
in_flight() { curl -fs -m 10 "127.0.0.1:$SYA/metrics" 2>/dev/null |
  awk '/^switchyard_responses_in_flight/ {s += $NF; n++} END {if (n) printf "%d", s; else printf "-"}'; }
base_fds=$(fds)

"$BIN" loadtest --url "http://127.0.0.1:$SY/v1" --mode sustained --rate "$json_rate" --duration "${DURATION}s" \
  --concurrency 2000 --timeout 30s --json >"$dir/json.json" 2>"$dir/json.err" & lj=$!
"$BIN" loadtest --url "http://127.0.0.1:$SY/v1" --mode sustained --rate "$sse_rate" --duration "${DURATION}s" \
  --concurrency 2000 --timeout 30s --stream --json >"$dir/sse.json" 2>"$dir/sse.err" & ls_=$!

printf '| minute | RSS MB | heap in use MB | heap free MB | open fds | upstream sockets | client conns | in flight | config version | phase |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n'
# Samples and actions go by the wall clock: under load a sample may take seconds.
start=$(date +%s); next=10; reloads=0; slots=0; rss5=""; last_rss=0
while kill -0 $lj 2>/dev/null || kill -0 $ls_ 2>/dev/null; do
  el=$(( $(date +%s) - start ))
  if (( el < next )); then sleep 1; continue; fi
  next=$(( el - el % 10 + 10 ))
  if (( el / RELOAD_S > reloads )); then
    reloads=$(( el / RELOAD_S ))
    touch "$dir/switchyard.yaml"; curl -fs -m 10 -X POST "127.0.0.1:$SYA/admin/reload" >/dev/null || echo "reload failed at $el s" >&2
  fi
  # Every 2×SLOT_S a rollback (by default at 5, 15, … min) and a phase move out of it (at 10, 20, …),
  # alternating the phase.
  if (( el / SLOT_S > slots )); then
    slots=$(( el / SLOT_S ))
    if (( slots % 2 == 1 )); then
      curl -fs -m 10 -X POST "127.0.0.1:$SYA/admin/rollback" -d '{"reason":"soak"}' >/dev/null || echo "rollback failed at $el s" >&2
    else
      next_phase=$([ $(( slots / 2 % 2 )) = 1 ] && echo half || echo tenth)
      curl -fs -m 10 -X POST "127.0.0.1:$SYA/admin/phase" -d "{\"phase\":\"$next_phase\"}" >/dev/null || echo "phase move failed at $el s" >&2
    fi
  fi
  r=$(rss)
  # The end is the last sample taken under load: once the generators stop, connections
  # close and memory is given back, which would flatter the comparison.
  if kill -0 $lj 2>/dev/null && kill -0 $ls_ 2>/dev/null; then last_rss=$r; fi
  (( el >= 300 )) && [ -z "$rss5" ] && rss5=$r
  status=$(curl -fs -m 10 "127.0.0.1:$SYA/admin/status" | tr -d ' \n' || echo '{}')
  v=$(sed -n 's/.*"config_version":\([0-9]*\).*/\1/p' <<<"$status")
  ph=$(grep -q '"rolled_back":true' <<<"$status" && echo rollback || sed -n 's/.*"phase":{"name":"\([^"]*\)".*/\1/p' <<<"$status")
  read -r hu hf <<<"$(heap)" || true
  awk -v m="$(awk -v t="$el" 'BEGIN{printf "%.1f", t/60}')" -v r="$r" -v hu="${hu:-}" -v hf="${hf:-}" -v f="$(fds)" -v u="$(upstream)" -v c="$(clients)" -v i="$(in_flight)" -v v="$v" -v p="$ph" \
    'BEGIN{printf "| %s | %.1f | %s | %s | %d | %d | %d | %s | %s | %s |\n", m, r/1024, hu == "" ? "-" : sprintf("%.1f", hu/1024), hf == "" ? "-" : sprintf("%.1f", hf/1024), f, u, c, i, v, p}'
done
wait $lj $ls_ || true
failed=0
for f in json sse; do
  n=$(tr -d ' \n' <"$dir/$f.json" | sed -n 's/.*"failed":\([0-9]*\).*/\1/p'); failed=$((failed + ${n:-1}))
  ok=$(tr -d ' \n' <"$dir/$f.json" | sed -n 's/.*"succeeded":\([0-9]*\).*/\1/p')
  echo "$f: ${ok:-?} succeeded, ${n:-?} failed" >&2
done
# What the gateway said about failures (warnings only: the log is at warn).
if (( failed > 0 )); then
  echo "gateway warnings ($(grep -c WARN "$dir/gateway.log" || true) lines), the first ten:" >&2
  grep WARN "$dir/gateway.log" | head -10 >&2 || true
  echo "what the load generators saw (the first ten failures of each):" >&2
  cat "$dir/json.err" "$dir/sse.err" >&2
fi
# Idle connections close (keep-alive 15 s, upstream idle 15 s, swept every 10 s).
sleep 40
end_fds=$(fds)
[ -n "$rss5" ] || rss5=$last_rss
awk -v a="$rss5" -v b="$last_rss" -v f0="$base_fds" -v f1="$end_fds" -v e="$failed" 'BEGIN{
  d = (b - a) / a; ok = (d <= 0.10 && d >= -0.5 && f1 <= f0 + 2 && e == 0)
  printf "RSS at minute 5 %.1f MB, at the end under load %.1f MB (%+.1f%%, target within 10%%); fds %d at start, %d after (target back to baseline); failed requests %d (target 0): %s\n",
    a/1024, b/1024, d*100, f0, f1, e, ok ? "PASS" : "FAIL"
  exit ok ? 0 : 1 }'
