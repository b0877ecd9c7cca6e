#!/usr/bin/env bash
# Check the import-linter contracts of pyproject.toml (the layers, core's purity,
# sim/mesh independence, no cycles). The distribution maps natrelay.core -> core/
# and so on (package-dir), which grimp cannot follow through an editable install,
# so the check runs on a throwaway `natrelay/` folder of symlinks to the source.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
view=$(mktemp -d)
trap 'rm -rf "$view"' EXIT
mkdir "$view/natrelay"
touch "$view/natrelay/__init__.py"
for package in core eventlog adapters tools; do ln -s "$PWD/$package" "$view/natrelay/$package"; done
PYTHONPATH="$view" "$python" -c 'import sys; from importlinter.cli import lint_imports_command as run
sys.argv[0] = "lint-imports"; sys.exit(run())' --no-cache
