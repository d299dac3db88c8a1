#!/usr/bin/env bash
# The GPU check: training and generation throughput of mbdefense against its peers on one GPU,
# at real model sizes, with nothing downloaded (randomly initialised models of the
# SmolLM2-135M and Llama-3.2-1B shapes; the prompts and answers are the embedded default's).
# Prints real tokens/s, peak memory, the ratios and the training MFU. Under 5 minutes on one
# H100/H200.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Needs mbdefense installed with a CUDA torch, and trl for the TRL peer (`pip install trl`;
# without it that peer is skipped). Results: OUT_DIR/*.json and gpu_check.log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-benchmark-results/gpu}"
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
variants="mbdefense,hf-trainer,fixed-length"
python3 -c "import trl" 2>/dev/null && variants="mbdefense,hf-trainer,trl-sft,fixed-length"
for shape in smollm2-135m llama-3.2-1b; do
  echo "== training, $shape (bf16) =="
  python3 "$here/train_throughput.py" --shape "$shape" --device cuda --batch-size 16 \
    --steps 30 --variants "$variants" --json "$out/train-$shape.json"
  echo "== generation, $shape (bf16) =="
  python3 "$here/generation_throughput.py" --shape "$shape" --device cuda --dtype bfloat16 \
    --batch-size 64 --max-new-tokens 64 --json "$out/generation-$shape.json"
done
