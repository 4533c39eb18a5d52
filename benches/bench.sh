#!/usr/bin/env bash
# make bench: switchyard side by side with nginx, in front of the same upstream, on this machine.
#
#   direct      load -> upstream (nginx `return 200` with a chat-completion JSON)
#   nginx       load -> nginx reverse proxy (keep-alive upstream pool) -> upstream
#   hyper-floor load -> a bare hyper proxy (benches/micro/hyper_floor.rs: hyper server in,
#                      hyper client out, nothing else) -> upstream: what hyper alone costs
#   switchyard  load -> switchyard (two providers on that upstream, 50/50 split, metrics,
#                      usage accounting and request events on) -> upstream
#
# What users pay, in one run, ratios against nginx:
#   1. throughput and p99 under wrk (closed loop, 64 connections), and CPU time per request
#      of the proxy's own processes (utime+stime from /proc/PID/stat over the round, so the
#      load generator's share of the cores does not count);
#   2. latency added at a fixed rate (RATE_SHARE of nginx's saturation rate under wrk, open
#      loop, corrected for coordinated omission: `switchyard loadtest --mode sustained`),
#      p50, p99 and p99.9 minus direct's. The generator shares the two cores: at 0.5 it
#      saturates them itself and every proxy drops requests, so the default is 0.15;
#   3. memory and sockets per open stream: STREAMS SSE streams (20 chunks 500 ms apart, from
#      `switchyard mock`) held open at once through nginx, through switchyard speaking
#      HTTP/1.1 to the mock, and through switchyard speaking h2c to it; then RSS a while
#      after the burst.
# Rounds are interleaved (direct, nginx, hyper-floor, switchyard, direct, …) so drift on a
# shared machine hits all alike; tables show the median round. Then 100 reloads under load
# and SSE time to first token. Loopback only. Env: ROUNDS (3), DURATION (8s), CONNECTIONS
# (64), RATE_SHARE (0.15), RATE_DURATION (10s), STREAMS (4000), SETTLE (60: seconds after
# the burst before RSS is read again), SECTIONS ("1 2 3": `SECTIONS=3` measures only the
# open streams, the quick loop when working on memory), BIN (target/release/switchyard;
# `BIN=target/pgo/release/switchyard` measures `make release-pgo`'s build; the mock provider
# and the load generator stay target/release/switchyard).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-64}
RATE_SHARE=${RATE_SHARE:-0.15}
RATE_DURATION=${RATE_DURATION:-10s}
SETTLE=${SETTLE:-60}
SECTIONS=${SECTIONS:-1 2 3}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
# Each stream over HTTP/1.1 takes two sockets in the proxy (client and upstream side), and
# the load generator holds the client ends: keep within the open-files hard limit.
hard=$(ulimit -Hn); [ "$hard" = unlimited ] && hard=1048576
max_streams=$(( (hard - 600) / 2 ))
STREAMS=${STREAMS:-4000}; [ "$STREAMS" -gt "$max_streams" ] && STREAMS=$max_streams
BIN=${BIN:-target/release/switchyard}
# The mock provider and the load generator: the default build, whichever gateway is measured
# (a profile-guided build optimized the gateway's paths, not theirs).
LOAD=target/release/switchyard

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk; then
  echo "installing nginx-light and wrk (Debian packages)…" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi
  $SUDO apt-get install -y -q nginx-light wrk >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q nginx-light wrk >/dev/null; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$LOAD" ] || cargo build --release --locked
[ -x "$BIN" ] || { echo "bench: $BIN is not built (make build, or make release-pgo for target/pgo)" >&2; exit 2; }
FLOOR=target/release/hyper-floor
cargo build --release --locked -q -p switchyard-bench --bin hyper-floor

dir=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  [ -f "$dir/up.pid" ] && kill "$(cat "$dir/up.pid")" 2>/dev/null || true
  [ -f "$dir/px.pid" ] && kill "$(cat "$dir/px.pid")" 2>/dev/null || true
  [ -f "$dir/pxs.pid" ] && kill "$(cat "$dir/pxs.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

UP=17001 PX=17002 SY=17003 SYA=17004 MOCK=17005 FL=17006 PXS=17007
body='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}'

