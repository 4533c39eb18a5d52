#!/usr/bin/env bash
# make demo: a migration in about a minute, with nothing configured and no API keys.
# Two mock providers (old: slow, new: fast and cheap), the gateway in front, traffic
# through the four phases, a shadow test, then the new side breaks (answering 200 with an
# error object, as failing relays do) and the gateway rolls back by itself. Ports 18080 (gateway), 19090 (admin), 19001/19002 (mocks), 19003 (alert sink).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/switchyard}
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
admin=http://127.0.0.1:19090

cat > "$dir/switchyard.yaml" <<YAML
listen: 127.0.0.1:18080
admin: { listen: 127.0.0.1:19090 }
providers:
  old:
    base_url: http://127.0.0.1:19001/v1
    pricing: { deepseek-chat: { input: 0.27, output: 1.10 } }
  new:
    base_url: http://127.0.0.1:19002/v1
    timeout: 5s
    pricing: { deepseek-chat: { input: 0.14, output: 0.42 } }
migration:
  from: old
  to: new
  phases:
    - { name: phase-1, percent: 10 }
    - { name: phase-2, percent: 25 }
    - { name: phase-3, percent: 50 }
    - { name: phase-4, percent: 100 }
  phase: phase-1
  shadow_percent: 0
  auto_rollback: { window: 50, min_requests: 20, max_error_rate: 0.10, max_p95_latency: 3s }
alerts: { webhook_url_env: DEMO_WEBHOOK, cooldown: 10s }
health_check: { interval: 2s }
server: { access_log: false }
YAML

"$BIN" mock --listen 127.0.0.1:19001 --name old --latency 300ms --chunk-delay 30ms >/dev/null & pids+=($!)
# new also drops tool calls, as some relays do: the compatibility report will say so.
"$BIN" mock --listen 127.0.0.1:19002 --name new --latency 60ms --chunk-delay 10ms --ignore tools >/dev/null & pids+=($!)
"$BIN" mock --listen 127.0.0.1:19003 --name alerts >/dev/null & pids+=($!)
DEMO_WEBHOOK=http://127.0.0.1:19003/webhook SWITCHYARD_LOG=warn "$BIN" serve --config "$dir/switchyard.yaml" 2>"$dir/gateway.log" & pids+=($!)
for _ in $(seq 50); do "$BIN" phase status --admin $admin >/dev/null 2>&1 && break; sleep 0.2; done

say "The config: old (300 ms, \$0.27/\$1.10) -> new (60 ms, \$0.14/\$0.42), four phases"
"$BIN" phase status --admin $admin
say "What the move saves at 1B tokens/month, 30% input (switchyard cost)"
"$BIN" cost --config "$dir/switchyard.yaml" --tokens-per-month 1000000000 --input-share 0.3

say "Shadow test first: mirror half of what old serves to new (shadow_percent: 50, a live reload)"
sed -i 's/shadow_percent: 0/shadow_percent: 50/' "$dir/switchyard.yaml"
for _ in $(seq 50); do grep -q '"config_version": 2' <("$BIN" phase status --admin $admin --json) && break; sleep 0.1; done
"$BIN" loadtest --url http://127.0.0.1:18080/v1 --requests 100 --concurrency 10 | sed -n '3p;5p'
sleep 0.5
"$BIN" stats --admin $admin | grep '^shadow'
say "40 requests that offer a tool, mirrored too: does new call tools as old does? (switchyard report)"
cat > "$dir/tools.json" <<'JSON'
{"model": "deepseek-chat", "messages": [{"role": "user", "content": "weather in Oslo?"}],
 "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]}
JSON
seq 40 | xargs -P 10 -I{} curl -s -o /dev/null -H 'content-type: application/json' -H 'x-request-id: tool-{}' \
  --data @"$dir/tools.json" http://127.0.0.1:18080/v1/chat/completions
sleep 0.5
"$BIN" report --admin $admin | head -4
sed -i 's/shadow_percent: 50/shadow_percent: 0/' "$dir/switchyard.yaml"

for phase in phase-1 phase-2 phase-3 phase-4; do
  say "$phase: 200 requests through the gateway"
  "$BIN" phase set $phase --admin $admin | sed -n 2p
  "$BIN" loadtest --url http://127.0.0.1:18080/v1 --requests 200 --concurrency 20 | sed -n '3p;5p'
  "$BIN" stats --admin $admin | head -3
done

say "The new side breaks as relays do: 200s with an error object instead of an answer; the judge sees it and rolls back by itself"
kill "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
"$BIN" mock --listen 127.0.0.1:19002 --name new --latency 60ms --fault error_in_200 >/dev/null & pids[1]=$!
sleep 0.5
"$BIN" loadtest --url http://127.0.0.1:18080/v1 --requests 100 --concurrency 5 | sed -n '3,4p'
"$BIN" phase status --admin $admin
grep -h "switchyard::alert" "$dir/gateway.log" | grep ROLLBACK | sed 's/^.*switchyard::alert: /alert: /' | head -1

say "Side by side (switchyard stats)"
"$BIN" stats --admin $admin
printf '\nThat was a migration: phases, stable cohorts, live stats and cost, and an automatic rollback.\n'
