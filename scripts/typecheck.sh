#!/usr/bin/env bash
# Type-check the installed package with mypy. setup.cfg maps top-level folders onto
# mmreg.<folder> (package_dir), which mypy cannot follow; so it checks a tree of symlinks
# laid out the way the package is installed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/mmreg"
for entry in "$root"/mmreg/*; do ln -s "$entry" "$tree/mmreg/$(basename "$entry")"; done
python - "$root" "$tree" <<'PY'
import configparser, os, sys
root, tree = sys.argv[1:]
cfg = configparser.ConfigParser()
cfg.read(os.path.join(root, "setup.cfg"))
for line in cfg["options"]["package_dir"].strip().splitlines():
    name, folder = (part.strip() for part in line.split("="))
    parts = name.split(".")
    if len(parts) == 2 and folder != "mmreg":  # e.g. mmreg.imaging = imaging
        os.symlink(os.path.join(root, folder), os.path.join(tree, "mmreg", parts[1]))
PY
cd "$tree"
mypy --config-file "$root/pyproject.toml" -p mmreg "$@"
