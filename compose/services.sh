#!/usr/bin/env bash
# WardWatch local services, without Docker: Kafka (KRaft), PostgreSQL 15 and Triton,
# each a plain process on loopback, with all state under the project's var/.
#
#   bash compose/services.sh up     [kafka|postgres|triton ...]   start (idempotent), wait healthy
#   bash compose/services.sh down   [kafka|postgres|triton ...]   stop by PID
#   bash compose/services.sh status [kafka|postgres|triton ...]   exit 0 only if all are healthy
#   bash compose/services.sh logs   [-f] [kafka|postgres|triton ...]
#
# With no service named, the command applies to all three. The ports are a fixed
# contract with streams/settings.py and compose/docker-compose.yml:
#   Kafka 127.0.0.1:9092 (controller 9093), PostgreSQL 127.0.0.1:5433,
#   Triton HTTP 8000 / gRPC 8001 / metrics 8002.
#
# Layout: var/log/<svc>.log (every service logs here), var/run/<svc>.pid,
# var/kafka (jars, server.properties, data), var/postgres (data dir), var/triton.
# Environment: WARDWATCH_VAR_DIR moves var/; WARDWATCH_TRITON_MODEL_REPOSITORY serves
# another model repository; WARDWATCH_SERVICE_TIMEOUT overrides every start-up wait (s).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMPOSE_DIR="$ROOT/compose"
VAR_DIR="${WARDWATCH_VAR_DIR:-$ROOT/var}"
LOG_DIR="$VAR_DIR/log"
RUN_DIR="$VAR_DIR/run"
VENV="$ROOT/.venv"
VENV_PY="$VENV/bin/python"
ALL_SERVICES=(kafka postgres triton)

KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
KAFKA_DIR="$VAR_DIR/kafka"
KAFKA_LIB="$KAFKA_DIR/lib"
KAFKA_POM="$COMPOSE_DIR/kafka/pom.xml"

PG_PORT=5433
PG_DIR="$VAR_DIR/postgres"
PG_DATA="$PG_DIR/data"
PG_SOCKET_DIR="$PG_DIR/socket"
# PostgreSQL refuses to run as root; when we are root it runs as this account.
PG_OS_USER="wardwatch"
PG_APP_USER="wardwatch"
PG_APP_PASSWORD="wardwatch"
PG_APP_DB="wardwatch"

TRITON_HTTP_PORT=8000
TRITON_GRPC_PORT=8001
TRITON_METRICS_PORT=8002
TRITON_DIR="$VAR_DIR/triton"

# Start-up waits in seconds (a 2-core machine shared with other work is slow).
declare -A START_TIMEOUT=([kafka]=120 [postgres]=60 [triton]=240)
# Stop waits before SIGKILL. Kafka's controlled shutdown and Triton's model unload
# take a few seconds; PostgreSQL's fast shutdown is quick.
declare -A STOP_TIMEOUT=([kafka]=60 [postgres]=60 [triton]=60)

# ---------------------------------------------------------------- helpers

info() { printf '[services] %s\n' "$*"; }
warn() { printf '[services] warning: %s\n' "$*" >&2; }
die() {
    printf '[services] error: %s\n' "$*" >&2
    exit 1
}

log_file() { printf '%s/%s.log' "$LOG_DIR" "$1"; }
pid_file() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }

# Print the end of a service's log, so that a failure explains itself; first the
# error lines of the latest start (Triton's reason for a failed model load is
# followed by long tables that would push it out of a plain tail).
show_log_tail() {
    local log errors
    log="$(log_file "$1")"
    [[ -s "$log" ]] || return 0
    errors="$(awk '/^===== .* services.sh starting /{n=0; delete a} {a[++n]=$0}
        END{for(i=1;i<=n;i++) print a[i]}' "$log" |
        grep -E '^E[0-9]{4} |ERROR|FATAL|Exception|[Ee]rror:' | tail -n 15 || true)"
    if [[ -n "$errors" ]]; then
        printf -- '----- errors in %s -----\n%s\n' "$log" "$errors" >&2
    fi
    printf -- '----- last lines of %s -----\n' "$log" >&2
    tail -n "${2:-25}" "$log" | cut -c1-300 >&2
    printf -- '-----\n' >&2
}

