#!/usr/bin/env bash
# Single-node Slurm cluster on 127.0.0.1 for tests and demos.
#
#   scripts/slurm-local.sh start    # install (if needed) and start munge, MariaDB, slurmdbd,
#                                   # slurmctld, slurmd; wait until the node is idle
#   scripts/slurm-local.sh status   # state of each daemon + sinfo; exit 0 iff usable
#   scripts/slurm-local.sh stop     # cancel jobs, stop only the daemons this script started
#
# Needs root (Debian 12, Slurm 22.05). No systemd is used: daemons run in the foreground
# under setsid, their PIDs are kept in $POMLIA_SLURM_STATE/pids and `stop` kills only those.
#
# A "fresh" start (slurmctld not running) wipes the Slurm state and drops the accounting
# database, so job ids restart at 1 and `sacct` never shows jobs of an earlier cluster.
#
# Environment (all optional):
#   POMLIA_SLURM_STATE       state dir: logs, pids, MariaDB data, spool  [/var/lib/pomlia-slurm]
#   POMLIA_SLURM_CONF_DIR    where slurm.conf/slurmdbd.conf go (clients read /etc/slurm)
#                            [/etc/slurm]
#   POMLIA_SLURM_CLUSTER     cluster name                                 [pomlia]
#   POMLIA_SLURM_CPUS        CPUs the node advertises                     [8]
#   POMLIA_SLURM_MEMORY      RealMemory of the node in MB                 [16000]
#   POMLIA_SLURM_DB_PORT     TCP port of the private MariaDB (127.0.0.1)  [3307]
#   POMLIA_SLURM_TIMEOUT     seconds to wait for each daemon / idle node  [60]
#   POMLIA_SLURM_CRED_EXPIRE credential lifetime; a requeued job waits this long + 1 s  [5]
#   POMLIA_SLURM_KEEP_STATE  1: do not wipe state/accounting on a fresh start [0]
set -euo pipefail

# Absolute: the daemons start from / (launch), where a relative path would name another folder.
STATE=$(realpath -m -- "${POMLIA_SLURM_STATE:-/var/lib/pomlia-slurm}")
CONF_DIR=$(realpath -m -- "${POMLIA_SLURM_CONF_DIR:-/etc/slurm}")
CLUSTER="${POMLIA_SLURM_CLUSTER:-pomlia}"
CPUS="${POMLIA_SLURM_CPUS:-8}"
MEMORY="${POMLIA_SLURM_MEMORY:-16000}"
DB_PORT="${POMLIA_SLURM_DB_PORT:-3307}"
TIMEOUT="${POMLIA_SLURM_TIMEOUT:-60}"
CRED_EXPIRE="${POMLIA_SLURM_CRED_EXPIRE:-5}"
KEEP_STATE="${POMLIA_SLURM_KEEP_STATE:-0}"

SLURMCTLD_PORT=6817
SLURMD_PORT=6818
SLURMDBD_PORT=6819

PIDS="$STATE/pids"          # our pid files (one per daemon we started)
LOGS="$STATE/log"
RUN="$STATE/run"            # pid files the slurm daemons write themselves
MUNGE_DIR="$STATE/munge"    # private munged: socket, pid, seed, log
MUNGE_SOCKET="$MUNGE_DIR/munge.socket.2"
MUNGE_KEY=/etc/munge/munge.key
DB_DATA="$STATE/mysql"
DB_RUN="$STATE/mysqld"      # socket + pid of the private MariaDB, owned by mysql
DB_SOCKET="$DB_RUN/mysqld.sock"
DB_PASS_FILE="$STATE/dbpass"
CTLD_STATE="$STATE/slurmctld"
SLURMD_SPOOL="$STATE/slurmd"
SLURM_CONF="$CONF_DIR/slurm.conf"
SLURMDBD_CONF="$CONF_DIR/slurmdbd.conf"
MARKER="# Managed by pomlia-hpc scripts/slurm-local.sh"

DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order
PACKAGES=(munge mariadb-server slurmdbd slurm-wlm-mysql-plugin slurmctld slurmd slurm-client)

export SLURM_CONF

log() { printf '[slurm-local] %s\n' "$*" >&2; }
die() { printf '[slurm-local] ERROR: %s\n' "$*" >&2; exit 1; }

