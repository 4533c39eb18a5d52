#!/usr/bin/env bash
# benches/streams.sh: memory per open SSE stream, each proxy from a fresh process (issue 27).
# Usage: benches/streams.sh [TARGET ...]   TARGET: nginx | hyper-floor | switchyard-h1 |
# switchyard-h2 (default: all four, in that order). Env: N (4000) streams of 20 chunks
# 500 ms apart from `switchyard mock`; BIN (target/release/switchyard).
# Prints, per target: RSS before the burst, its peak, KB per stream, provider sockets,
# open files at the peak and the streams completed. make bench's section 3 runs its
# proxies one after another in one process each, so its later bursts start from a warmer
# heap; this one starts every target cold.
set -u
cd "$(dirname "$0")/.."
N=${N:-4000}
BIN=${BIN:-target/release/switchyard}
FLOOR=target/release/hyper-floor
[ -x "$BIN" ] || cargo build --release --locked
[ -x "$FLOOR" ] || cargo build --release --locked -q -p switchyard-bench --bin hyper-floor
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
PX=17301 MOCK=17302 ADM=17303
cat > "$dir/h1.yaml" <<YAML
listen: 127.0.0.1:$PX
admin: { listen: 127.0.0.1:$ADM }
providers:
  old: { base_url: "http://127.0.0.1:$MOCK/v1", pricing: { deepseek-chat: { input: 0.27, output: 1.10 } } }
  new: { base_url: "http://127.0.0.1:$MOCK/v1", pricing: { deepseek-chat: { input: 0.14, output: 0.42 } } }
migration: { from: old, to: new, phases: [ { name: half, percent: 50 } ], phase: half }
health_check: { interval: 60s }
server: { access_log: false, max_connections: 50000 }
state_file: $dir/state.json
YAML
sed 's#/v1", pricing#/v1", http2: true, pricing#' "$dir/h1.yaml" > "$dir/h2.yaml"
cat > "$dir/nginx.conf" <<NGX
worker_processes 2; error_log $dir/nginx-error.log warn; events { worker_connections 20000; }
pid $dir/nginx.pid;
http {
  access_log off;
  client_body_temp_path $dir/b; proxy_temp_path $dir/p; fastcgi_temp_path $dir/f; uwsgi_temp_path $dir/u; scgi_temp_path $dir/s;
  upstream llm { server 127.0.0.1:$MOCK; keepalive 128; }
  server { listen 127.0.0.1:$PX; location / { proxy_pass http://llm; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; } }
}
NGX
rss() { local t=0 p; for p in $1; do t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo $t; }
files() { local t=0 p; for p in $1; do t=$((t + $(ls "/proc/$p/fd" | wc -l))); done; echo $t; }
printf '| target | idle RSS MB | peak RSS MB | KB per stream | provider sockets | open files | completed |\n|---|---:|---:|---:|---:|---:|---:|\n'
for target in "${@:-nginx hyper-floor switchyard-h1 switchyard-h2}"; do for t in $target; do
  "$BIN" mock --listen 127.0.0.1:$MOCK --name sse --chunks 20 --chunk-delay 500ms >/dev/null 2>&1 & mock=$!
  case $t in
    nginx) nginx -c "$dir/nginx.conf" -p "$dir" 2>/dev/null; sleep 1; pids=$(pgrep -P "$(cat "$dir/nginx.pid")" | tr '\n' ' ');;
    hyper-floor) "$FLOOR" 127.0.0.1:$PX 127.0.0.1:$MOCK & pids=$!; sleep 1;;
    switchyard-h1|switchyard-h2) SWITCHYARD_LOG=warn "$BIN" serve --config "$dir/${t#switchyard-}.yaml" 2>"$dir/gw.log" & pids=$!
      for _ in $(seq 50); do curl -fs 127.0.0.1:$ADM/healthz >/dev/null 2>&1 && break; sleep 0.1; done;;
    *) echo "unknown target $t" >&2; kill $mock; exit 2;;
  esac
  idle=$(rss "$pids")
  "$BIN" loadtest --url "http://127.0.0.1:$PX/v1/chat/completions" --mode concurrent --requests "$N" --concurrency "$N" \
    --stream --timeout 120s --json >"$dir/lt.json" 2>/dev/null & lt=$!
  peak=0 up=0 fds=0
  while kill -0 $lt 2>/dev/null; do
    r=$(rss "$pids"); [ "$r" -gt "$peak" ] && peak=$r
    u=$(ss -Htn state established "( dport = :$MOCK )" | wc -l); [ "$u" -gt "$up" ] && up=$u
    f=$(files "$pids"); [ "$f" -gt "$fds" ] && fds=$f
    sleep 0.25
  done
  ok=$(tr -d ' \n' <"$dir/lt.json" | sed -n 's/.*"succeeded":\([0-9]*\).*/\1/p')
  awk -v t="$t" -v i="$idle" -v p="$peak" -v n="$N" -v u="$up" -v f="$fds" -v ok="${ok:-0}" \
    'BEGIN{printf "| %s | %.1f | %.1f | %.1f | %d | %d | %d |\n", t, i/1024, p/1024, (p-i)/n, u, f, ok}'
  case $t in nginx) kill "$(cat "$dir/nginx.pid")";; *) kill $pids;; esac
  kill $mock; wait 2>/dev/null; sleep 1
done; done