# alive PID: the process exists and is not a zombie (a child of ours that died
# during start-up stays a zombie until reaped, and `kill -0` would still succeed).
alive() {
    local stat state
    [[ -r "/proc/$1/stat" ]] || return 1
    read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
    state="${stat##*) }"
    [[ "${state%% *}" != Z ]]
}

cmdline_of() { tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" || true; }

# A string that appears in the command line of our instance of a service and of no
# other process, so a stale PID file whose PID was reused is recognised as stale.
service_marker() {
    case "$1" in
    kafka) printf '%s' "$KAFKA_DIR/server.properties" ;;
    postgres) printf '%s' "-D $PG_DATA" ;;
    triton) printf '%s' "--backend-directory=$TRITON_DIR/backends" ;;
    esac
}

# running_pid SVC: print the PID of our running instance, or fail (and remove a
# stale PID file).
running_pid() {
    local svc=$1 pf pid
    pf="$(pid_file "$svc")"
    [[ -f "$pf" ]] || return 1
    pid="$(tr -dc '0-9' <"$pf")"
    if [[ -n "$pid" ]] && alive "$pid" && [[ "$(cmdline_of "$pid")" == *"$(service_marker "$svc")"* ]]; then
        printf '%s' "$pid"
        return 0
    fi
    rm -f "$pf"
    return 1
}

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# A port held by something else would make the service fail with a confusing bind
# error deep in its log; say so up front.
require_free_port() {
    local svc=$1 port=$2
    if port_open "$port"; then
        die "$svc: port $port on 127.0.0.1 is already in use by another process" \
            "(find it with: ss -ltnp 'sport = :$port'); stop it, then run up again"
    fi
}

# launch SVC CMD...: run CMD detached in its own session (so a Ctrl-C in the shell
# that ran `up` does not reach it), appending its output to var/log/SVC.log.
# The wrapper writes its own PID and then execs CMD, so the PID file holds the
# service's PID whether or not setsid had to fork.
launch() {
    local svc=$1 pf log
    shift
    pf="$(pid_file "$svc")"
    log="$(log_file "$svc")"
    rm -f "$pf"
    printf '\n===== %s: services.sh starting %s =====\n' "$(date -Is)" "$svc" >>"$log"
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pf" "$@" >>"$log" 2>&1 </dev/null &
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s "$pf" ]] && return 0
        sleep 0.1
    done
    die "$svc: the process did not start (no PID file after 5s); see $log"
}

# wait_healthy SVC CHECK...: poll CHECK until it succeeds, the process dies or the
# start-up timeout passes; the last two end `up` with the log tail.
wait_healthy() {
    local svc=$1 pid timeout deadline
    shift
    timeout="${WARDWATCH_SERVICE_TIMEOUT:-${START_TIMEOUT[$svc]}}"
    deadline=$((SECONDS + timeout))
    pid="$(tr -dc '0-9' <"$(pid_file "$svc")")"
    while true; do
        if "$@"; then
            return 0
        fi
        if ! alive "$pid"; then
            show_log_tail "$svc"
            rm -f "$(pid_file "$svc")"
            die "$svc exited during start-up; the log above ($(log_file "$svc")) says why"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail "$svc"
            die "$svc (pid $pid) is not healthy after ${timeout}s; see $(log_file "$svc")." \
                "It is left running: 'bash compose/services.sh down $svc' stops it" \
                "(set WARDWATCH_SERVICE_TIMEOUT to wait longer on a busy machine)"
        fi
        sleep 1
    done
}