# --------------------------------------------------------------------------- pids

# Prints the pid of daemon $1 if we started it and it is still alive.
our_pid() {
    local name=$1 f="$PIDS/$1.pid" pid comm
    [[ -s $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm ]] || return 1
    comm=$(<"/proc/$pid/comm")
    [[ $comm == "$name" ]] || return 1
    # A zombie (exited, not yet reaped by PID 1) does not count as running.
    [[ $(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null) != Z ]] || return 1
    echo "$pid"
}

running() { our_pid "$1" >/dev/null; }

# Pids of processes named $1 that this script did not start.
foreign_pids() {
    local mine
    mine=$(our_pid "$1" || true)
    { pgrep -x "$1" 2>/dev/null || true; } | while read -r p; do
        [[ $p == "$mine" ]] && continue
        [[ $(awk '/^State:/ {print $2}' "/proc/$p/status" 2>/dev/null) == Z ]] && continue
        echo "$p"
    done
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

tail_log() {
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        printf -- '----- tail of %s -----\n' "$f" >&2
        tail -n 25 "$f" >&2
    done
}

# launch NAME CMD...: start CMD in the foreground of a new session, record its pid.
launch() {
    local name=$1; shift
    local out="$LOGS/$name.out"
    printf '\n===== %s start %s =====\n' "$name" "$(date -Is)" >>"$out"
    # From /, as a daemon runs: a daemon keeps the folder it was started in as its working
    # directory, and slurmd's job steps inherit slurmd's. Started from a checkout that was
    # later deleted (a CI clone), every job's output began with "slurmstepd: error: Unable to
    # get current working directory". The subshell execs, so $! is still the daemon's pid.
    (cd / && exec setsid "$@" >>"$out" 2>&1 </dev/null) &
    local pid=$! i
    echo "$pid" >"$PIDS/$name.pid"
    # setsid/setpriv exec the daemon in place, so $! becomes the daemon once exec is done.
    for ((i = 0; i < 20; i++)); do
        running "$name" && break
        sleep 0.1
    done
    if ! running "$name"; then
        tail_log "$out" "$LOGS/$name.log"
        die "$name exited right after start (see $out)"
    fi
    log "started $name (pid $pid)"
}

# wait_for NAME DESCRIPTION CMD...: poll CMD until it succeeds, the daemon dies or TIMEOUT.
wait_for() {
    local name=$1 what=$2; shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ! running "$name"; then
            tail_log "$LOGS/$name.out" "$LOGS/$name.log"
            die "$name died while waiting for $what"
        fi
        if ((SECONDS >= deadline)); then
            tail_log "$LOGS/$name.out" "$LOGS/$name.log"
            die "timed out after ${TIMEOUT}s waiting for $what"
        fi
        sleep 0.3
    done
}

stop_daemon() {
    local name=$1 pid i
    if ! pid=$(our_pid "$name"); then
        rm -f "$PIDS/$name.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do          # up to 30 s (MariaDB flushes InnoDB)
        running "$name" || break
        sleep 0.3
    done
    if running "$name"; then
        log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$PIDS/$name.pid"
    log "stopped $name (pid $pid)"
}

# --------------------------------------------------------------------------- install

ensure_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) == installed ]] ||
            missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --------------------------------------------------------------------------- config

db_pass() {
    if [[ ! -s $DB_PASS_FILE ]]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DB_PASS_FILE")
    fi
    cat "$DB_PASS_FILE"
}

