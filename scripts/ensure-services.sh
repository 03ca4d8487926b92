#!/usr/bin/env bash
# Makes sure the local services the tests use are answering on loopback, starting any that
# is not, the same way the development machines start them. Also installs the tools tests
# call (systemd-analyze, and maildev for the worker tests). Safe to run again: it only starts what is down.
set -euo pipefail

log() { printf '[services] %s\n' "$*"; }

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then log "$name is up"; return 0; fi
    sleep 0.2
  done
  log "$name did not come up within ${secs}s"; return 1
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

mariadb_up() { mariadb -h 127.0.0.1 -P 3306 -u root -e 'SELECT 1' >/dev/null 2>&1; }
nats_up() { # a NATS server greets every connection with an INFO line
  local line
  exec 3<>/dev/tcp/127.0.0.1/4222 || return 1
  read -r -t 2 line <&3 || { exec 3>&-; return 1; }
  exec 3>&-
  [[ $line == INFO* ]]
}
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

need_pkg() { # command, debian package
  command -v "$1" >/dev/null 2>&1 && return 0
  log "installing $2 (for $1)"
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

need_pkg systemd-analyze systemd
need_pkg mariadb mariadb-client
need_pkg redis-cli redis-tools
# promtool and amtool, for the monitoring tests (tests/monitoring.rs); only the packages,
# not their recommended exporters.
if ! command -v promtool >/dev/null 2>&1; then
  log "installing prometheus (for promtool)"
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if ! command -v amtool >/dev/null 2>&1; then
  log "installing prometheus-alertmanager (for amtool)"
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null
fi

# maildev: the SMTP server with an HTTP API the worker tests send mail to.
MAILDEV_PREFIX=${MAILDEV_PREFIX:-/opt/maildev}
if [ ! -x "$MAILDEV_PREFIX/node_modules/.bin/maildev" ]; then
  need_pkg npm npm
  log "installing maildev into $MAILDEV_PREFIX"
  npm install --prefix "$MAILDEV_PREFIX" maildev@2 --no-audit --no-fund --loglevel=error >/dev/null
fi
log "maildev is at $MAILDEV_PREFIX/node_modules/.bin/maildev"

# Chromium and playwright-core: the browser tests of the web pages (tests/browser.rs).
if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium (for the browser tests)"
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
PLAYWRIGHT_PREFIX=${PLAYWRIGHT_PREFIX:-/opt/playwright}
if [ ! -d "$PLAYWRIGHT_PREFIX/node_modules/playwright-core" ]; then
  need_pkg npm npm
  log "installing playwright-core into $PLAYWRIGHT_PREFIX (it drives Debian's chromium)"
  npm install --prefix "$PLAYWRIGHT_PREFIX" playwright-core@1 --no-audit --no-fund --loglevel=error >/dev/null
fi

if ! mariadb_up; then
  log "starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_for MariaDB 60 mariadb_up
else
  log "MariaDB is up"
fi

if ! nats_up; then
  log "starting NATS with JetStream"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_for NATS 30 nats_up
else
  log "NATS is up"
fi

if ! redis_up; then
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for Redis 30 redis_up
else
  log "Redis is up"
fi
