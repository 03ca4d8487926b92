#!/usr/bin/env bash
# The monitoring script of seed 000 appendix B.2: the system's health, its key metrics and
# its recent errors, for an operator at a terminal.
#
#   scripts/ops/monitor.sh [health|metrics|logs|all]     (default: all)
#
# Settings: PRIMED_URL (or PRIMED_HTTP_ADDR), DATABASE_URL or MYSQL_*, REDIS_HOST/REDIS_PORT,
# NATS_URL (nats://host:port) and NATS_MONITOR_URL (http://host:8222, optional),
# PROMETHEUS_URL (optional; rates come from it, else from the daemon's counters), and
# PRIMED_LOGS: `journalctl` (the systemd unit, the default where systemd runs), `compose`
# (docker compose logs primed) or a file of the daemon's JSON log. Exits 1 when a health
# check failed.
set -uo pipefail
here=$(dirname "$0")
# shellcheck source=lib.sh
. "$here/lib.sh"

failed=0
url=$(primed_url)
line() { printf '%-10s %s\n' "$1" "$2"; }
down() { line "$1" "DOWN: $2"; failed=1; }

check_health() {
  echo "=== System Health Check ==="
  local health
  if health=$(curl -sS --max-time 5 "$url/health" 2>&1) && status=$(jq -r '.status' <<<"$health" 2>/dev/null); then
    line API "$status ($url)"
    [ "$status" = ok ] || failed=1
  else
    down API "$url/health: $health"
  fi
  local out
  if out=$(db_query "SELECT 1" 2>&1); then line Database ok; else down Database "$out"; fi
  if out=$(redis-cli -h "${REDIS_HOST:-127.0.0.1}" -p "${REDIS_PORT:-6379}" ping 2>&1) && [ "$out" = PONG ]; then
    line Redis PONG
  else
    down Redis "${out:-no answer}"
  fi
  if [ -n "${NATS_MONITOR_URL:-}" ]; then
    if out=$(curl -fsS --max-time 5 "${NATS_MONITOR_URL%/}/varz" | jq -r '"\(.connections) connections, JetStream \(.jetstream.config.store_dir // "off")"' 2>&1); then
      line NATS "$out"
    else
      down NATS "$out"
    fi
  else
    local nats=${NATS_URL:-nats://127.0.0.1:4222} greeting=
    nats=${nats#nats://}
    if exec 3<>"/dev/tcp/${nats%:*}/${nats##*:}" 2>/dev/null && read -r -t 2 greeting <&3 && [[ $greeting == INFO* ]]; then
      line NATS "answers on ${nats}"
    else
      down NATS "no INFO greeting on ${nats}"
    fi
    exec 3>&- 2>/dev/null
  fi
  echo "--- Workers (worker_health_checks) ---"
  if out=$(db_query "SELECT worker_name, status, TIMESTAMPDIFF(SECOND, last_heartbeat, NOW(6)) FROM worker_health_checks ORDER BY worker_name" 2>&1); then
    awk -F'\t' '{ printf "%-44s %-9s %ss ago\n", $1, $2, $3 }' <<<"$out"
    if awk -F'\t' '$2 != "healthy" || $3 > 120 { bad = 1 } END { exit !bad }' <<<"$out"; then failed=1; fi
  else
    down Workers "$out"
  fi
}

prom() { # query → the first value, or empty
  curl -fsS --max-time 5 --get "${PROMETHEUS_URL%/}/api/v1/query" --data-urlencode "query=$1" \
    | jq -r '.data.result[0].value[1] // empty'
}

get_metrics() {
  echo "=== Key Metrics ==="
  if [ -n "${PROMETHEUS_URL:-}" ]; then
    line "Requests" "$(prom 'sum(rate(http_requests_total[1m]))') /s"
    line "Errors" "$(prom 'sum(rate(http_requests_total{status=~"5.."}[5m])) / sum(rate(http_requests_total[5m]))')"
  fi
  local metrics
  if ! metrics=$(curl -fsS --max-time 5 "$url/metrics" 2>&1); then
    down Metrics "$url/metrics: $metrics"
    return
  fi
  awk '
    /^http_requests_total\{/ { all += $NF; if ($0 ~ /status="5/) bad += $NF }
    /^message_queue_length\{/ { split($0, a, "\""); printf "%-10s %s: %s\n", "Queue", a[2], $NF }
    /^dlq_message_count\{status="pending"\}/ { printf "%-10s %s pending\n", "DLQ", $NF }
    /^outbox_pending / { printf "%-10s %s not yet published\n", "Outbox", $NF }
    END { printf "%-10s %d answered, %d of them 5xx, since start\n", "Requests", all, bad }
  ' <<<"$metrics"
}

analyze_logs() {
  echo "=== Recent Errors ==="
  local source=${PRIMED_LOGS:-}
  if [ -z "$source" ]; then
    if command -v journalctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then source=journalctl; else source=compose; fi
  fi
  case $source in
    journalctl) journalctl -u primed --since "-1h" -o cat --no-pager 2>&1 ;;
    compose) docker compose logs --no-color --tail=500 primed 2>&1 ;;
    *) tail -n 2000 "$source" 2>&1 ;;
  esac | grep -E '"level":"(ERROR|WARN)"|error' | tail -10
}

case ${1:-all} in
  health) check_health ;;
  metrics) get_metrics ;;
  logs) analyze_logs ;;
  all) check_health; get_metrics; analyze_logs ;;
  *) echo "usage: $0 [health|metrics|logs|all]" >&2; exit 64 ;;
esac
exit "$failed"
