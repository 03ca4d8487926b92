#!/usr/bin/env bash
# The deployment script of seed 000 appendix B.1: back up the database, put the new version
# in place, restart, check its health, and roll back when it is not ready.
#
#   scripts/ops/deploy.sh VERSION [ENVIRONMENT]          (ENVIRONMENT: staging by default)
#
# Two targets (PRIMED_DEPLOY, default systemd where systemd runs, else compose):
# - systemd: installs the binary PRIMED_NEW_BINARY (default target/release/primed, built
#   first with `cargo build --release` when missing) as $PRIMED_BIN_DIR/primed (default
#   /usr/local/bin), keeping the one it replaces as primed.previous, and restarts the unit
#   (PRIMED_UNIT, default primed). When the daemon is not ready within PRIMED_READY_SECONDS
#   (60) the previous binary is put back and the unit restarted again; exit 1.
# - compose: builds the image with the VERSION build argument and recreates the primed
#   service (`docker compose up -d --no-deps --build primed`); when it is not ready the
#   previous image is not kept by compose, so the script stops with the logs to read.
# The backup is a mysqldump of the daemon's database (DATABASE_URL or MYSQL_*) into
# BACKUP_DIR (default ./backups), or a copy of the embedded SQLite file when no MySQL is
# configured. The settings come from the environment (source /etc/primed/primed.env first).
set -euo pipefail
here=$(dirname "$0")
# shellcheck source=lib.sh
. "$here/lib.sh"

VERSION=${1:-latest}
ENVIRONMENT=${2:-staging}
target=${PRIMED_DEPLOY:-}
if [ -z "$target" ]; then
  if [ -d /run/systemd/system ]; then target=systemd; else target=compose; fi
fi
systemctl=${SYSTEMCTL:-systemctl}
unit=${PRIMED_UNIT:-primed}
ready_seconds=${PRIMED_READY_SECONDS:-60}
backups=${BACKUP_DIR:-./backups}
stamp=$(date +%Y%m%d_%H%M%S)

echo "Deploying version $VERSION to $ENVIRONMENT ($target)"

# 1. Backup.
mkdir -p "$backups"
if [ -n "${DATABASE_URL:-}${MYSQL_HOST:-}" ]; then
  db_settings
  file="$backups/backup_${ENVIRONMENT}_${stamp}.sql"
  if [ "$target" = compose ]; then
    docker compose exec -T mysql sh -c 'exec mariadb-dump -uroot -p"$MARIADB_ROOT_PASSWORD" --single-transaction prime_check_db' > "$file"
  else
    MYSQL_PWD=$DB_PASS "$(db_dump_tool)" --single-transaction -h "$DB_HOST" -P "$DB_PORT" -u "$DB_USER" "$DB_NAME" > "$file"
  fi
  echo "1. backed up $DB_NAME to $file ($(wc -c < "$file") bytes)"
else
  data=${PRIMED_DATA_DIR:-./data}
  file="$backups/primed_${ENVIRONMENT}_${stamp}.db"
  sqlite3 "$data/primed.db" ".backup '$file'"
  echo "1. backed up the embedded store $data/primed.db to $file"
fi

wait_ready() {
  local deadline=$((SECONDS + ready_seconds))
  while [ $SECONDS -lt $deadline ]; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  return 1
}

if [ "$target" = compose ]; then
  # 2. Build; 3. replace the running container.
  docker compose build --build-arg "VERSION=$VERSION" primed
  echo "2. built the image"
  docker compose up -d --no-deps primed
  echo "3. recreated the primed service"
  # 4. Health.
  if ! wait_ready docker compose exec -T primed primed health; then
    echo "4. primed is not ready after ${ready_seconds}s; its log:" >&2
    docker compose logs --tail=50 primed >&2
    exit 1
  fi
  echo "4. primed is ready"
  docker compose ps
  echo "Deploy completed successfully"
  exit 0
fi

# systemd.
bin_dir=${PRIMED_BIN_DIR:-/usr/local/bin}
new=${PRIMED_NEW_BINARY:-target/release/primed}
if [ ! -x "$new" ]; then
  cargo build --release --locked --bin primed
fi
"$new" version >/dev/null
echo "2. new binary: $("$new" version)"
if [ -x "$bin_dir/primed" ]; then cp -p "$bin_dir/primed" "$bin_dir/primed.previous"; fi
install -m 0755 "$new" "$bin_dir/primed.new"
mv -f "$bin_dir/primed.new" "$bin_dir/primed"
"$systemctl" restart "$unit"
echo "3. installed it as $bin_dir/primed and restarted $unit"
if wait_ready "$bin_dir/primed" health; then
  echo "4. primed is ready: $("$bin_dir/primed" health 2>&1)"
  "$systemctl" status "$unit" --no-pager || true
  echo "Deploy completed successfully"
  exit 0
fi
echo "4. primed is not ready after ${ready_seconds}s: $("$bin_dir/primed" health 2>&1)" >&2
if [ -x "$bin_dir/primed.previous" ]; then
  mv -f "$bin_dir/primed.previous" "$bin_dir/primed"
  "$systemctl" restart "$unit"
  echo "5. rolled back to the previous binary and restarted $unit; the backup is $file" >&2
fi
exit 1
