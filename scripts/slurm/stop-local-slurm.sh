#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by start-local-slurm.sh: slurmd, slurmctld,
# slurmdbd, MariaDB and munged, in that order, each by the pid file it wrote. Configs, the
# accounting database and the logs stay, so the next start is quick and keeps job history.
#
#   scripts/slurm/stop-local-slurm.sh            # everything
#   KEEP_DB=1 scripts/slurm/stop-local-slurm.sh  # leave MariaDB and munged running
set -euo pipefail

RUNDIR=/run/slurm
say() { printf '[local-slurm] %s\n' "$*"; }

[[ $(id -u) -eq 0 ]] || { echo "[local-slurm] ERROR: run as root" >&2; exit 1; }

# stop NAME PIDFILE: TERM the process, wait up to 15 s, then KILL it.
stop() {
    local name=$1 pidfile=$2 pid
    [[ -s $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pidfile"
        return 0
    fi
    say "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.25
    done
    say "$name did not stop in 15 s; killing it"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

stop slurmd "$RUNDIR/slurmd.pid"
stop slurmctld "$RUNDIR/slurmctld.pid"
stop slurmdbd "$RUNDIR/slurmdbd.pid"
if [[ -z ${KEEP_DB:-} ]]; then
    if mariadb-admin --protocol=socket ping >/dev/null 2>&1; then
        # mysqld_safe exits by itself once mariadbd shuts down cleanly.
        say "stopping MariaDB"
        mariadb-admin --protocol=socket shutdown || say "MariaDB did not shut down cleanly"
    fi
    stop munged /run/munge/munged.pid
fi
say "stopped"
