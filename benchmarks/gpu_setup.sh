#!/usr/bin/env bash
# On a GPU machine without a package index: install what its image lacks for lerpray.model (pydantic and its
# dependencies) from the wheelhouse that travels with the tree (`make gpu-wheels` builds gpu-wheels/ where an index
# is reachable), with --no-index, into a folder of its own; then run the given command with it on PYTHONPATH.
#
#   bash benchmarks/gpu_setup.sh python3 benchmarks/gpu_core.py            # the GPU benchmarks
#   bash benchmarks/gpu_setup.sh python3 benchmarks/gpu_core.py --cpu-rehearsal   # the same, rehearsed on a CPU
#
# Needs no git and no network. PYTHON picks the interpreter (default python3); LERPRAY_GPU_SITE the install folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
SITE="${LERPRAY_GPU_SITE:-${TMPDIR:-/tmp}/lerpray-gpu-site}"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import pydantic" 2>/dev/null; then
  if [ ! -d gpu-wheels ]; then
    echo "gpu-wheels/ is missing: run 'make gpu-wheels' where a package index is reachable and carry the folder" >&2
    exit 2
  fi
  "$PYTHON" -m pip install -q --no-index --find-links gpu-wheels --target "$SITE" pydantic
fi
"$PYTHON" -c "import lerpray.model.engine, lerpray.model.interpolated, pydantic; print('lerpray.model imports; pydantic', pydantic.VERSION)"
exec "$@"
