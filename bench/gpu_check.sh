#!/usr/bin/env bash
# The CUDA path end to end: short MNIST and CIFAR-10 distillations, a train-protocol
# eval, `dd eval` itself and vmap batching, each one line with s/iter, peak GPU memory
# and the FLOP-floor ratio (bench/gpu_check.py says what each step does).
#
#   bench/gpu_check.sh                      # on a GPU; stand-in data (tests/fixtures MNIST)
#   bench/gpu_check.sh --data-root /data    # real MNIST and CIFAR-10
#   bench/gpu_check.sh --device cpu         # the same steps on a CPU, tiny budgets
#
# PYTHON picks the interpreter (default: the repo's .venv, else python3). Exits non-zero,
# with the failing step's message, if any step fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    [[ -x "$repo/.venv/bin/python" ]] && PYTHON="$repo/.venv/bin/python"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
export DDCLI_OFFLINE="${DDCLI_OFFLINE:-1}"  # missing data is an error, not a download
exec "$PYTHON" "$here/gpu_check.py" "$@"
