#!/usr/bin/env bash
# Start a real, single-node SLURM cluster on localhost (for mmreg's `--worker slurm` tests).
#
#   sudo scripts/slurm/start-local-slurm.sh       # install (first time), configure, start
#   scripts/slurm/stop-local-slurm.sh             # stop every daemon this script started
#
# Debian/Ubuntu, as root, without systemd (containers): the daemons are started directly.
# Idempotent: running it again when everything is up only checks that the cluster answers;
# when a generated config file changed, the SLURM daemons are restarted to pick it up.
#
# What it sets up, and why:
#   munge      the authentication every SLURM daemon and client uses (key from the package).
#   MariaDB    the database behind slurmdbd: database `slurm_acct_db`, user `slurm`@localhost.
#   slurmdbd   the accounting daemon. Pydra's slurm worker asks `sacct` for each job's exit
#              state once `squeue` no longer lists it, so accounting must be on.
#   slurmctld  the controller; slurmd  the compute daemon, one node named `hostname -s`
#              (NodeAddr 127.0.0.1, so the host name need not resolve), CPUs = nproc,
#              RealMemory = `free -m` total minus a margin; one default partition `local`.
#   ProctrackType=proctrack/linuxproc, TaskPlugin=task/none: no cgroups needed (containers).
#   SelectType=select/cons_tres with CR_CPU_Memory and DefMemPerCPU = RealMemory / CPUs, so
#   several 1-CPU jobs run side by side (without a default, each job would take the whole
#   node's memory and jobs would run one at a time).
#   ReturnToService=2: the node comes back by itself after a restart of slurmd.
#
# Environment overrides:
#   SLURM_PARTITION (local)  SLURM_CLUSTER (localcluster)  SLURM_MEM_MARGIN_MB (1024)
#   SLURM_DB_PASS (slurmdbpass: the DB listens on localhost only)  SKIP_INSTALL=1
#   START_TIMEOUT (60: seconds to wait for each daemon)
#
# Logs: /var/log/slurm/{slurmdbd,slurmctld,slurmd}.log, /var/log/munge/munged.log,
#       /var/log/mysql/local-slurm.err. Configs: /etc/slurm/{slurm,slurmdbd}.conf.
set -euo pipefail

PARTITION=${SLURM_PARTITION:-local}
CLUSTER=${SLURM_CLUSTER:-localcluster}
MEM_MARGIN_MB=${SLURM_MEM_MARGIN_MB:-1024}
DB_PASS=${SLURM_DB_PASS:-slurmdbpass}
TIMEOUT=${START_TIMEOUT:-60}
ETC=/etc/slurm
LOGDIR=/var/log/slurm
RUNDIR=/run/slurm
SQL_ERR=/var/log/mysql/local-slurm.err

say() { printf '[local-slurm] %s\n' "$*"; }
die() {
    printf '[local-slurm] ERROR: %s\n' "$1" >&2
    if [[ -n ${2:-} && -f $2 ]]; then
        printf '[local-slurm] last lines of %s:\n' "$2" >&2
        tail -n 15 "$2" | sed 's/^/    /' >&2
    fi
    exit 1
}

# wait_for SECONDS DESCRIPTION LOGFILE CMD...: retry CMD until it succeeds.
wait_for() {
    local secs=$1 what=$2 log=$3
    shift 3
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || die "$what did not come up within ${secs}s" "$log"
        sleep 0.5
    done
}

# alive PIDFILE: the process named in PIDFILE is running.
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts system daemons)"

# --- 1. packages -------------------------------------------------------------------------------
need=()
for cmd in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct; do
    command -v "$cmd" >/dev/null || need+=("$cmd")