common="worker_processes auto; error_log $dir/nginx-error.log warn; events { worker_connections 20000; }"
cat > "$dir/upstream.conf" <<NGX
$common
pid $dir/up.pid;
http {
  access_log off;
  client_body_temp_path $dir/up-body; proxy_temp_path $dir/up-proxy;
  fastcgi_temp_path $dir/up-f; uwsgi_temp_path $dir/up-u; scgi_temp_path $dir/up-s;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP;
    location / { default_type application/json; return 200 '$body'; }
  }
}
NGX
cat > "$dir/proxy.conf" <<NGX
$common
pid $dir/px.pid;
http {
  access_log off;
  client_body_temp_path $dir/px-body; proxy_temp_path $dir/px-proxy;
  fastcgi_temp_path $dir/px-f; uwsgi_temp_path $dir/px-u; scgi_temp_path $dir/px-s;
  keepalive_requests 1000000;
  upstream llm { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$PX;
    location / {
      proxy_pass http://llm;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGX
# nginx in front of the streaming mock, two workers, as recommended for SSE.
sed -e "s#pid $dir/px.pid#pid $dir/pxs.pid#" -e "s#127.0.0.1:$UP#127.0.0.1:$MOCK#" -e "s#listen 127.0.0.1:$PX#listen 127.0.0.1:$PXS#" \
  -e "s#worker_processes auto#worker_processes 2#" "$dir/proxy.conf" > "$dir/proxy-sse.conf"
cat > "$dir/switchyard.yaml" <<YAML
listen: 127.0.0.1:$SY
admin: { listen: 127.0.0.1:$SYA }
providers:
  old:
    base_url: http://127.0.0.1:$UP/v1
    pricing: { deepseek-chat: { input: 0.27, output: 1.10 } }
  new:
    base_url: http://127.0.0.1:$UP/v1
    pricing: { deepseek-chat: { input: 0.14, output: 0.42 } }
migration:
  from: old
  to: new
  phases: [ { name: half, percent: 50 } ]
  phase: half
health_check: { interval: 60s }
server: { access_log: false, max_connections: 50000 }
YAML
cat > "$dir/post.lua" <<'LUA'
local counter = 0
local body = '{"model":"deepseek-chat","messages":[{"role":"user","content":"Say hello."}]}'
function setup(thread) thread:set("tid", tostring(math.random(1, 1e9))) end
function request()
  counter = counter + 1
  return wrk.format("POST", "/v1/chat/completions",
    { ["Content-Type"] = "application/json", ["x-request-id"] = tid .. "-" .. counter }, body)
end
LUA

"$NGINX" -c "$dir/upstream.conf" -p "$dir" 2>/dev/null
"$NGINX" -c "$dir/proxy.conf" -p "$dir" 2>/dev/null
"$FLOOR" "127.0.0.1:$FL" "127.0.0.1:$UP" & floor=$!; pids+=($floor)
SWITCHYARD_LOG=warn "$BIN" serve --config "$dir/switchyard.yaml" 2>"$dir/switchyard.log" & sy=$!; pids+=($sy)
for _ in $(seq 100); do curl -fs "127.0.0.1:$SYA/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1
idle_rss=$(awk '/VmRSS/ {print $2}' /proc/$sy/status)

# wrk prints "Requests/sec: N", "N requests in", and with --latency "99% 4.56ms".
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; printf "%.3f", v}'; }
# A proxy's processes: nginx's master and workers (from its pid file), or one pid.
master_and_workers() { local m; m=$(cat "$dir/$1"); echo "$m $(pgrep -P "$m" | tr '\n' ' ')"; }
procs() { case $1 in
  direct) master_and_workers up.pid;;
  nginx) master_and_workers px.pid;;
  nginx-sse) master_and_workers pxs.pid;;
  hyper-floor) echo "$floor";;
  switchyard*) echo "$sy";;
