#!/usr/bin/env bash
# The daily check of seed 000 §7.1.1, against primed's real schema: the daemon answers, every
# actor heartbeats, nothing piles up (unpublished outbox events, waiting messages, pending
# dead letters), the error rate, and the disks. Prints one line per check; exits 1 when any
# check found a problem, so cron or a monitoring agent can alert on it.
#
#   PRIMED_URL=http://127.0.0.1:8080 MYSQL_HOST=db MYSQL_PASSWORD=… scripts/ops/daily-check.sh
#
# Settings: PRIMED_URL (or PRIMED_HTTP_ADDR), DATABASE_URL or MYSQL_*, PROMETHEUS_URL
# (optional: the error rate is read from it, else from the daemon's own counters),
# QUEUE_LIMIT (1000), DLQ_LIMIT (100 pending dead letters), DISK_LIMIT (80 %).
set -uo pipefail
here=$(dirname "$0")
# shellcheck source=lib.sh
. "$here/lib.sh"

problems=0
ok() { printf 'ok       %s\n' "$*"; }
problem() { printf 'PROBLEM  %s\n' "$*"; problems=$((problems + 1)); }
url=$(primed_url)
queue_limit=${QUEUE_LIMIT:-1000}

# 1. The daemon, and every actor of every daemon on this database.
if health=$(curl -fsS --max-time 5 "$url/health" 2>/dev/null); then
  ok "primed at $url: $(jq -r '.status' <<<"$health" 2>/dev/null)"
else
  problem "primed at $url does not answer /health (or answers it is not healthy): $(curl -sS --max-time 5 "$url/health" 2>&1 | head -c 300)"
fi
if down=$(db_query "SELECT worker_name FROM worker_health_checks WHERE status = 'unhealthy' OR last_heartbeat < NOW(6) - INTERVAL 2 MINUTE ORDER BY worker_name" 2>&1); then
  if [ -z "$down" ]; then
    ok "workers: every actor heartbeats"
  else
    problem "workers down or silent for 2 minutes: $(tr '\n' ' ' <<<"$down")"
  fi
else
  problem "DB connection failed: $down"
fi

# 2. Backlogs: the outbox (events not yet published), the queues, the DLQ.
if n=$(db_query "SELECT COUNT(*) FROM outbox WHERE state <> 'published'" 2>&1); then
  if [ "$n" -gt "$queue_limit" ]; then problem "outbox: $n events not yet published (NATS down? see outbox_relay_lag_seconds)"; else ok "outbox: $n events not yet published"; fi
else
  problem "DB connection failed: $n"
fi
if n=$(db_query "SELECT COUNT(*) FROM dead_letter_messages WHERE status = 'pending'" 2>&1); then
  if [ "$n" -gt "${DLQ_LIMIT:-100}" ]; then problem "DLQ: $n pending dead letters (primed dlq groups)"; else ok "DLQ: $n pending dead letters"; fi
else
  problem "DB connection failed: $n"
fi
if metrics=$(curl -fsS --max-time 5 "$url/metrics" 2>/dev/null); then
  while read -r queue n; do
    n=${n%.*}
    if [ "$n" -gt "$queue_limit" ]; then problem "queue $queue: $n messages waiting"; else ok "queue $queue: $n messages waiting"; fi
  done < <(awk -F'[{}" ]+' '/^message_queue_length\{/ {print $3, $NF}' <<<"$metrics")
fi

# 3. The error rate over 5 minutes (from Prometheus), or since the daemon started.
if [ -n "${PROMETHEUS_URL:-}" ]; then
  rate=$(curl -fsS --max-time 5 --get "${PROMETHEUS_URL%/}/api/v1/query" \
    --data-urlencode 'query=sum(rate(http_requests_total{status=~"5.."}[5m])) / sum(rate(http_requests_total[5m])) * 100' \
    | jq -r '.data.result[0].value[1] // "0"' 2>/dev/null) || rate=
  source="over 5 minutes"
else
  rate=$(awk '/^http_requests_total\{/ { all += $NF; if ($0 ~ /status="5/) bad += $NF }
    END { if (all > 0) printf "%.3f", bad / all * 100; else print 0 }' <<<"${metrics:-}")
  source="since the daemon started"
fi
if [ -z "$rate" ]; then
  problem "error rate: Prometheus at $PROMETHEUS_URL does not answer"
elif awk -v r="$rate" 'BEGIN { exit !(r > 1) }'; then
  problem "error rate: $rate % of answers are 5xx $source (over 1 %)"
else
  ok "error rate: $rate % 5xx $source"
fi

# 4. Disks.
full=$(df -P -x tmpfs -x devtmpfs -x overlay 2>/dev/null | awk -v limit="${DISK_LIMIT:-80}" 'NR > 1 { use = $5; sub("%", "", use); if (use + 0 > limit) print $6 " " $5 }')
if [ -n "$full" ]; then problem "disk usage over ${DISK_LIMIT:-80} %: $(tr '\n' ' ' <<<"$full")"; else ok "disks under ${DISK_LIMIT:-80} %"; fi

if [ "$problems" -gt 0 ]; then
  echo "$problems problem(s) found"
  exit 1
fi
echo "all checks passed"
