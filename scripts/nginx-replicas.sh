#!/usr/bin/env bash
# Three stateless `lowbit serve` replicas behind nginx (least_conn, passive health checks,
# WebSocket upgrades), on loopback. Runs concurrent streaming clients through nginx, kills one
# replica (SIGKILL) mid-load, and checks:
#   - the killed replica's in-flight requests end in a truncated stream (counted as failed),
#   - every other request completes (`data: [DONE]` after a final chunk with usage),
#   - requests sent after the kill all complete, on the live replicas.
# Prints completions per replica (from each replica's /metrics), failures, /metrics excerpts.
# Exits non-zero when a property breaks. Needs nginx (Debian package `nginx`), curl, python3.
#
# Usage: scripts/nginx-replicas.sh            (builds target/release/lowbit if needed)
# Env:   LOWBIT_MODELS_DIR (models/), CLIENTS (24), AFTER (12), MAX_TOKENS (40)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

clients=${CLIENTS:-24}
after=${AFTER:-12}
max_tokens=${MAX_TOKENS:-40}
model=${LOWBIT_MODELS_DIR:-$root/models}/SmolLM2-135M-Instruct.Q4_1.gguf
target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/release/lowbit

for tool in nginx curl python3; do
  command -v "$tool" >/dev/null || { echo "nginx-replicas: $tool is not installed" >&2; exit 1; }
done
[ -f "$model" ] || { echo "nginx-replicas: no model at $model (scripts/fetch-models.sh)" >&2; exit 1; }
cargo build --release --bin lowbit -q