render_slurm_conf() {
    local host
    host=$(hostname -s)
    cat <<EOF
$MARKER
# State and logs live under $STATE. Regenerated on every start.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
# cred_expire: a requeued job (submitit's checkpointing runs 'scontrol requeue') may start
# again only cred_expire+1 s later; the default is 120 s.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=$CRED_EXPIRE
CredType=cred/munge
StateSaveLocation=$CTLD_STATE
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1
KillWait=5
InactiveLimit=0
MinJobAge=300
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$SLURMDBD_PORT
# For slurmdbd connections this names the munge socket (AuthInfo is not used for them).
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$CPUS RealMemory=$MEMORY State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

render_slurmdbd_conf() {
    cat <<EOF
$MARKER
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$(hostname -s)
DbdAddr=127.0.0.1
DbdPort=$SLURMDBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(db_pass)
StorageLoc=slurm_acct_db
EOF
}

# install_conf PATH MODE: write stdin to PATH; keep a one-time backup of a foreign file.
install_conf() {
    local path=$1 mode=$2 tmp
    tmp=$(mktemp "$path.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -e $path ]] && ! grep -qxF "$MARKER" "$path" && [[ ! -e $path.pomlia-bak ]]; then
        cp -p "$path" "$path.pomlia-bak"
        log "backed up existing $path to $path.pomlia-bak"
    fi
    mv -f "$tmp" "$path"
}

write_configs() {
    mkdir -p "$CONF_DIR"
    render_slurm_conf | install_conf "$SLURM_CONF" 644
    render_slurmdbd_conf | install_conf "$SLURMDBD_CONF" 600
}

# 0 when the config on disk equals what we would write now.
configs_current() {
    [[ -f $SLURM_CONF && -f $SLURMDBD_CONF ]] &&
        cmp -s <(render_slurm_conf) "$SLURM_CONF" &&
        cmp -s <(render_slurmdbd_conf) "$SLURMDBD_CONF"
}

# --------------------------------------------------------------------------- daemons

mysql_root() { mariadb --no-defaults --socket="$DB_SOCKET" -uroot "$@"; }

munge_ok() { munge -S "$MUNGE_SOCKET" -n </dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null; }

start_munge() {
    running munged && return 0
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating $MUNGE_KEY"
        mkdir -p "$(dirname "$MUNGE_KEY")"
        mungekey --create --keyfile="$MUNGE_KEY"
    fi
    chown munge:munge "$(dirname "$MUNGE_KEY")" "$MUNGE_KEY"
    chmod 700 "$(dirname "$MUNGE_KEY")"
    chmod 600 "$MUNGE_KEY"
    install -d -o munge -g munge -m 755 "$MUNGE_DIR"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    launch munged setpriv --reuid=munge --regid=munge --init-groups \
        munged --foreground --force --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" \
        --pid-file="$MUNGE_DIR/munged.pid" --seed-file="$MUNGE_DIR/munged.seed" \
        --log-file="$MUNGE_DIR/munged.log"
    wait_for munged "munge to answer" munge_ok
}

start_mariadb() {
    if ! running mariadbd; then
        port_in_use "$DB_PORT" &&
            die "port $DB_PORT is taken by another program; set POMLIA_SLURM_DB_PORT"
        install -d -o mysql -g mysql -m 755 "$DB_RUN"
        if [[ ! -d $DB_DATA/mysql ]]; then
            log "initialising MariaDB data dir $DB_DATA"
            rm -rf "$DB_DATA"
            install -d -o mysql -g mysql -m 750 "$DB_DATA"
            mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DATA" \
                --auth-root-authentication-method=socket --skip-test-db \
                >>"$LOGS/mariadb-install.log" 2>&1 ||
                { tail_log "$LOGS/mariadb-install.log"; die "mariadb-install-db failed"; }
        fi
        chown -R mysql:mysql "$DB_DATA"
        # --no-defaults: ignore /etc/mysql, so a system MariaDB (port 3306) is left alone.
        # slurmdbd still logs "Database settings not recommended values:
        # innodb_buffer_pool_size"; harmless for a test cluster.
        launch mariadbd mariadbd --no-defaults --user=mysql --datadir="$DB_DATA" \
            --socket="$DB_SOCKET" --pid-file="$DB_RUN/mysqld.pid" \
            --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
            --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
            --max-allowed-packet=16M
    fi
    wait_for mariadbd "MariaDB to accept connections" \
        mariadb-admin --no-defaults --socket="$DB_SOCKET" -uroot ping
    local pass
    pass=$(db_pass)
    mysql_root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

drop_accounting_db() {
    mysql_root -e 'DROP DATABASE IF EXISTS slurm_acct_db'
}

cluster_registered() {
    sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qxF "$CLUSTER"
}

start_slurmdbd() {
    running slurmdbd && return 0
    port_in_use "$SLURMDBD_PORT" &&
        die "port $SLURMDBD_PORT (slurmdbd) is taken by a process this script did not start"
    launch slurmdbd slurmdbd -D
    wait_for slurmdbd "slurmdbd to answer" sacctmgr -n show cluster
    if ! cluster_registered; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
        log "registered cluster $CLUSTER in the accounting database"
    fi
}

ctld_up() { scontrol ping | grep -q 'is UP'; }

start_slurmctld() {
    running slurmctld && return 0
    port_in_use "$SLURMCTLD_PORT" &&
        die "port $SLURMCTLD_PORT (slurmctld) is taken by a process this script did not start"
    launch slurmctld slurmctld -D
    wait_for slurmctld "slurmctld to answer" ctld_up
}

node_state() { sinfo -h -N -o %T 2>/dev/null | head -n 1; }
node_idle() { [[ $(node_state) == idle ]]; }
node_usable() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

start_slurmd() {
    if ! running slurmd; then
        port_in_use "$SLURMD_PORT" &&
            die "port $SLURMD_PORT (slurmd) is taken by a process this script did not start"
        launch slurmd slurmd -D
    fi
}

wait_node_ready() {
    local deadline=$((SECONDS + TIMEOUT))
    until node_usable; do
        if ! running slurmd; then
            tail_log "$LOGS/slurmd.out" "$LOGS/slurmd.log"
            die "slurmd died before the node became idle"
        fi
        if ((SECONDS >= deadline)); then
            sinfo -N -l >&2 || true
            tail_log "$LOGS/slurmd.log" "$LOGS/slurmctld.log" "$LOGS/slurmdbd.log"
            die "node not idle after ${TIMEOUT}s (state: '$(node_state)')"
        fi
        sleep 0.3
    done
}

# --------------------------------------------------------------------------- commands

cmd_start() {
    [[ $(id -u) == 0 ]] || die "must run as root"
    local t0=$SECONDS all_up=1 d
    for d in "${DAEMONS[@]}"; do running "$d" || all_up=0; done
    if ((all_up)) && node_usable; then
        if configs_current; then
            log "already running; nothing to do"
        else
            log "already running, but the wanted config differs from $SLURM_CONF;" \
                "run '$0 stop' and '$0 start' to apply it"
        fi
        return 0
    fi

    ensure_packages
    for d in slurmctld slurmd slurmdbd; do
        local f
        f=$(foreign_pids "$d" | tr '\n' ' ')
        [[ -z $f ]] || die "$d is running but was not started by this script (pid $f); stop it first"
    done

    install -d -m 755 "$STATE" "$PIDS" "$LOGS" "$RUN"

    local fresh=0
    if ! running slurmctld; then
        fresh=1
        # slurmctld holds the job ids: without it, restart the whole Slurm side from scratch.
        stop_daemon slurmd
        stop_daemon slurmdbd
        if [[ $KEEP_STATE != 1 ]]; then
            rm -rf "$CTLD_STATE" "$SLURMD_SPOOL"
        fi
    fi
    install -d -m 755 "$CTLD_STATE" "$SLURMD_SPOOL"

    write_configs          # before slurmdbd (FACTS: slurmdbd reads slurm.conf too)
    start_munge
    start_mariadb
    if ((fresh)) && [[ $KEEP_STATE != 1 ]]; then
        drop_accounting_db
        log "fresh start: wiped Slurm state and the accounting database"
    fi
    start_slurmdbd
    start_slurmctld
    start_slurmd
    wait_node_ready
    log "node $(hostname -s) is $(node_state) after $((SECONDS - t0))s" \
        "(cluster $CLUSTER, ${CPUS} CPUs, ${MEMORY} MB, logs in $LOGS)"
}

cmd_stop() {
    if running slurmctld && running slurmd; then
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ' || true)
        if [[ -n ${jobs// /} ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            local i
            for ((i = 0; i < 60; i++)); do
                [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        stop_daemon "${DAEMONS[i]}"
    done
}

cmd_status() {
    local ok=0 d pid
    for d in "${DAEMONS[@]}"; do
        if pid=$(our_pid "$d"); then
            printf '%-10s running (pid %s)\n' "$d" "$pid"
        else
            printf '%-10s stopped\n' "$d"
            ok=1
        fi
    done
    if running slurmctld; then
        sinfo || ok=1
        node_usable || ok=1
    else
        echo "sinfo: slurmctld is not running"
    fi
    return "$ok"
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
