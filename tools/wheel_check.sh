#!/usr/bin/env bash
# The wheel as a user gets it: build the sdist and the wheel, install the wheel
# into a fresh virtual environment with no extras, and use the command line.
#
#   bash tools/wheel_check.sh [DIST_DIR]
#
# Checks, on the plain install: `natrelay --help` and every verb's --help; the
# usage errors (exit 2, one line on stderr, no traceback); the verbs that need
# an extra name it; `natrelay demo`, `status`, `explain`, `replay --verify` on
# its log. Then installs the [sim] extra into the same environment and runs
# `natrelay simulate` (built-in scenarios are package data), `replay --verify`
# on its log, and `natrelay plot`. The wheel and sdist are left in DIST_DIR when
# given (tools/test.sh passes one so the wheel-content test reuses the wheel).
# Runs with the interpreter in $PYTHON (default: python3). About a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-python3}
work=$(mktemp -d -t natrelay-wheel-XXXXXX)
trap 'rm -rf "$work"' EXIT
dist=${1:-$work/dist}
mkdir -p "$dist"
started=$SECONDS
failures=0

fail() { echo "wheel check FAILED: $*" >&2; failures=$((failures + 1)); }

# Build from a clean copy of the sources (git's tracked and untracked, not ignored,
# files): a stale natrelay.egg-info in the work tree would otherwise slip files into
# the wheel that a fresh clone's wheel lacks.
src=$work/src
"$python" - "$src" <<'EOF'
import shutil, subprocess, sys
from pathlib import Path
target = Path(sys.argv[1])
listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], capture_output=True, text=True)
if listed.returncode == 0:
    for name in filter(None, listed.stdout.split("\0")):
        if Path(name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(name, target / name)
else:  # not a git checkout: everything but what a build or a venv leaves behind
    shutil.copytree(".", target, ignore=shutil.ignore_patterns(".venv", "build", "dist", "*.egg-info", "__pycache__"))
EOF

echo "wheel check: building sdist and wheel"
rm -f "$dist"/natrelay-*.whl "$dist"/natrelay-*.tar.gz
if ! (cd "$src" && "$python" -m build --outdir "$dist" .) >"$work/build.log" 2>&1; then
  tail -n 30 "$work/build.log" >&2
  echo "wheel check FAILED: python -m build" >&2
  exit 1
fi
wheel=$(ls "$dist"/natrelay-*.whl)
ls "$dist"/natrelay-*.tar.gz >/dev/null

echo "wheel check: installing $(basename "$wheel") with no extras into a fresh venv"
if ! "$python" -m venv "$work/venv" >"$work/venv.log" 2>&1; then
  cat "$work/venv.log" >&2
  echo "wheel check FAILED: python -m venv (on Debian: apt install python3-venv)" >&2
  exit 1
fi
# pip_install ARGS...: quiet; its output only when it fails
pip_install() {
  if ! "$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >"$work/pip.log" 2>&1; then
    tail -n 30 "$work/pip.log" >&2
    echo "wheel check FAILED: pip install $*" >&2
    exit 1
  fi
}
pip_install "$wheel"
natrelay=$work/venv/bin/natrelay
cd "$work"  # nothing of the source tree is importable from here

# ok CMD...: exit 0, no traceback
ok() {
  local code=0
  "$@" >"$work/out" 2>"$work/err" || code=$?
  if [ "$code" -ne 0 ] || grep -q Traceback "$work/err"; then
    fail "'${*#"$work/venv/bin/"}' exited $code: $(head -c 600 "$work/err")"
  fi
}

# usage_error EXPECTED CMD...: exit 2, exactly one line on stderr holding EXPECTED, no traceback
usage_error() {
  local expected=$1 code=0
  shift
  "$@" >"$work/out" 2>"$work/err" || code=$?
  local lines
  lines=$(grep -c . "$work/err" || true)
  if [ "$code" -ne 2 ] || [ "$lines" -ne 1 ] || ! grep -qF -- "$expected" "$work/err"; then
    fail "'${*#"$work/venv/bin/"}': want exit 2 and one line with '$expected', got exit $code: $(head -c 600 "$work/err")"
  fi
}

ok "$natrelay" --help
grep -q "simulate" "$work/out" || fail "natrelay --help lists no simulate"
verbs=$("$work/venv/bin/python" -c "
from natrelay.tools.cli import app
print(' '.join(c.name or c.callback.__name__ for c in app.registered_commands if c.callback))")
for verb in $verbs; do
  ok "$natrelay" "$verb" --help
  grep -q "Usage" "$work/out" || fail "natrelay $verb --help printed no usage"
done
echo "wheel check: --help of $(wc -w <<<"$verbs") verbs on a plain install"

printf 'name = "broken"\nduration_s = "soon"\n' >bad.toml
printf 'name = "broken\n' >unparsable.toml
usage_error "no log at missing.db" "$natrelay" status missing.db
usage_error "unknown policy 'bogus'" "$natrelay" simulate --policy bogus
usage_error "key 'duration_s'" "$natrelay" simulate --scenario bad.toml
usage_error "unparsable.toml" "$natrelay" simulate --scenario unparsable.toml
usage_error "no such file, and not a built-in scenario" "$natrelay" simulate --scenario nosuch
usage_error "no such option: --bogus" "$natrelay" status --bogus
usage_error "missing argument" "$natrelay" explain
usage_error "natrelay[fuzz]" "$natrelay" fuzz --examples 1
usage_error "natrelay[bench]" "$natrelay" bench --no-postgres

ok "$natrelay" demo --log demo.sqlite
grep -q "peer-00" "$work/out" || fail "natrelay demo printed no peers"
usage_error "no peer 'nobody'" "$natrelay" explain demo.sqlite nobody
usage_error "natrelay[sim]" "$natrelay" plot demo.sqlite
ok "$natrelay" status demo.sqlite
ok "$natrelay" explain demo.sqlite peer-02
ok "$natrelay" replay demo.sqlite --verify
ok "$natrelay" simulate --peers 7 --duration 20 --out plain --no-plot
echo "wheel check: usage errors, demo, status, explain, replay on a plain install ($((SECONDS - started)) s)"

echo "wheel check: installing the [sim] extra"
pip_install "$wheel[sim]"
ok "$natrelay" simulate --peers 30 --duration 60 --out sim --json
"$work/venv/bin/python" - "$work/out" <<'EOF' || fail "simulate's report"
import json, pathlib, sys
report = json.loads(pathlib.Path(sys.argv[1]).read_text())
assert report["scenario"] == "mesh", report["scenario"]
assert pathlib.Path(report["log"]).is_file(), report["log"]
assert pathlib.Path(report["plot"]).is_file(), report["plot"]
natrelay = next(row for row in report["policies"] if row["name"] == "natrelay")
assert natrelay["connectivity"] > 0.5, natrelay
EOF
ok "$natrelay" replay sim/mesh.db --verify
ok "$natrelay" plot sim/mesh.db --out sim/mesh-paths.svg
grep -q "<svg" sim/mesh-paths.svg || fail "natrelay plot wrote no SVG"
for builtin in matrix steady; do
  ok "$natrelay" simulate --scenario "$builtin" --peers 7 --duration 20 --out sim --no-plot
done

if [ "$failures" -ne 0 ]; then
  echo "wheel check: $failures failure(s)" >&2
  exit 1
fi
echo "wheel check: passed in $((SECONDS - started)) s ($(basename "$wheel"), $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