esac; }
cpu_ticks() { local t=0 p; for p in $(procs "$1"); do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
rss_kb() { local t=0 p; for p in $(procs "$1"); do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }
sockets() { local t=0 p; for p in $(procs "$1"); do t=$((t + $(find "/proc/$p/fd" -lname 'socket:*' 2>/dev/null | wc -l))); done; echo $t; }
TICK=$(getconf CLK_TCK)
run_wrk() { # target port -> "rps p50 p99 errors cpu_us_per_request"
  local c0; c0=$(cpu_ticks "$1")
  local out; out=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$dir/post.lua" "http://127.0.0.1:$2/v1/chat/completions" 2>&1)
  local c1; c1=$(cpu_ticks "$1")
  local rps p50 p99 non2xx sockerr n
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out"); non2xx=${non2xx:-0}
  sockerr=$(awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' <<<"$out"); sockerr=${sockerr:-0}
  echo "$rps $p50 $p99 $((non2xx + sockerr)) $(awk -v d=$((c1 - c0)) -v n="$n" -v t="$TICK" 'BEGIN{printf "%.1f", d*1e6/t/n}')"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "n/a" }'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | median; }
spread() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk 'NR==1{lo=$1} {hi=$1} END{printf "%s-%s", lo, hi}'; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); wrk -t2 -c$CONNECTIONS -d$DURATION; $ROUNDS interleaved rounds" >&2
TARGETS="direct nginx hyper-floor switchyard"
port_of() { case $1 in direct) echo $UP;; nginx) echo $PX;; hyper-floor) echo $FL;; switchyard) echo $SY;; esac; }
declare -A RPS P50 P99 ERR CPU
if want 1 || want 2; then
for r in $(seq "$ROUNDS"); do
  for target in $TARGETS; do
    read -r rps p50 p99 errs cpu < <(run_wrk $target "$(port_of $target)")
    RPS[$target]+="$rps "; P50[$target]+="$p50 "; P99[$target]+="$p99 "; CPU[$target]+="$cpu "; ERR[$target]=$(( ${ERR[$target]:-0} + errs ))
    echo "round $r $target: $rps req/s p50 ${p50}ms p99 ${p99}ms errors $errs cpu ${cpu}us/req" >&2
  done
done
printf '\n### 1. Throughput and CPU (wrk -t2 -c%s -d%s, median of %s rounds, spread in brackets)\n\n' "$CONNECTIONS" "$DURATION" "$ROUNDS"
printf '| target | requests/s | CPU µs/request | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|---:|\n'
for t in $TARGETS; do
  printf '| %s | %s [%s] | %s [%s] | %s | %s | %s |\n' "$t" "$(med "${RPS[$t]}")" "$(spread "${RPS[$t]}")" "$(med "${CPU[$t]}")" "$(spread "${CPU[$t]}")" "$(med "${P50[$t]}")" "$(med "${P99[$t]}")" "${ERR[$t]}"
done
ng_rps=$(med "${RPS[nginx]}")
for t in hyper-floor switchyard; do
  printf '%s/nginx: throughput %sx (target >= 1), CPU per request %sx (target <= 1), p99 %sx (target <= 1)\n' "$t" \
    "$(ratio "$(med "${RPS[$t]}")" "$ng_rps")" "$(ratio "$(med "${CPU[$t]}")" "$(med "${CPU[nginx]}")")" "$(ratio "$(med "${P99[$t]}")" "$(med "${P99[nginx]}")")"
done
printf 'switchyard/hyper-floor: CPU per request %sx (target <= 1.1)\n' \
  "$(ratio "$(med "${CPU[switchyard]}")" "$(med "${CPU[hyper-floor]}")")"

fi

# 2. Latency added at a fixed, moderate rate (open loop).
if want 2; then
RATE=$(awk -v r="$ng_rps" -v s="$RATE_SHARE" 'BEGIN{printf "%d", r*s}')
lat() { # port -> "p50 p99 p999 failed"
  local j; j=$("$LOAD" loadtest --url "http://127.0.0.1:$1/v1" --mode sustained --rate "$RATE" --duration "$RATE_DURATION" --concurrency 2000 --timeout 10s --json 2>/dev/null | tr -d ' \n')
  local k; for k in p50_ms p99_ms p999_ms; do sed -n "s/.*\"latency_ms\":{[^}]*\"$k\":\([0-9.]*\).*/\1/p" <<<"$j" | tr '\n' ' '; done
  sed -n 's/.*"failed":\([0-9]*\).*/\1/p' <<<"$j"
}
declare -A L50 L99 L999 LF
for r in $(seq "$ROUNDS"); do
  for target in $TARGETS; do
    read -r a b c f < <(lat "$(port_of $target)")
    L50[$target]+="$a "; L99[$target]+="$b "; L999[$target]+="$c "; LF[$target]=$(( ${LF[$target]:-0} + ${f:-0} ))
    echo "rate round $r $target: p50 ${a}ms p99 ${b}ms p99.9 ${c}ms failed $f" >&2
  done
