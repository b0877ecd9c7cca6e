#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine, then run it.
#
# Installs the Debian packages the end-to-end tests drive (.ci/apt-packages.txt),
# PostgreSQL and python3-venv, starts PostgreSQL on 127.0.0.1:5432 if nothing
# answers there, creates the virtual environment .venv (the system Python is
# externally managed, PEP 668) and installs natrelay into it with its dev
# extras, then runs ruff, import-linter (tools/lint_imports.sh), mypy
# (tools/typecheck.sh), the wheel check (tools/wheel_check.sh) and the whole
# pytest suite with .venv's Python.
# Arguments go to pytest. Root (or sudo) is needed: the end-to-end tests build
# network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for package in $(grep -v '^#' .ci/apt-packages.txt) postgresql postgresql-client python3-venv; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# PostgreSQL: use the one on 127.0.0.1:5432, or start Debian's cluster there.
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    as_root pg_createcluster "$version" main
  fi
  echo "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432
fi
if [ -z "${NATRELAY_PG_URL:-}" ]; then
  if ! psql -h 127.0.0.1 -U postgres -d test -w -c 'SELECT 1' >/dev/null 2>&1; then
    # A fresh Debian cluster asks for a password on TCP: give the test user one.
    as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'natrelay-test'\""
    as_root su postgres -c "createdb test" 2>/dev/null || true
    export NATRELAY_PG_URL="postgresql+psycopg://postgres:natrelay-test@127.0.0.1:5432/test"
  else
    export NATRELAY_PG_URL="postgresql+psycopg://postgres@127.0.0.1:5432/test"
  fi
fi

# The virtual environment: .venv, made anew if missing or broken.
if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
  rm -rf .venv
  python3 -m venv .venv
fi
python=$PWD/.venv/bin/python
"$python" -m pip install -q --disable-pip-version-check -e '.[dev]'
"$python" -m ruff check .
PYTHON=$python bash tools/lint_imports.sh
PYTHON=$python bash tools/typecheck.sh

# The wheel as a user installs it; the wheel-content test reuses the wheel built here.
dist=$(mktemp -d -t natrelay-dist-XXXXXX)
trap 'rm -rf "$dist"' EXIT
PYTHON=$python bash tools/wheel_check.sh "$dist"
NATRELAY_WHEEL=$(ls "$dist"/natrelay-*.whl)
export NATRELAY_WHEEL

"$python" -m pytest "$@"