# stop_service SVC SIGNAL: send SIGNAL, wait up to the stop timeout, then SIGKILL.
stop_service() {
    local svc=$1 sig=$2 pid deadline
    if ! pid="$(running_pid "$svc")"; then
        info "$svc: not running"
        return 0
    fi
    info "$svc: stopping pid $pid (SIG$sig)"
    kill -s "$sig" "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT[$svc]))
    while alive "$pid" && ((SECONDS < deadline)); do
        sleep 0.5
    done
    if alive "$pid"; then
        warn "$svc: pid $pid still running after ${STOP_TIMEOUT[$svc]}s; sending SIGKILL"
        kill -s KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while alive "$pid" && ((SECONDS < deadline)); do
            sleep 0.2
        done
    fi
    rm -f "$(pid_file "$svc")"
    info "$svc: stopped"
}

require_venv() {
    [[ -x "$VENV_PY" ]] || die "no virtualenv at $VENV: run '.tools/bin/uv sync' (or 'uv sync') first"
}

# ---------------------------------------------------------------- Kafka

find_java() {
    local java
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        java="$JAVA_HOME/bin/java"
    else
        java="$(command -v java || true)"
    fi
    [[ -n "$java" ]] || die "kafka: Java not found: install a JDK 17+ (apt-get install openjdk-17-jdk-headless) or set JAVA_HOME"
    local version major
    version="$("$java" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)"
    major="${version%%.*}"
    [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] ||
        die "kafka: Kafka 4 needs Java 17+, but $java is version '${version:-unknown}': install a JDK 17+ or set JAVA_HOME"
    printf '%s' "$java"
}

# The broker jars come from Maven Central through compose/kafka/pom.xml; ~/.m2 caches
# them, and a stamp holding the pom's hash makes this a no-op until the pom changes.
ensure_kafka_jars() {
    local stamp="$KAFKA_LIB/.pom.sha256" want mvn_log
    want="$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    command -v mvn >/dev/null ||
        die "kafka: Maven not found: install Maven 3.8+ (apt-get install maven); it downloads the Kafka jars listed in $KAFKA_POM"
    info "kafka: resolving the Kafka jars with Maven (first run downloads ~40 MB into ~/.m2)"
    mvn_log="$LOG_DIR/kafka-maven.log"
    rm -rf "$KAFKA_LIB"
    mkdir -p "$KAFKA_LIB"
    if ! mvn -B -q -f "$KAFKA_POM" dependency:copy-dependencies \
        -DoutputDirectory="$KAFKA_LIB" >"$mvn_log" 2>&1; then
        tail -n 30 "$mvn_log" >&2
        die "kafka: Maven could not resolve the Kafka jars (full log: $mvn_log); check that Maven Central is reachable"
    fi
    printf '%s\n' "$want" >"$stamp"
}

write_kafka_config() {
    # Regenerated at every start so that it always follows this script.
    cat >"$KAFKA_DIR/server.properties" <<EOF
# Generated by compose/services.sh: edit the script, not this file.
# Single-node KRaft: this process is both the broker and the only controller.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data

# One broker: every internal topic must have replication factor 1, or the consumer
# offsets and transaction coordinators never become available.
num.partitions=8
default.replication.factor=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
auto.create.topics.enable=true
# Up to 10 MiB per message: the gateway accepts FHIR bodies up to 5 MB
# (WARDWATCH_GATEWAY_MAX_BODY_BYTES) and dead-letters refused ones whole.
message.max.bytes=10485760
# No point delaying the first rebalance when there is one worker on a laptop.
group.initial.rebalance.delay.ms=0

# Small thread pools: this runs on 2 shared cores.
num.network.threads=2
num.io.threads=4
background.threads=4
log.retention.hours=168
log.segment.bytes=134217728
EOF
}

