#!/usr/bin/env bash
# Rewrite constraints.txt (the lock file) from the active venv, after the suites passed in it.
# Usage: see the header this script writes, or README "Upgrading the pinned dependencies".
set -euo pipefail
cd "$(dirname "$0")/.."
pip show -q mmreg 2>/dev/null || { echo "activate the venv that mmreg is installed in" >&2; exit 2; }
tmp=$(mktemp constraints.txt.XXXXXX)
trap 'rm -f "$tmp"' EXIT
{
    cat <<'TXT'
# The tested set of every dependency of mmreg and its extras (test, nipype): a lock file,
# used as pip constraints by the README's commands, .ci/run and the container build.
# A dependency released after a CI run can break a fresh install (cloudpickle 3.1.3 did);
# with this file a fresh install gets exactly what CI tested.
#
# Upgrading the pins (see README, "Upgrading the pinned dependencies"):
#   python3 -m venv /tmp/up && . /tmp/up/bin/activate
#   pip install torch==2.13.0 -e ".[test,nipype]"      # no -c: today's newest releases
#   pytest -n 2 && pytest -n 2 -m slow                 # the suites must pass
#   bash scripts/update-constraints.sh                 # rewrites this file from that venv
TXT
    # The project itself is not a constraint; torch's local label (+cpu, +cu12x) depends on
    # the machine, and "torch==X" matches any of them.
    pip freeze --exclude-editable | grep -v -i '^mmreg[= @]' | sed -E 's/^(torch==[^+]+)\+.*$/\1/' \
        | LC_ALL=C sort -f
} >"$tmp"
mv "$tmp" constraints.txt
trap - EXIT
echo "constraints.txt: $(grep -c '==' constraints.txt) pins"
