#!/usr/bin/env bash
# mypy in strict mode (pyproject's [tool.mypy]) on the typed surface of natrelay:
# core/, eventlog/, the public API of adapters/ (the node loop, the network
# interface, the in-memory network), the simulator (adapters/sim/) and `natrelay plot`.
#
#   bash tools/typecheck.sh
#
# The folders install as natrelay.core, natrelay.eventlog, ... (pyproject's
# package-dir), a mapping mypy cannot follow in the source tree; so mypy reads
# them through a temporary natrelay/ of symlinks. Runs with $PYTHON (default:
# .venv/bin/python if present, else python3), which needs mypy (the dev extra).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=$root/.venv/bin/python; else PYTHON=python3; fi
fi
tree=$(mktemp -d -t natrelay-mypy-XXXXXX)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/natrelay"
for folder in core eventlog adapters tools; do
  ln -s "$root/$folder" "$tree/natrelay/$folder"
done
cd "$tree"
MYPYPATH=$tree "$PYTHON" -m mypy --config-file "$root/pyproject.toml" \
  --cache-dir "$root/.mypy_cache" \
  -p natrelay.core \
  -p natrelay.eventlog \
  -m natrelay.adapters \
  -m natrelay.adapters.node \
  -m natrelay.adapters.network \
  -m natrelay.adapters.memory \
  -m natrelay.adapters.sim.nat_model \
  -m natrelay.adapters.sim.scenario \
  -m natrelay.adapters.sim.metrics \
  -m natrelay.adapters.sim.run \
  -m natrelay.adapters.sim.simulated_network \
  -m natrelay.adapters.sim.sim_model \
  -p natrelay.adapters.whatif \
  -m natrelay.adapters.sim.sim_hard_nat \
  -m natrelay.adapters.sim.birthday \
  `# sim_handlers and sim_oracle, mixins of SimNetwork, are followed for types only` \
  -m natrelay.tools.plot_log \
  -m natrelay.tools.cli.cmd_plot