done
printf '\n### 2. Latency added at %s requests/s (%s of nginx'"'"'s saturation; open loop, from each request'"'"'s due time; median of %s rounds)\n\n' "$RATE" "$RATE_SHARE" "$ROUNDS"
printf '| target | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 | added p99.9 | failed |\n|---|---:|---:|---:|---:|---:|---:|---:|\n'
d50=$(med "${L50[direct]}"); d99=$(med "${L99[direct]}"); d999=$(med "${L999[direct]}")
for t in $TARGETS; do
  a=$(med "${L50[$t]}"); b=$(med "${L99[$t]}"); c=$(med "${L999[$t]}")
  awk -v t="$t" -v a="$a" -v b="$b" -v c="$c" -v x="$d50" -v y="$d99" -v z="$d999" -v f="${LF[$t]}" \
    'BEGIN{printf "| %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %s |\n", t, a, b, c, a-x, b-y, c-z, f}'
done
for t in hyper-floor switchyard; do
  awk -v t="$t" -v s="$(med "${L99[$t]}")" -v n="$(med "${L99[nginx]}")" -v d="$d99" \
    'BEGIN{ if (n-d > 0) printf "%s/nginx added p99: %.2fx (target <= 1)\n", t, (s-d)/(n-d); }'
done

fi

# Reload cost: 100 reloads during one switchyard run.
if want 1; then
(
  sleep 0.5
  for _ in $(seq 100); do curl -fs -X POST "127.0.0.1:$SYA/admin/reload" >/dev/null || echo "reload failed" >&2; sleep 0.05; done
) & reloader=$!
read -r rps p50 p99 errs _ < <(run_wrk switchyard $SY)
wait $reloader
version=$(curl -fs "127.0.0.1:$SYA/admin/status" | sed -n 's/.*"config_version": *\([0-9]*\).*/\1/p')
printf '\nreloads under load: config_version %s after 100 reloads; %s req/s, p99 %sms, errors %s (target 0)\n' "$version" "$rps" "$p99" "$errs"
fi

# SSE: time to first chunk through switchyard vs straight to a streaming mock.
"$LOAD" mock --listen 127.0.0.1:$MOCK --name sse --chunks 5 --chunk-delay 2ms >/dev/null 2>&1 & pids+=($!)
sed -i "s#http://127.0.0.1:$UP/v1#http://127.0.0.1:$MOCK/v1#g" "$dir/switchyard.yaml"
curl -fs -X POST "127.0.0.1:$SYA/admin/reload" >/dev/null
sleep 0.3
if want 1; then
ttft() { "$LOAD" loadtest --url "$1" --requests 2000 --concurrency 16 --stream --json | tr -d ' \n' | sed -n "s/.*\"ttft_ms\":{[^}]*\"$2\":\([0-9.]*\).*/\1/p"; }
d50=$(ttft "http://127.0.0.1:$MOCK/v1" p50_ms); d99=$(ttft "http://127.0.0.1:$MOCK/v1" p99_ms)
s50=$(ttft "http://127.0.0.1:$SY/v1" p50_ms); s99=$(ttft "http://127.0.0.1:$SY/v1" p99_ms)
awk -v d50="$d50" -v d99="$d99" -v s50="$s50" -v s99="$s99" 'BEGIN {
  printf "SSE time to first token: direct p50 %.3fms p99 %.3fms; through switchyard p50 %.3fms p99 %.3fms; overhead p50 %.3fms p99 %.3fms (target <= 1ms at p99)\n", d50, d99, s50, s99, s50-d50, s99-d99 }'
fi

