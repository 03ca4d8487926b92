#!/usr/bin/env bash
# Runs the test binaries that use a database against MySQL, as `cargo test` runs them against
# the shared MariaDB.
#
# Debian 12 packages no MySQL server; Debian unstable does (the 9.x line, which follows 8.4
# LTS). This script asks apt-get, by package name, for unstable's `mysql-server-core` and
# everything it depends on, from the Debian mirror this machine's apt already uses, and
# unpacks the packages under $PRIMED_MYSQL_ROOT without installing anything: the system is
# untouched. That mysqld runs with unstable's own C library (through its loader), on a free
# loopback port, with a data directory of its own, removed afterwards; the shared MariaDB is
# not involved. The tests find it through PRIMED_TEST_MYSQL_PORT (tests/support).
#
# The server comes from outside the project and moves with Debian unstable: when it cannot
# be fetched, unpacked or started, the script says so loudly and skips (exit 0), so that an
# archive in transition does not block every change; when the tests run, their result counts.
#
# Usage: scripts/mysql-compat.sh [cargo test arguments…]   (default: the database tests)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[mysql] %s\n' "$*"; }
# The outcome also goes to $PRIMED_CI_SUMMARY (when set), which .ci/run prints last, so that
# a skip is the last thing a reader of the CI log sees, not a line lost in the middle.
summary() { [ -z "${PRIMED_CI_SUMMARY:-}" ] || printf '%s\n' "$*" >>"$PRIMED_CI_SUMMARY"; }
skip() {
  log "SKIPPED, the MySQL tests did not run: $*"
  summary "MySQL tests: SKIPPED ($*)"
  exit 0
}

ROOT=${PRIMED_MYSQL_ROOT:-/opt/primed-mysql}
SYS=$ROOT/root
LIBS=$SYS/usr/lib/x86_64-linux-gnu
MYSQLD=(
  "$LIBS/ld-linux-x86-64.so.2" --library-path "$LIBS" "$SYS/usr/sbin/mysqld" --no-defaults
  --basedir="$SYS/usr" --lc-messages-dir="$SYS/usr/share/mysql"
  --character-sets-dir="$SYS/usr/share/mysql/charsets" --user=root
)

fetch() {
  local apt=$ROOT/apt uri
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/parts" "$ROOT/debs" "$SYS"
  # The mirror the machine's own apt sources name (deb822 or one-line format).
  uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(awk '$1 == "deb" && $2 !~ /^\[/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  fi
  [ -n "$uri" ] || skip "no Debian mirror found in /etc/apt"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri sid main" >"$apt/sources.list"
  : >"$apt/status"
  local opts=(
    -o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/parts"
    -o "Dir::State::Lists=$apt/lists" -o "Dir::State::Status=$apt/status"
    -o "Dir::Cache=$apt/cache" -o "APT::Architecture=amd64" -o "Debug::NoLocking=1"
  )
  log "fetching Debian unstable's MySQL server packages into $ROOT"
  apt-get "${opts[@]}" update -qq || skip "apt-get update for Debian unstable failed"
  # The server and the closure of what it depends on (names only; virtual ones in <>).
  local pkgs
  pkgs=$(apt-cache "${opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances mysql-server-core | grep -E '^[a-z0-9]' | sort -u) ||
    skip "Debian unstable has no mysql-server-core now"
  local out
  out=$(cd "$ROOT/debs" && apt-get "${opts[@]}" download -qq $pkgs 2>&1) ||
    skip "downloading the packages failed: $(printf '%s' "$out" | grep -v unsandboxed | tail -3)"
  for deb in "$ROOT"/debs/*.deb; do dpkg-deb -x "$deb" "$SYS" || skip "cannot unpack $deb"; done
  [ -x "$SYS/usr/sbin/mysqld" ] || skip "mysqld is not among the unpacked packages"
}

[ -x "$SYS/usr/sbin/mysqld" ] || fetch
if ! version=$("${MYSQLD[@]}" --version 2>&1); then
  # A cached install that does not run (an interrupted unpack, a half-updated archive) is
  # fetched again once, never skipped forever.
  log "the cached mysqld does not run ($version); fetching it again"
  rm -rf "$ROOT"
  fetch
  version=$("${MYSQLD[@]}" --version 2>&1) || skip "the unpacked mysqld does not run: $version"
fi
log "$version"

DATA=$(mktemp -d /tmp/primed-mysql.XXXXXX)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PID=
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$DATA"
}
trap cleanup EXIT

"${MYSQLD[@]}" --initialize-insecure --datadir="$DATA/db" >"$DATA/init.log" 2>&1 ||
  { cat "$DATA/init.log"; skip "mysqld could not initialize a data directory"; }
"${MYSQLD[@]}" --datadir="$DATA/db" --port="$PORT" --bind-address=127.0.0.1 \
  --socket="$DATA/mysqld.sock" --pid-file="$DATA/mysqld.pid" --mysqlx=OFF --secure-file-priv= \
  >"$DATA/mysqld.log" 2>&1 &
PID=$!
for _ in $(seq 300); do
  mariadb -h 127.0.0.1 -P "$PORT" -u root -e 'SELECT 1' >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { cat "$DATA/mysqld.log"; PID=; skip "mysqld stopped while starting"; }
  sleep 0.2
done
mariadb -h 127.0.0.1 -P "$PORT" -u root -e 'SELECT 1' >/dev/null 2>&1 ||
  { cat "$DATA/mysqld.log"; skip "mysqld did not answer within 60 s"; }
mariadb -h 127.0.0.1 -P "$PORT" -u root -N -e 'SELECT CONCAT("MySQL ", VERSION(), " on port '"$PORT"'")'

chaos=
if [ $# -eq 0 ]; then
  set -- --test api --test cli --test outbox --test workers --test health --test metrics --test traces
  chaos=yes
fi
status=0
PRIMED_TEST_MYSQL_PORT=$PORT cargo test --workspace --locked "$@" || status=$?
if [ -n "$chaos" ] && [ "$status" -eq 0 ]; then
  # The chaos harness's short profile on MySQL: it starts (and kills, and restarts) a MySQL
  # server of its own from the same unpacked packages.
  log "the chaos short profile on MySQL"
  PRIMED_CHAOS_MYSQLD="${MYSQLD[*]}" cargo test --workspace --locked --test chaos \
    the_short_profile || status=$?
fi
if [ "$status" -eq 0 ]; then summary "MySQL tests: passed ($version)"; else summary "MySQL tests: FAILED ($version)"; fi
exit "$status"
