#!/usr/bin/env bash
# GPU check, on a machine with one NVIDIA GPU and no internet (see bench/gpu_check.py).
# Here first:   python bench/gpu_check.py --prepare        (fills .gpucheck/, git-excluded)
# There:        bash bench/gpu_check.sh                     (carry .gpucheck; < 5 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
site=/tmp/gpucheck-site
# bitsandbytes is the one package the GPU image lacks that a trial needs.
python3 -m pip install -q --no-index --no-deps --target "$site" .gpucheck/wheels/*.whl
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 bench/gpu_check.py "$@"