work=$(mktemp -d)
pids=()
nginx_pid=""
cleanup() {
  # nginx's master stops its worker on TERM (a KILLed master would leave the worker behind).
  [ -n "$nginx_pid" ] && kill -TERM "$nginx_pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- replicas --------------------------------------------------------------------------------
ports=()
for i in 1 2 3; do
  "$bin" serve --backend cpu --threads 1 --quant int8 --port 0 --ctx 256 \
    --max-new-tokens 64 --drain-timeout-s 5 --model "$model" 2>"$work/replica$i.log" &
  pids+=($!)
  rpid[i]=$!
done
for i in 1 2 3; do
  for _ in $(seq 600); do
    if grep -q ' on http://' "$work/replica$i.log"; then break; fi
    kill -0 "${rpid[i]}" 2>/dev/null || { cat "$work/replica$i.log" >&2; exit 1; }
    sleep 0.1
  done
  port=$(sed -n 's|.* on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$work/replica$i.log" | head -1)
  [ -n "$port" ] || { echo "replica $i did not start" >&2; cat "$work/replica$i.log" >&2; exit 1; }
  ports[i]=$port
done
echo "replicas: 1=127.0.0.1:${ports[1]} 2=127.0.0.1:${ports[2]} 3=127.0.0.1:${ports[3]}"

# --- nginx -----------------------------------------------------------------------------------
lb=$(free_port)
mkdir -p "$work/tmp"
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"
cat >"$work/nginx.conf" <<EOF
$user_line
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 512; }
http {
  log_format upstream '\$request \$status upstream=\$upstream_addr upstream_status=\$upstream_status';
  access_log $work/nginx-access.log upstream;
  client_body_temp_path $work/tmp/body;
  proxy_temp_path $work/tmp/proxy;
  fastcgi_temp_path $work/tmp/fastcgi;
  uwsgi_temp_path $work/tmp/uwsgi;
  scgi_temp_path $work/tmp/scgi;

  upstream lowbit {
    least_conn;
    server 127.0.0.1:${ports[1]} max_fails=1 fail_timeout=30s;
    server 127.0.0.1:${ports[2]} max_fails=1 fail_timeout=30s;
    server 127.0.0.1:${ports[3]} max_fails=1 fail_timeout=30s;
  }
  map \$http_upgrade \$connection_upgrade {
    default upgrade;
    ''      '';
  }
  server {
    listen 127.0.0.1:$lb;
    location / {
      proxy_pass http://lowbit;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
      proxy_buffering off;
      proxy_read_timeout 600s;
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
      proxy_next_upstream_tries 3;
      add_header X-Lowbit-Upstream \$upstream_addr always;
    }
  }
}
EOF
nginx -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log" </dev/null >/dev/null 2>&1 &
nginx_pid=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$lb/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$lb/health/ready" >/dev/null || { cat "$work/nginx-error.log" >&2; exit 1; }
echo "nginx: 127.0.0.1:$lb (least_conn, max_fails=1 fail_timeout=30s)"

# WebSocket upgrade through nginx: 101 and the server's init frame.
ws=$(curl -sS -i -N --http1.1 --max-time 3 -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
  -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
  "http://127.0.0.1:$lb/ws" 2>/dev/null | tr -d '\0' || true)
if grep -aq '^HTTP/1.1 101' <<<"$ws" && grep -aq '"type":"init"' <<<"$ws"; then
  echo "websocket via nginx: 101 Switching Protocols, init frame received"
else
  echo "FAIL: WebSocket upgrade through nginx: $ws" >&2; exit 1
fi

# --- clients ---------------------------------------------------------------------------------
# One streamed completion; writes its headers, body and curl's exit code.
client() {
  local name=$1
  curl -sS -N --max-time 300 -D "$work/$name.h" -o "$work/$name.body" \
    -H 'content-type: application/json' \
    -d "{\"prompt\": \"Once upon a time, in a town by the sea,\", \"max_tokens\": $max_tokens, \"temperature\": 0, \"stream\": true}" \
    "http://127.0.0.1:$lb/v1/completions" 2>"$work/$name.err" && rc=0 || rc=$?
  echo "$rc" >"$work/$name.rc"
}
# Whether a client's stream is whole: curl succeeded, a last chunk with usage, then [DONE].
complete() {
  local name=$1
  [ "$(cat "$work/$name.rc")" = 0 ] &&
    grep -q '"completion_tokens":'"$max_tokens" "$work/$name.body" &&
    [ "$(grep '^data: ' "$work/$name.body" | tail -1)" = "data: [DONE]" ]
}
# The replica that served a client (the last upstream nginx tried).
served_by() {
  { sed -n 's/^[Xx]-[Ll]owbit-[Uu]pstream: //p' "$work/$1.h" 2>/dev/null || true; } |
    tr -d '\r' | awk -F', ' '{print $NF}'
}
metric() { # port series
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v s="$2" '$1 == s {print $2}'
}

victim=2
victim_addr=127.0.0.1:${ports[victim]}
client_pids=()
for i in $(seq "$clients"); do
  client "load$i" &
  client_pids+=($!)
done
# Kill the victim once its streams are under way (tokens delivered, requests still running).
for _ in $(seq 600); do
  active=$(metric "${ports[victim]}" lowbit_active_requests || echo 0)
  if [ "${active:-0}" != 0 ] && [ "$(curl -sf "http://127.0.0.1:${ports[victim]}/metrics" |
    awk '$1 == "lowbit_time_to_first_token_seconds_count" {print $2}')" != 0 ]; then
    break
  fi
  sleep 0.1
done
echo
echo "--- /metrics of replica $victim just before SIGKILL (excerpt)"
curl -sf "http://127.0.0.1:${ports[victim]}/metrics" |
  grep -E '^lowbit_(requests_total|active_requests|queue_length|batch_size|completion_tokens_total|time_to_first_token_seconds_count)' || true
victim_completed=$(metric "${ports[victim]}" 'lowbit_requests_total{outcome="completed"}')
victim_active=$(metric "${ports[victim]}" lowbit_active_requests)
kill -KILL "${rpid[victim]}"
wait "${rpid[victim]}" 2>/dev/null || true
echo "killed replica $victim ($victim_addr) with $victim_active requests in flight"
for p in "${client_pids[@]}"; do wait "$p" || true; done

# Requests after the kill: every one must complete on a live replica.
client_pids=()
for i in $(seq "$after"); do
  client "after$i" &
  client_pids+=($!)
done
for p in "${client_pids[@]}"; do wait "$p" || true; done

# --- verdict ---------------------------------------------------------------------------------
fail=0
ok=0
failed=0
failed_victim=0
for i in $(seq "$clients"); do
  by=$(served_by "load$i")
  if complete "load$i"; then
    ok=$((ok + 1))
  else
    failed=$((failed + 1))
    if [ "$by" = "$victim_addr" ]; then
      failed_victim=$((failed_victim + 1))
    else
      echo "FAIL: request load$i on ${by:-no replica} did not complete:" \
        "curl rc $(cat "$work/load$i.rc"), $(tail -c 300 "$work/load$i.body")" >&2
      fail=1
    fi
  fi
done
after_ok=0
for i in $(seq "$after"); do
  by=$(served_by "after$i")
  if complete "after$i" && [ "$by" != "$victim_addr" ]; then
    after_ok=$((after_ok + 1))
  else
    echo "FAIL: request after$i (after the kill, served by ${by:-none}) did not complete:" \
      "curl rc $(cat "$work/after$i.rc")" >&2
    fail=1
  fi
done
echo
echo "load: $clients streaming clients: $ok completed, $failed failed ($failed_victim on the killed replica)"
retried=$(grep -c "upstream=$victim_addr, " "$work/nginx-access.log" || true)
echo "after the kill: $after requests: $after_ok completed ($retried first sent to the dead replica," \
  "refused, retried by nginx on a live one)"
example=$(for i in $(seq "$clients"); do complete "load$i" || { echo "load$i"; break; }; done)
if [ -n "$example" ]; then
  echo "a failed client saw: curl: $(tr -d '\n' <"$work/$example.err"), last event:" \
    "$(grep '^data: ' "$work/$example.body" | tail -1 | cut -c1-120)"
fi
if [ "$failed_victim" != "$victim_active" ]; then
  echo "FAIL: the killed replica had $victim_active requests in flight, $failed_victim failed" >&2
  fail=1
fi
[ "$failed_victim" -ge 1 ] || { echo "FAIL: the kill hit no request in flight" >&2; fail=1; }

echo
echo "completed per replica (lowbit_requests_total{outcome=\"completed\"}):"
total=$victim_completed
echo "  replica $victim ($victim_addr): $victim_completed (at the kill)"
for i in 1 3; do
  c=$(metric "${ports[i]}" 'lowbit_requests_total{outcome="completed"}')
  total=$((total + ${c%.*}))
  echo "  replica $i (127.0.0.1:${ports[i]}): $c"
done
if [ "$total" != $((ok + after_ok)) ]; then
  echo "FAIL: replicas count $total completions, clients saw $((ok + after_ok))" >&2
  fail=1
fi
echo
echo "--- /metrics of replica 1 (excerpt)"
curl -sf "http://127.0.0.1:${ports[1]}/metrics" |
  grep -E '^lowbit_(requests_total|prompt_tokens_total|completion_tokens_total|active_requests|kv_cache_bytes|weight_bytes|ready)|^lowbit_time_to_first_token_seconds_(bucket\{le="(0.5|1|2.5|\+Inf)"\}|count)|^lowbit_token_latency_seconds_(bucket\{le="(0.05|0.1|0.2|\+Inf)"\}|sum|count)'
echo
echo "--- nginx log of the kill"
grep -E 'prematurely|refused|no live upstreams' "$work/nginx-error.log" | sed 's/^[0-9/]* [0-9:]* //' | head -4 || true
if [ "$fail" != 0 ]; then
  echo "nginx-replicas: FAILED" >&2
  exit 1
fi
echo "nginx-replicas: ok"