# 3. Memory and sockets per open stream, the same streams through each proxy.
kill "${pids[-1]}" 2>/dev/null || true
wait "${pids[-1]}" 2>/dev/null || true
"$LOAD" mock --listen 127.0.0.1:$MOCK --name sse --chunks 20 --chunk-delay 500ms >/dev/null 2>&1 & pids+=($!)
"$NGINX" -c "$dir/proxy-sse.conf" -p "$dir" 2>/dev/null
sleep 0.5
hold() { # target port -> "peak_rss_kb idle_rss_kb peak_sockets idle_sockets upstream_sockets completed"
  local idle_rss idle_sock peak=0 psock=0 up=0 rss s u
  idle_rss=$(rss_kb "$1"); idle_sock=$(sockets "$1")
  "$LOAD" loadtest --url "http://127.0.0.1:$2/v1/chat/completions" --mode concurrent --requests "$STREAMS" --concurrency "$STREAMS" --stream --timeout 120s --json >"$dir/streams.json" 2>/dev/null &
  local lt=$!
  while kill -0 $lt 2>/dev/null; do
    rss=$(rss_kb "$1"); [ "$rss" -gt "$peak" ] && peak=$rss
    s=$(sockets "$1"); [ "$s" -gt "$psock" ] && psock=$s
    u=$(ss -Htnp state established "( dport = :$MOCK )" 2>/dev/null | grep -cE "pid=($(procs "$1" | xargs | tr ' ' '|'))," || true); [ "$u" -gt "$up" ] && up=$u
    sleep 0.25
  done
  local ok; ok=$(tr -d ' \n' <"$dir/streams.json" | sed -n 's/.*"succeeded":\([0-9]*\).*/\1/p')
  echo "$peak $idle_rss $psock $idle_sock $up ${ok:-0}"
}
h2_yaml() { sed "s#base_url: http://127.0.0.1:$MOCK/v1#base_url: http://127.0.0.1:$MOCK/v1\n    http2: true#" "$dir/switchyard.yaml"; }
cp "$dir/switchyard.yaml" "$dir/switchyard-h1.yaml"
h2_yaml > "$dir/switchyard-h2.yaml"
use() { cp "$dir/switchyard-$1.yaml" "$dir/switchyard.yaml"; curl -fs -X POST "127.0.0.1:$SYA/admin/reload" >/dev/null; sleep 0.3; }
printf '\n### 3. %s SSE streams held open at once (20 chunks 500 ms apart)\n\n' "$STREAMS"
printf '| target | peak RSS MB | KB per open stream | sockets per open stream | upstream sockets | completed |\n|---|---:|---:|---:|---:|---:|\n'
declare -A KB
for target in nginx-sse switchyard-h2 switchyard-h1; do
  case $target in nginx-sse) port=$PXS;; switchyard-h1) use h1; port=$SY;; switchyard-h2) use h2; port=$SY;; esac
  # The last burst's memory is given back (and its connections closed) before the next.
  sleep 5
  read -r peak idle psock isock up ok < <(hold $target $port)
  KB[$target]=$(awk -v p="$peak" -v i="$idle" -v n="$STREAMS" 'BEGIN{printf "%.1f", (p-i)/n}')
  name=$target; case $target in nginx-sse) name=nginx;; switchyard-h1) name="switchyard, HTTP/1.1 upstream";; switchyard-h2) name="switchyard, h2c upstream";; esac
  awk -v t="$name" -v p="$peak" -v kb="${KB[$target]}" -v s="$psock" -v i="$isock" -v n="$STREAMS" -v u="$up" -v ok="$ok" \
    'BEGIN{printf "| %s | %.1f | %s | %.2f | %d | %d |\n", t, p/1024, kb, (s-i)/n, u, ok}'
done
printf 'switchyard-h1/nginx memory per open stream: %sx (target <= 1)\n' "$(ratio "${KB[switchyard-h1]}" "${KB[nginx-sse]}")"
printf 'switchyard-h2/nginx memory per open stream: %sx (target <= 0.8)\n' "$(ratio "${KB[switchyard-h2]}" "${KB[nginx-sse]}")"
sleep "$SETTLE"
printf 'memory: idle RSS %.1f MB at start (target <= 20); %.1f MB %ss after the last burst (target <= 2x idle)\n' \
  "$(awk -v k="$idle_rss" 'BEGIN{print k/1024}')" "$(awk -v k="$(rss_kb switchyard)" 'BEGIN{print k/1024}')" "$SETTLE"