done
if ((${#need[@]})); then
    [[ -z ${SKIP_INSTALL:-} ]] || die "missing ${need[*]} and SKIP_INSTALL is set"
    command -v apt-get >/dev/null || die "missing ${need[*]}; no apt-get to install them"
    say "installing packages (missing: ${need[*]}); this takes a few minutes the first time"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends \
        munge mariadb-server slurm-wlm slurmctld slurmd slurmdbd slurm-client >/dev/null \
        || die "apt-get install failed"
fi
id slurm >/dev/null 2>&1 || die "user 'slurm' missing (the slurm packages create it)"

# --- 2. configuration --------------------------------------------------------------------------
NODE=$(hostname -s)
CPUS=$(nproc)
TOTAL_MB=$(free -m | awk '/^Mem:/ {print $2}')
MEM_MB=$((TOTAL_MB - MEM_MARGIN_MB))
((MEM_MB >= 256)) || MEM_MB=$((TOTAL_MB * 3 / 4))
DEF_MEM=$((MEM_MB / CPUS))

mkdir -p "$ETC" "$LOGDIR" "$RUNDIR" /var/spool/slurmctld /var/spool/slurmd /run/munge \
    /var/log/munge /var/lib/munge /run/mysqld /var/log/mysql
chown slurm:slurm "$LOGDIR" "$RUNDIR" /var/spool/slurmctld
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chown mysql:mysql /run/mysqld /var/log/mysql
chmod 0755 /run/munge

changed=0
# install_if_changed DEST MODE OWNER: replace DEST by stdin when its contents differ.
install_if_changed() {
    local dest=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if ! cmp -s "$tmp" "$dest"; then
        install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$tmp" "$dest"
        changed=1
        say "wrote $dest"
    fi
    rm -f "$tmp"
}

install_if_changed "$ETC/slurm.conf" 0644 root:root <<EOF
# Generated by scripts/slurm/start-local-slurm.sh: a single-node cluster on localhost.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUNDIR/slurmctld.pid
SlurmdPidFile=$RUNDIR/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
MpiDefault=none
# No cgroups in most containers: track processes through /proc, bind no tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$DEF_MEM
# Accounting through slurmdbd: sacct must work (pydra reads job states from it).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue briefly; sacct keeps them.
MinJobAge=60
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

install_if_changed "$ETC/slurmdbd.conf" 0600 slurm:slurm <<EOF
# Generated by scripts/slurm/start-local-slurm.sh (slurmdbd insists on mode 600, owner slurm).
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$RUNDIR/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF

install_if_changed /etc/mysql/mariadb.conf.d/90-local-slurm.cnf 0644 root:root <<EOF
# Generated by scripts/slurm/start-local-slurm.sh: settings slurmdbd asks for.
[mysqld]
bind-address=127.0.0.1
innodb_buffer_pool_size=128M
innodb_lock_wait_timeout=900
log_error=$SQL_ERR
EOF

# --- 3. munge ----------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged >/dev/null 2>&1 \
        || die "munged failed to start" /var/log/munge/munged.log
    wait_for "$TIMEOUT" munged /var/log/munge/munged.log bash -c 'munge -n | unmunge'
fi

# --- 4. MariaDB + accounting database ----------------------------------------------------------
if [[ ! -d /var/lib/mysql/mysql ]]; then
    say "initialising the MariaDB data folder"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null \
        || die "mariadb-install-db failed"
fi
if ! mariadb-admin --protocol=socket ping >/dev/null 2>&1; then
    say "starting MariaDB"
    # mysqld_safe restarts mariadbd if it crashes; it detaches with setsid.
    setsid mysqld_safe --user=mysql >/dev/null 2>&1 < /dev/null &
    wait_for "$TIMEOUT" MariaDB "$SQL_ERR" mariadb-admin --protocol=socket ping
fi
mariadb --protocol=socket <<EOF || die "could not create the slurm_acct_db database/user" "$SQL_ERR"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF

# --- 5. SLURM daemons --------------------------------------------------------------------------
if ((changed)); then
    # A new config: restart whatever runs, in reverse order of start.
    for d in slurmd slurmctld slurmdbd; do
        if alive "$RUNDIR/$d.pid"; then
            say "config changed: stopping $d"
            kill "$(cat "$RUNDIR/$d.pid")" 2>/dev/null || true
            for _ in $(seq 40); do alive "$RUNDIR/$d.pid" || break; sleep 0.25; done
        fi
    done
fi

if ! alive "$RUNDIR/slurmdbd.pid"; then
    say "starting slurmdbd"
    slurmdbd || die "slurmdbd failed to start" "$LOGDIR/slurmdbd.log"
fi
# sacctmgr answers only once slurmdbd has connected to the database.
wait_for "$TIMEOUT" slurmdbd "$LOGDIR/slurmdbd.log" sacctmgr -n -i list cluster

if ! alive "$RUNDIR/slurmctld.pid"; then
    say "starting slurmctld"
    slurmctld || die "slurmctld failed to start" "$LOGDIR/slurmctld.log"
fi
wait_for "$TIMEOUT" slurmctld "$LOGDIR/slurmctld.log" scontrol ping

# slurmctld registers the cluster with slurmdbd on start; make sure, or sacct stays empty.
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "could not register cluster $CLUSTER"
fi

if ! alive "$RUNDIR/slurmd.pid"; then
    say "starting slurmd"
    slurmd || die "slurmd failed to start" "$LOGDIR/slurmd.log"
fi
node_up() {
    local state
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null) || return 1
    case $state in
        idle* | mixed* | allocated* | completing*) return 0 ;;
        down* | drain*)
            # e.g. after an unclean stop: ReturnToService covers most cases, not all.
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1
            return 1
            ;;
        *) return 1 ;;
    esac
}
wait_for "$TIMEOUT" "node $NODE" "$LOGDIR/slurmd.log" node_up
wait_for "$TIMEOUT" sacct "$LOGDIR/slurmdbd.log" sacct -n -X -S now

# End to end: a job runs and accounting records it (the first record after a cold start
# can take a few seconds to reach the database; pydra treats a missing record as an error).
jid=$(sbatch --parsable -J local-slurm-check -o /dev/null -e /dev/null --wrap true) \
    || die "sbatch refused a test job" "$LOGDIR/slurmctld.log"
wait_for "$TIMEOUT" "test job $jid in sacct" "$LOGDIR/slurmd.log" \
    bash -c "sacct -n -X -j $jid -o State | grep -q COMPLETED"

say "cluster '$CLUSTER' is up: node $NODE ($CPUS CPUs, ${MEM_MB} MB), partition $PARTITION"
sinfo
