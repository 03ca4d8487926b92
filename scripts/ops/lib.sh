# Shared by the operations scripts: where the daemon and its database are, read from the
# same settings the daemon reads (an environment file such as /etc/primed/primed.env can be
# sourced first). Not run on its own.

# The daemon's base URL: PRIMED_URL, else http://PRIMED_HTTP_ADDR (a wildcard address is
# asked on loopback).
primed_url() {
  if [ -n "${PRIMED_URL:-}" ]; then printf '%s' "${PRIMED_URL%/}"; return; fi
  local addr=${PRIMED_HTTP_ADDR:-127.0.0.1:8080}
  addr=${addr/0.0.0.0/127.0.0.1}
  printf 'http://%s' "$addr"
}

# The database settings: DATABASE_URL (mysql://user:pass@host:port/db) wins over MYSQL_*.
db_settings() {
  DB_HOST=${MYSQL_HOST:-127.0.0.1} DB_PORT=${MYSQL_PORT:-3306}
  DB_USER=${MYSQL_USER:-root} DB_PASS=${MYSQL_PASSWORD:-} DB_NAME=${MYSQL_DATABASE:-prime_check_db}
  if [ -n "${DATABASE_URL:-}" ]; then
    local re='^mysql://(([^:@/]*)(:([^@/]*))?@)?([^:/?]+)(:([0-9]+))?/([^?]+)'
    if [[ $DATABASE_URL =~ $re ]]; then
      DB_USER=${BASH_REMATCH[2]:-root} DB_PASS=${BASH_REMATCH[4]:-}
      DB_HOST=${BASH_REMATCH[5]} DB_PORT=${BASH_REMATCH[7]:-3306} DB_NAME=${BASH_REMATCH[8]}
    else
      echo "DATABASE_URL is not a mysql://user:pass@host:port/db URL" >&2
      return 64
    fi
  fi
}

# Runs SQL on the daemon's database; prints the rows tab-separated, without column names.
db_query() {
  db_settings || return
  MYSQL_PWD=$DB_PASS mariadb --batch --skip-column-names -h "$DB_HOST" -P "$DB_PORT" \
    -u "$DB_USER" "$DB_NAME" -e "$1"
}

# The mysqldump-compatible dump tool that is installed.
db_dump_tool() {
  if command -v mariadb-dump >/dev/null 2>&1; then echo mariadb-dump; else echo mysqldump; fi
}
