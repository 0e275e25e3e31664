#!/usr/bin/env bash
# EAP and EAP-IG at the published model shapes on a GPU, against their floors:
# benchmarks/models.py's table on CUDA (Pythia-160M, Qwen2.5-0.5B, Llama-3.2-1B, Gemma-2-2B),
# then the Llama-3.1-8B shape in bf16, both appended to benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu.sh                        # on a machine with a CUDA build of torch
#   bash benchmarks/gpu.sh --device cpu --quick   # smoke test of this script on a CPU
#
# Options: --device DEV (default cuda), --quick (2 layers per model), --results FILE (default
# benchmarks/RESULTS.md); anything else goes to benchmarks/models.py (e.g. --repeats 3).
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
results=benchmarks/RESULTS.md
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ "$device" == cuda* ]]; then
  "$py" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu.sh: torch sees no CUDA device (torch " + torch.__version__ + "); install a CUDA build of "
             "torch, or pass --device cpu for a smoke test")
print("gpu.sh:", torch.cuda.get_device_name(), "torch", torch.__version__, file=sys.stderr)
EOF
fi

"$py" benchmarks/models.py --device "$device" --results "$results" \
  --models pythia-160m qwen2.5-0.5b llama-3.2-1b gemma-2-2b "${extra[@]}"
"$py" benchmarks/models.py --device "$device" --results "$results" \
  --models llama-3.1-8b --dtype bfloat16 "${extra[@]}"
echo "gpu.sh: figures appended to $results" >&2
