#!/usr/bin/env bash
# Create .venv and install the pinned, tested versions. A second run changes nothing and takes seconds.
#
#   ./install.sh                         # CPU torch 2.13.0 (the version the tests are pinned to)
#   USE_SYSTEM_TORCH=1 ./install.sh      # GPU users: keep the CUDA torch already in your Python/conda env
#   PYTHON=python3.11 ./install.sh       # pick the interpreter
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
  if [ "${USE_SYSTEM_TORCH:-0}" = 1 ]; then
    # See the interpreter's own packages (its CUDA torch) from inside the venv.
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"

stamp="$VENV/.installed"
want="$(cat requirements.txt pyproject.toml; echo "torch=$TORCH_VERSION system=${USE_SYSTEM_TORCH:-0}")"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c "import torch, transformers, peft, musicgen_lora" 2>/dev/null; then
  echo "install.sh: .venv is up to date ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
  exit 0
fi

if [ "${USE_SYSTEM_TORCH:-0}" = 1 ]; then
  "$PY" -c "import torch; print('using existing torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    || { echo "install.sh: USE_SYSTEM_TORCH=1 but $PYTHON has no torch; install it or drop the variable" >&2; exit 1; }
else
  # Pinned: an unpinned torch would pull the newest release with several GB of CUDA wheels.
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
fi
"$PY" -m pip install -q -r requirements.txt
# The toolkit's package (finetune/lora/musicgen_lora), editable: tests, benchmarks and your own code
# import musicgen_lora from the checkout, and the musicgen-lora-* commands land in .venv/bin.
"$PY" -m pip install -q --no-deps -e .
echo "$want" > "$stamp"
"$PY" -c "import torch, transformers, peft, accelerate; print(f'install.sh: ready: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, accelerate {accelerate.__version__}')"
