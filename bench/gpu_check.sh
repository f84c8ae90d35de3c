#!/usr/bin/env bash
# One GPU, no network: the 7B recipe's training step and generation loop measured on a 7B-shaped model with random
# weights, then the test suite's CUDA paths (bench/gpu_check.py says what and how). Installs and downloads nothing.
#   bash bench/gpu_check.sh [FIGURES.json] [python -m bench.gpu_check options]   # default: $OUT/gpu_check.json
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out="${1:-${OUT:-.}/gpu_check.json}"
shift || true
exec python -m bench.gpu_check --out "$out" "$@"