start_kafka() {
    local pid java cluster_id
    if pid="$(running_pid kafka)"; then
        info "kafka: already running (pid $pid)"
        return 0
    fi
    require_venv
    java="$(find_java)"
    require_free_port kafka "$KAFKA_PORT"
    require_free_port kafka "$KAFKA_CONTROLLER_PORT"
    mkdir -p "$KAFKA_DIR/data"
    ensure_kafka_jars
    write_kafka_config
    if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
        if [[ ! -s "$KAFKA_DIR/cluster.id" ]]; then
            # A KRaft cluster id is a base64url UUID without padding (22 characters).
            "$VENV_PY" -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))' \
                >"$KAFKA_DIR/cluster.id"
        fi
        cluster_id="$(cat "$KAFKA_DIR/cluster.id")"
        info "kafka: formatting storage (cluster id $cluster_id)"
        if ! "$java" -Xmx256m -cp "$KAFKA_LIB/*" \
            -Dlog4j2.configurationFile="$COMPOSE_DIR/kafka/log4j2.properties" \
            kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" \
            --standalone --ignore-formatted >>"$(log_file kafka)" 2>&1; then
            show_log_tail kafka
            die "kafka: formatting $KAFKA_DIR/data failed; remove var/kafka/data to start afresh"
        fi
    fi
    info "kafka: starting on 127.0.0.1:$KAFKA_PORT"
    # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS is a list of JVM flags
    launch kafka "$java" ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
        -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$COMPOSE_DIR/kafka/log4j2.properties" \
        -cp "$KAFKA_LIB/*" kafka.Kafka "$KAFKA_DIR/server.properties"
}

kafka_healthy() { port_open "$KAFKA_PORT"; }

wait_kafka() {
    wait_healthy kafka kafka_healthy
    # The port opens before the broker has joined its own controller; topics.py waits
    # for a real metadata answer, then creates the project topics if they are missing.
    if ! "$VENV_PY" "$COMPOSE_DIR/kafka/topics.py" --bootstrap "127.0.0.1:$KAFKA_PORT" \
        --timeout "${WARDWATCH_SERVICE_TIMEOUT:-${START_TIMEOUT[kafka]}}"; then
        show_log_tail kafka
        die "kafka: the broker did not become usable (see $(log_file kafka))"
    fi
    info "kafka: ready on 127.0.0.1:$KAFKA_PORT (pid $(running_pid kafka))"
}

stop_kafka() { stop_service kafka TERM; }

# ---------------------------------------------------------------- PostgreSQL

find_pg_bindir() {
    local d
    for d in "${WARDWATCH_PG_BINDIR:-}" \
        "$(dirname "$(readlink -f "$(command -v pg_ctl || echo /nonexistent)")")" \
        /usr/lib/postgresql/15/bin; do
        if [[ -n "$d" && -x "$d/initdb" && -x "$d/postgres" && -x "$d/pg_isready" ]]; then
            printf '%s' "$d"
            return 0
        fi
    done
    die "postgres: PostgreSQL 15 server binaries (initdb, postgres) not found:" \
        "install them (apt-get install postgresql-15) or set WARDWATCH_PG_BINDIR"
}

# as_pg_user CMD...: run CMD as the unprivileged account when we are root.
as_pg_user() {
    if [[ $EUID -eq 0 ]]; then
        # setpriv execs without forking (unlike runuser/su), so launch() records the
        # postmaster's own PID.
        setpriv --reuid="$PG_OS_USER" --regid="$PG_OS_USER" --init-groups "$@"
    else
        "$@"
    fi
}

ensure_pg_os_user() {
    [[ $EUID -eq 0 ]] || return 0
    if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
        info "postgres: creating system user '$PG_OS_USER' to run PostgreSQL (it refuses to run as root)"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$PG_OS_USER" ||
            die "postgres: could not create user '$PG_OS_USER'; create it yourself (useradd --system $PG_OS_USER)"
    fi
    chown -R "$PG_OS_USER:$PG_OS_USER" "$PG_DIR"
    if ! as_pg_user test -w "$PG_DIR"; then
        die "postgres: user '$PG_OS_USER' cannot reach $PG_DIR: a parent directory is not" \
            "searchable by others (chmod o+x it), or set WARDWATCH_VAR_DIR to a directory it can reach"
    fi
}

write_pg_config() {
    cat >"$PG_DATA/wardwatch.conf" <<EOF
# Generated by compose/services.sh at every start: edit the script, not this file.
listen_addresses = '127.0.0.1'
port = $PG_PORT
# The socket is only for the bootstrap below (superuser 'postgres', trust); the app
# connects over TCP with a password, as it does in production.
unix_socket_directories = '$PG_SOCKET_DIR'
unix_socket_permissions = 0700
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = 1000
max_connections = 100
EOF
}

start_postgres() {
    local pid bindir
    if pid="$(running_pid postgres)"; then
        info "postgres: already running (pid $pid)"
        return 0
    fi
    bindir="$(find_pg_bindir)"
    # Our server may be running with its var/run PID file lost: adopt it, never kill it.
    if [[ -f "$PG_DATA/postmaster.pid" ]]; then
        pid="$(head -n 1 "$PG_DATA/postmaster.pid" | tr -dc '0-9')"
        if [[ -n "$pid" ]] && alive "$pid" && [[ "$(cmdline_of "$pid")" == *"$(service_marker postgres)"* ]]; then
            mkdir -p "$RUN_DIR"
            printf '%s\n' "$pid" >"$(pid_file postgres)"
            info "postgres: already running (pid $pid, adopted from postmaster.pid)"
            return 0
        fi
    fi
    require_free_port postgres "$PG_PORT"
    # The socket path must fit in sun_path (107 bytes).
    ((${#PG_SOCKET_DIR} < 90)) ||
        die "postgres: $PG_SOCKET_DIR is too long for a Unix socket path; set WARDWATCH_VAR_DIR to a shorter directory"
    mkdir -p "$PG_DIR" "$PG_SOCKET_DIR"
    ensure_pg_os_user
    chmod 0700 "$PG_SOCKET_DIR"
    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
        info "postgres: initialising $PG_DATA"
        rm -rf "$PG_DATA"
        if ! (cd "$PG_DIR" && as_pg_user "$bindir/initdb" -D "$PG_DATA" -U postgres \
            --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --no-locale) \
            >>"$(log_file postgres)" 2>&1; then
            show_log_tail postgres
            die "postgres: initdb failed (see $(log_file postgres))"
        fi
        printf "\ninclude_if_exists = 'wardwatch.conf'\n" >>"$PG_DATA/postgresql.conf"
    fi
    write_pg_config
    [[ $EUID -ne 0 ]] || chown "$PG_OS_USER:$PG_OS_USER" "$PG_DATA/wardwatch.conf"
    clear_stale_postmaster
    info "postgres: starting on 127.0.0.1:$PG_PORT"
    local cmd=("$bindir/postgres" -D "$PG_DATA")
    if [[ $EUID -eq 0 ]]; then
        # launch() execs its command, so it cannot be the as_pg_user shell function.
        cmd=(setpriv --reuid="$PG_OS_USER" --regid="$PG_OS_USER" --init-groups "${cmd[@]}")
    fi
    (cd "$PG_DIR" && launch postgres "${cmd[@]}")
}

# Processes whose working directory is our data directory: a postmaster and its
# children (PostgreSQL chdirs there), including orphans of a killed postmaster.
pg_dir_pids() {
    local d
    for d in /proc/[0-9]*; do
        [[ "$(readlink "$d/cwd" 2>/dev/null)" == "$PG_DATA" ]] && printf '%s\n' "${d#/proc/}"
    done
    return 0
}

# After a SIGKILL/OOM kill, the old server's children can outlive it for a moment and
# keep its shared memory attached, and its PID can linger as an unreaped zombie, which
# PostgreSQL reads as "another postmaster is running". Wait for them, then clear up.
clear_stale_postmaster() {
    local pidfile="$PG_DATA/postmaster.pid" old deadline pids
    [[ -f "$pidfile" ]] || return 0
    old="$(head -n 1 "$pidfile" | tr -dc '0-9')"
    deadline=$((SECONDS + 15))
    while pids="$(pg_dir_pids)" && [[ -n "$pids" ]] && ((SECONDS < deadline)); do
        sleep 0.5
    done
    if [[ -n "$pids" ]]; then
        warn "postgres: killing leftover server processes of a previous run: $(echo $pids)"
        # shellcheck disable=SC2086  # one PID per word
        kill -s KILL $pids 2>/dev/null || true
        sleep 1
    fi
    if [[ -n "$old" && -e "/proc/$old" ]] && ! alive "$old"; then
        rm -f "$pidfile"
    fi
}

pg_psql() {
    # Superuser session over the Unix socket, as the unprivileged OS user.
    (cd "$PG_DIR" && as_pg_user "$(find_pg_bindir)/psql" -X -q -v ON_ERROR_STOP=1 \
        -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres -d postgres "$@")
}

postgres_healthy() { "$(find_pg_bindir)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2; }

wait_postgres() {
    wait_healthy postgres postgres_healthy
    # Idempotent bootstrap of the app's role and database (cheap; runs at every up).
    if ! pg_psql >>"$(log_file postgres)" 2>&1 <<EOF; then
SELECT 'CREATE ROLE $PG_APP_USER LOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_APP_USER')\gexec
-- CREATEDB: the end-to-end tests give each run a database of its own; CREATEROLE: the
-- production-start test gives its run a role with a random password (local only).
ALTER ROLE $PG_APP_USER WITH LOGIN CREATEDB CREATEROLE PASSWORD '$PG_APP_PASSWORD';
SELECT 'CREATE DATABASE $PG_APP_DB OWNER $PG_APP_USER'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_APP_DB')\gexec
EOF
        show_log_tail postgres
        die "postgres: creating role/database '$PG_APP_DB' failed (see $(log_file postgres))"
    fi
    info "postgres: ready on 127.0.0.1:$PG_PORT" \
        "(postgresql+psycopg://$PG_APP_USER:$PG_APP_PASSWORD@127.0.0.1:$PG_PORT/$PG_APP_DB, pid $(running_pid postgres))"
}

# Fast shutdown (SIGINT) rolls back open transactions and disconnects clients;
# SIGTERM would be PostgreSQL's "smart" shutdown, which waits for every client
# (a running worker's pool) to leave and would end in a SIGKILL and crash recovery.
stop_postgres() { stop_service postgres INT; }

# ---------------------------------------------------------------- Triton

# Paths derived from the venv's own Python rather than hard-coded, so that a
# different pyenv/uv Python or a moved venv keeps working.
triton_paths() {
    require_venv
    "$VENV_PY" - <<'EOF'
import sys
import sysconfig
from pathlib import Path

purelib = Path(sysconfig.get_paths()["purelib"])
print(sysconfig.get_config_var("LIBDIR") or "")
print(purelib / "pytriton" / "tritonserver")
print(purelib / "nvidia_pytriton.libs")
print(f"{sys.version_info.major}.{sys.version_info.minor}")
EOF
}

# Triton's Python backend runs each model in a stub process and talks to it through
# /dev/shm segments; a unique prefix per checkout lets `down` clean up exactly ours.
triton_shm_prefix() {
    printf 'triton_python_backend_shm_ww%s_' "$(printf '%s' "$TRITON_DIR" | sha256sum | cut -c1-8)"
}

triton_model_repository() {
    if [[ -n "${WARDWATCH_TRITON_MODEL_REPOSITORY:-}" ]]; then
        printf '%s' "$WARDWATCH_TRITON_MODEL_REPOSITORY"
    elif [[ -d "$ROOT/inference/model_repository" ]]; then
        printf '%s' "$ROOT/inference/model_repository"
    else
        # No model built yet: serve an empty repository so the server still comes up.
        mkdir -p "$TRITON_DIR/empty_model_repository"
        printf '%s' "$TRITON_DIR/empty_model_repository"
    fi
}

# Kill stub processes left by a tritonserver that died without cleaning up (SIGKILL,
# OOM) and remove their shared memory. The stubs carry our shm prefix in their
# command line, so nothing else is touched.
cleanup_triton_leftovers() {
    local prefix pid pids=()
    prefix="$(triton_shm_prefix)"
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        if [[ "$(cmdline_of "$pid")" == *triton_python_backend_stub*"$prefix"* ]]; then
            pids+=("$pid")
        fi
    done
    if ((${#pids[@]})); then
        warn "triton: stopping ${#pids[@]} leftover Python-backend stub(s): ${pids[*]}"
        kill -s TERM "${pids[@]}" 2>/dev/null || true
        sleep 2
        for pid in "${pids[@]}"; do
            ! alive "$pid" || kill -s KILL "$pid" 2>/dev/null || true
        done
    fi
    rm -f /dev/shm/"$prefix"* 2>/dev/null || true
}

prepare_triton_backends() {
    local dist=$1 pyver=$2 dst="$TRITON_DIR/backends/python"
    local stub="$dist/python_backend_stubs/$pyver/triton_python_backend_stub"
    [[ -x "$dist/bin/tritonserver" ]] ||
        die "triton: $dist/bin/tritonserver not found: the venv lacks nvidia-pytriton; run '.tools/bin/uv sync'"
    [[ -x "$stub" ]] || die "triton: no Python-backend stub for Python $pyver in $dist/python_backend_stubs"
    # pytriton ships the Python backend without the stub matching our Python; assemble
    # a backend directory under var/ rather than writing into the venv.
    mkdir -p "$dst"
    cp -pu "$dist/backends/python/libtriton_python.so" "$dist/backends/python/triton_python_backend_utils.py" "$dst/"
    cp -pu "$stub" "$dst/triton_python_backend_stub"
}

start_triton() {
    local pid paths pylib dist libs pyver repo
    if pid="$(running_pid triton)"; then
        info "triton: already running (pid $pid)"
        return 0
    fi
    require_venv
    command -v curl >/dev/null || die "triton: curl not found (used for health checks): apt-get install curl"
    local port
    for port in "$TRITON_HTTP_PORT" "$TRITON_GRPC_PORT" "$TRITON_METRICS_PORT"; do
        require_free_port triton "$port"
    done
    mapfile -t paths < <(triton_paths)
    ((${#paths[@]} == 4)) || die "triton: could not read the venv's paths with $VENV_PY"
    pylib="${paths[0]}" dist="${paths[1]}" libs="${paths[2]}" pyver="${paths[3]}"
    mkdir -p "$TRITON_DIR"
    prepare_triton_backends "$dist" "$pyver"
    cleanup_triton_leftovers
    repo="$(triton_model_repository)"
    [[ -d "$repo" ]] || die "triton: model repository $repo does not exist"
    info "triton: starting on 127.0.0.1:$TRITON_HTTP_PORT (HTTP) / $TRITON_GRPC_PORT (gRPC), repository $repo"
    # LD_LIBRARY_PATH: the venv Python's libpython must win over any system
    # libpython3.x that the stub would otherwise load, then pytriton's bundled libs
    # (our copy of libtriton_python.so cannot find them through its $ORIGIN rpath).
    # PATH: the stub finds its Python environment (the venv, with numpy, torch and
    # the project) through the first python3 on PATH.
    (cd "$TRITON_DIR" && launch triton env \
        LD_LIBRARY_PATH="$pylib:$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        PATH="$VENV/bin:$PATH" \
        VIRTUAL_ENV="$VENV" \
        "$dist/bin/tritonserver" \
        --model-repository="$repo" \
        --backend-directory="$TRITON_DIR/backends" \
        --backend-config="python,shm-region-prefix-name=$(triton_shm_prefix)" \
        --model-control-mode=explicit --load-model='*' \
        --strict-readiness=true --exit-on-error=true \
        --http-address=127.0.0.1 --http-port="$TRITON_HTTP_PORT" \
        --grpc-address=127.0.0.1 --grpc-port="$TRITON_GRPC_PORT" \
        --metrics-address=127.0.0.1 --metrics-port="$TRITON_METRICS_PORT" \
        --log-verbose=0)
}

triton_healthy() {
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$TRITON_HTTP_PORT/v2/health/ready" 2>/dev/null
}

wait_triton() {
    wait_healthy triton triton_healthy
    # Ready means every *loaded* model is ready; also fail if a model that is in the
    # repository did not load, and name it.
    local index not_ready
    index="$(curl -fsS --max-time 10 -X POST "http://127.0.0.1:$TRITON_HTTP_PORT/v2/repository/index")" ||
        die "triton: the repository index request failed"
    not_ready="$("$VENV_PY" - "$index" <<'EOF'
import json
import sys

index = json.loads(sys.argv[1])
bad = [m for m in index if m.get("state") != "READY"]
print("; ".join(f"{m.get('name')} ({m.get('state', 'UNKNOWN')}: {m.get('reason', '')})" for m in bad))
EOF
)"
    if [[ -n "$not_ready" ]]; then
        show_log_tail triton
        die "triton: models not READY: $not_ready"
    fi
    local models
    models="$("$VENV_PY" -c 'import json, sys; print(", ".join(m["name"] for m in json.loads(sys.argv[1])) or "none")' "$index")"
    info "triton: ready on 127.0.0.1:$TRITON_HTTP_PORT/$TRITON_GRPC_PORT (models: $models; pid $(running_pid triton))"
}

stop_triton() {
    stop_service triton TERM
    cleanup_triton_leftovers
}

# ---------------------------------------------------------------- commands

# parse_services [SVC...]: set SVCS to the named services (all when none). Not run in
# a subshell, so that an unknown name ends the script.
SVCS=()
parse_services() {
    local s
    SVCS=()
    if (($# == 0)); then
        SVCS=("${ALL_SERVICES[@]}")
        return 0
    fi
    for s in "$@"; do
        case "$s" in
        kafka | postgres | triton) SVCS+=("$s") ;;
        *) die "unknown service '$s' (expected: ${ALL_SERVICES[*]})" ;;
        esac
    done
}

cmd_up() {
    local svcs s t0=$SECONDS
    parse_services "$@"
    svcs=("${SVCS[@]}")
    mkdir -p "$LOG_DIR" "$RUN_DIR"
    # Start everything first, then wait: the start-ups overlap.
    for s in "${svcs[@]}"; do "start_$s"; done
    for s in "${svcs[@]}"; do "wait_$s"; done
    info "up: ${svcs[*]} healthy after $((SECONDS - t0))s; logs in $LOG_DIR"
}

cmd_down() {
    local svcs i
    parse_services "$@"
    svcs=("${SVCS[@]}")
    # Reverse order: the model server and the broker before the database.
    for ((i = ${#svcs[@]} - 1; i >= 0; i--)); do "stop_${svcs[$i]}"; done
}

cmd_status() {
    local svcs s pid health rc=0
    parse_services "$@"
    svcs=("${SVCS[@]}")
    for s in "${svcs[@]}"; do
        if pid="$(running_pid "$s")"; then
            if "${s}_healthy"; then health=healthy; else
                health=unhealthy
                rc=3
            fi
            printf '%-9s running  pid %-8s %s\n' "$s" "$pid" "$health"
        else
            printf '%-9s stopped\n' "$s"
            rc=3
        fi
    done
    return "$rc"
}

cmd_logs() {
    local follow=() svcs s files=()
    if [[ "${1:-}" == "-f" ]]; then
        follow=(-F)
        shift
    fi
    parse_services "$@"
    svcs=("${SVCS[@]}")
    for s in "${svcs[@]}"; do files+=("$(log_file "$s")"); done
    if ((${#follow[@]})); then
        exec tail -n 20 -F "${files[@]}"
    fi
    for s in "${files[@]}"; do
        if [[ -f "$s" ]]; then
            printf '==> %s <==\n' "$s"
            tail -n "${LINES:-50}" "$s"
        else
            printf '==> %s: no log yet <==\n' "$s"
        fi
    done
}

usage() {
    sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
    local cmd="${1:-}"
    (($# == 0)) || shift
    case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    logs) cmd_logs "$@" ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
