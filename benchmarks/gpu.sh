#!/usr/bin/env bash
# EAP and EAP-IG on a GPU, against their floors, all appended to benchmarks/RESULTS.md:
# 1. benchmarks/models.py's table on CUDA (Pythia-160M, Qwen2.5-0.5B, Llama-3.2-1B, Gemma-2-2B),
#    then the Llama-3.1-8B shape in bf16;
# 2. benchmarks/scale.py on the GPT-2-small shape, one table per graph: heads + MLPs, MLP neurons
#    (bf16 scores) and SAE features (active features, mean L0 32 and 64), each with EAP, EAP-IG
#    (5 steps), their floors and ratios, the minimal circuit, a faithfulness curve (features), peak
#    CUDA memory per phase and the evaluator's ablation cache (offload auto); then heads and
#    features again with the cache offloaded to host memory (--offload true).
#
#   bash benchmarks/gpu.sh                        # on a machine with a CUDA build of torch
#   bash benchmarks/gpu.sh --device cpu --quick --results /tmp/gpu_smoke.md   # smoke test on a CPU
#
# Options: --device DEV (default cuda), --quick (2 layers per model; scale.py: batch 4, 64 features
# per site instead of the active ones, a coarser minimal-circuit grid and none for neurons),
# --only models|scale (one of the two parts, e.g. to rerun it within a device budget), --results
# FILE (default benchmarks/RESULTS.md); anything else goes to benchmarks/models.py (--repeats 3).
# On a CPU, --quick takes minutes for scale.py's tables, models.py's far longer on a loaded machine.
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
results=benchmarks/RESULTS.md
quick=0
only=
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    --quick) quick=1; extra+=("$1"); shift ;;
    --only) only="$2"; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done
case "$only" in
  ""|models|scale) ;;
  *) echo "gpu.sh: --only takes models or scale, got '$only'" >&2; exit 2 ;;
esac

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ "$device" == cuda* ]]; then
  "$py" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu.sh: torch sees no CUDA device (torch " + torch.__version__ + "); install a CUDA build of "
             "torch, or pass --device cpu for a smoke test")
print("gpu.sh:", torch.cuda.get_device_name(), "torch", torch.__version__, file=sys.stderr)
PY
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2; fi
fi

if [[ "$only" != scale ]]; then
  "$py" benchmarks/models.py --device "$device" --results "$results" \
    --models pythia-160m qwen2.5-0.5b llama-3.2-1b gemma-2-2b "${extra[@]}"
  "$py" benchmarks/models.py --device "$device" --results "$results" \
    --models llama-3.1-8b --dtype bfloat16 "${extra[@]}"
fi
if [[ "$only" == models ]]; then
  echo "gpu.sh: figures appended to $results" >&2
  exit 0
fi

# GPT-2-small shape: each scale.py call appends one table (its command, device, torch and date)
scale=("$py" benchmarks/scale.py --device "$device" --threads "$(nproc)" --results "$results")
methods=(--ig --floor)  # EAP-IG after the other phases; both floors before EAP
features=(--features active)
neuron_minimal=(--minimal)
if [[ $quick == 1 ]]; then
  scale+=(--layers 2 --batch 4 --grid 8)
  features=(--features 64)
  neuron_minimal=()  # on a CPU each of the ~25 masks of 10⁷ edges its search builds takes 10-20 s
fi
"${scale[@]}" "${methods[@]}" --minimal --granularity nodes --offload auto
"${scale[@]}" "${methods[@]}" "${neuron_minimal[@]}" --granularity neurons --scores-dtype bfloat16 --offload auto
"${scale[@]}" "${methods[@]}" --minimal --granularity sae "${features[@]}" --l0 32 64 --curve --offload auto
# the same evaluator phases with the ablation cache in pinned host memory, copied over chunk by chunk
"${scale[@]}" --minimal --granularity nodes sae "${features[@]}" --curve --offload true
echo "gpu.sh: figures appended to $results" >&2
