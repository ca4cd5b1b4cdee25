#!/usr/bin/env bash
# Private PostgreSQL server on 127.0.0.1 for tests and demos.
#
#   scripts/pg-local.sh start    # install (if needed), initdb, start, create role + database,
#                                # print the SQLAlchemy URL
#   scripts/pg-local.sh status   # server state; exit 0 iff it accepts connections as pomlia
#   scripts/pg-local.sh stop     # stop the server this script started (its own data dir only)
#
# Needs root (Debian 12). Runs Debian's PostgreSQL binaries as user postgres with its own
# data dir (initdb), so it never touches the package's cluster (/etc/postgresql/*/main) and
# does not use pg_ctlcluster. The data persist across stop/start.
#
# Environment (all optional):
#   POMLIA_PG_STATE     state dir: data, socket, log     [/var/lib/pomlia-pg]
#   POMLIA_PG_PORT      TCP port on 127.0.0.1            [5432]
#   POMLIA_PG_USER      role created for the project     [pomlia]
#   POMLIA_PG_PASSWORD  its password                     [pomlia]
#   POMLIA_PG_DB        database owned by that role      [pomlia_test]
#   POMLIA_PG_TIMEOUT   seconds to wait for the server   [60]
set -euo pipefail

STATE="${POMLIA_PG_STATE:-/var/lib/pomlia-pg}"
PORT="${POMLIA_PG_PORT:-5432}"
DB_USER="${POMLIA_PG_USER:-pomlia}"
DB_PASS="${POMLIA_PG_PASSWORD:-pomlia}"
DB_NAME="${POMLIA_PG_DB:-pomlia_test}"
TIMEOUT="${POMLIA_PG_TIMEOUT:-60}"

DATA="$STATE/data"
SOCK_DIR="$STATE/run"       # unix socket + lock file (keeps clear of /run/postgresql)
LOGS="$STATE/log"
LOG_FILE="$LOGS/postgres.log"
URL="postgresql+psycopg://$DB_USER:$DB_PASS@127.0.0.1:$PORT/$DB_NAME"

log() { printf '[pg-local] %s\n' "$*" >&2; }
die() { printf '[pg-local] ERROR: %s\n' "$*" >&2; exit 1; }

pg_bin_dir() {
    local d
    d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    [[ -n $d && -x $d/pg_ctl ]] || return 1
    echo "$d"
}

ensure_packages() {
    if pg_bin_dir >/dev/null && command -v psql >/dev/null; then
        return 0
    fi
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

as_pg() { runuser -u postgres -- "$@"; }

# pg_ctl status exits 0 when the server of our data dir runs.
server_running() {
    local bin
    bin=$(pg_bin_dir) || return 1
    [[ -f $DATA/PG_VERSION ]] || return 1
    as_pg "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

server_pid() { head -n 1 "$DATA/postmaster.pid" 2>/dev/null; }

# Port the running server listens on (line 4 of postmaster.pid).
server_port() { sed -n 4p "$DATA/postmaster.pid" 2>/dev/null; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

psql_admin() {
    as_pg "$(pg_bin_dir)/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK_DIR" -p "$PORT" -U postgres -d postgres "$@"
}

tail_log() {
    [[ -s $LOG_FILE ]] || return 0
    printf -- '----- tail of %s -----\n' "$LOG_FILE" >&2
    tail -n 25 "$LOG_FILE" >&2
}

sql_literal() { printf "'%s'" "${1//\'/\'\'}"; }

# CREATEROLE: the registry tests make a SELECT-only role for a read-only user and drop it again.
ensure_role_and_db() {
    local pass
    pass=$(sql_literal "$DB_PASS")
    psql_admin -v "u=$DB_USER" <<EOF
SELECT format('CREATE ROLE %I LOGIN', :'u')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'u') \gexec
ALTER ROLE :"u" WITH LOGIN CREATEROLE PASSWORD $pass;
EOF
    psql_admin -v "u=$DB_USER" -v "d=$DB_NAME" <<'EOF'
SELECT format('CREATE DATABASE %I OWNER %I', :'d', :'u')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'d') \gexec
EOF
}

cmd_start() {
    [[ $(id -u) == 0 ]] || die "must run as root"
    ensure_packages
    local bin
    bin=$(pg_bin_dir) || die "no /usr/lib/postgresql/*/bin/pg_ctl after installing postgresql"

    if server_running; then
        local running_port
        running_port=$(server_port)
        if [[ $running_port != "$PORT" ]]; then
            die "already running on port $running_port (wanted $PORT); run '$0 stop' first"
        fi
        log "already running (pid $(server_pid), port $PORT)"
    else
        install -d -o root -g root -m 755 "$STATE"
        install -d -o postgres -g postgres -m 755 "$SOCK_DIR" "$LOGS"
        if [[ ! -f $DATA/PG_VERSION ]]; then
            log "initdb $DATA"
            rm -rf "$DATA"
            install -d -o postgres -g postgres -m 700 "$DATA"
            as_pg "$bin/initdb" -D "$DATA" -U postgres --encoding=UTF8 --locale=C.UTF-8 \
                --auth-local=peer --auth-host=scram-sha-256 >"$LOGS/initdb.log" 2>&1 ||
                { cat "$LOGS/initdb.log" >&2; die "initdb failed"; }
        fi
        port_in_use "$PORT" &&
            die "port $PORT on 127.0.0.1 is taken by another server; set POMLIA_PG_PORT"
        # pg_ctl puts the postmaster in its own session, so it outlives this script.
        if ! as_pg "$bin/pg_ctl" -D "$DATA" -l "$LOG_FILE" -w -t "$TIMEOUT" \
            -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$SOCK_DIR" \
            start >/dev/null; then
            tail_log
            die "PostgreSQL did not start"
        fi
        log "started PostgreSQL $(basename "$(dirname "$bin")") (pid $(server_pid), port $PORT," \
            "data $DATA, log $LOG_FILE)"
    fi
    ensure_role_and_db
    echo "$URL"
}

cmd_stop() {
    if ! server_running; then
        log "not running"
        return 0
    fi
    local bin pid
    bin=$(pg_bin_dir)
    pid=$(server_pid)
    as_pg "$bin/pg_ctl" -D "$DATA" -m fast -w -t "$TIMEOUT" stop >/dev/null
    log "stopped PostgreSQL (pid $pid)"
}

cmd_status() {
    if ! server_running; then
        echo "postgres   stopped (data dir $DATA)"
        return 1
    fi
    local port
    port=$(server_port)
    echo "postgres   running (pid $(server_pid), port $port, data dir $DATA)"
    if PGPASSWORD=$DB_PASS "$(pg_bin_dir)/psql" -X -q -w -h 127.0.0.1 -p "$port" -U "$DB_USER" -d "$DB_NAME" \
        -tAc 'select 1' >/dev/null 2>&1; then
        echo "connect    ok as $DB_USER to $DB_NAME"
        echo "$URL"
        return 0
    fi
    echo "connect    FAILED as $DB_USER to $DB_NAME on 127.0.0.1:$port"
    return 1
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
