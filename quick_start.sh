#!/usr/bin/env bash
# One command, the whole job on an embedded default: example data + an offline MusicGen, one LoRA
# training run (base -> best validation loss, review of the logs), then base vs best vs final on the
# 8 evaluation prompts with a listening report and one verdict line per model.
#
#   ./quick_start.sh                                       # synthetic data + tiny random MusicGen (CPU, ~1 min)
#   MODEL_PATH=/path/to/musicgen-small DATA_DIR=finetune/data ./quick_start.sh   # your model and data
#
# Variables: MODEL_PATH, DATA_DIR, OUTPUT_DIR, EPOCHS, LR, BATCH_SIZE, GRAD_ACCUM, TARGET_DURATION,
# EVAL_DURATION (seconds per generated clip), SKIP_EVAL=1 (train only), EXTRA_ARGS (passed to train_lora.py).
set -euo pipefail
cd "$(dirname "$0")"
PY=.venv/bin/python
[ -x "$PY" ] || { echo "quick_start.sh: run ./install.sh first" >&2; exit 1; }
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false

DEFAULT_MODEL=finetune/models/tiny-musicgen
DEFAULT_DATA=finetune/data/example
MODEL_PATH=${MODEL_PATH:-$DEFAULT_MODEL}
DATA_DIR=${DATA_DIR:-$DEFAULT_DATA}
OUTPUT_DIR=${OUTPUT_DIR:-finetune/output_quick_start}
start=$(date +%s)

if [ ! -f "$DATA_DIR/metadata.json" ]; then
  if [ "$DATA_DIR" = "$DEFAULT_DATA" ]; then
    "$PY" finetune/lora/prepare_data.py --create_example --output_dir "$DATA_DIR"
  else
    # A folder of the user's: never fill it with synthetic clips. Say how to prepare it instead.
    hint="write one (format in DATA_PREPARATION.md)"
    if [ -d "$DATA_DIR" ] && [ -n "$(find "$DATA_DIR" -maxdepth 3 -type f \( -iname '*.wav' -o -iname '*.flac' \
        -o -iname '*.mp3' -o -iname '*.ogg' -o -iname '*.m4a' -o -iname '*.aif*' -o -iname '*.opus' \) -print -quit)" ]; then
      hint="it holds audio: prepare it with: $PY finetune/lora/prepare_data.py --input_dir $DATA_DIR --output_dir ${DATA_DIR%/}-prepared (descriptions come from a .txt beside each file, --descriptions_file or --default_description TEXT), then run DATA_DIR=${DATA_DIR%/}-prepared ./quick_start.sh"
    fi
    echo "error: $DATA_DIR/metadata.json not found (DATA_DIR must hold metadata.json and the audio it lists); $hint" >&2
    exit 2
  fi
fi

if [ "$MODEL_PATH" = "$DEFAULT_MODEL" ]; then
  # Tiny random-weight model: learns fast enough to show the loss fall in a minute.
  EPOCHS=${EPOCHS:-4} LR=${LR:-3e-3} BATCH_SIZE=${BATCH_SIZE:-4} GRAD_ACCUM=${GRAD_ACCUM:-1}
  EVAL_DURATION=${EVAL_DURATION:-5}
  [ -f "$MODEL_PATH/config.json" ] || "$PY" finetune/scripts/make_tiny_model.py --output_dir "$MODEL_PATH"
else
  EPOCHS=${EPOCHS:-1} LR=${LR:-1e-4} BATCH_SIZE=${BATCH_SIZE:-2} GRAD_ACCUM=${GRAD_ACCUM:-4}
  EVAL_DURATION=${EVAL_DURATION:-15}
fi
if [ -d "$OUTPUT_DIR/evaluation/ratings" ] && [ -n "$(ls -A "$OUTPUT_DIR/evaluation/ratings")" ]; then
  # Ratings are a listener's time: never replaced. The rated run moves aside whole, and this run starts afresh.
  kept="${OUTPUT_DIR%/}.rated-$(date +%Y%m%d-%H%M%S)"
  mv "$OUTPUT_DIR" "$kept"
  echo "quick_start.sh: $OUTPUT_DIR holds blind-test ratings; moved it to $kept (tally it with: $PY finetune/lora/evaluate.py --tally $kept/evaluation)"
fi
"$PY" finetune/lora/train_lora.py \
  --model_path "$MODEL_PATH" --data_dir "$DATA_DIR" --output_dir "$OUTPUT_DIR" --overwrite_output_dir \
  --num_epochs "$EPOCHS" --learning_rate "$LR" --batch_size "$BATCH_SIZE" \
  --gradient_accumulation_steps "$GRAD_ACCUM" --target_duration "${TARGET_DURATION:-15}" \
  --logging_steps 2 --save_steps 1000 --no_progress ${EXTRA_ARGS:-}

if [ "${SKIP_EVAL:-0}" != 1 ]; then
  "$PY" finetune/lora/evaluate.py --model_path "$MODEL_PATH" --lora_model_path "$OUTPUT_DIR" --compare_multi \
    --prompts_file finetune/data/eval/evaluation_prompts_8.json --data_dir "$DATA_DIR" \
    --output_dir "$OUTPUT_DIR/evaluation" --duration "$EVAL_DURATION" --overwrite --no_progress
  echo "quick_start.sh: listen blind in $OUTPUT_DIR/evaluation/listen.html (model names hidden until you reveal), then read $OUTPUT_DIR/evaluation/report.html"
fi
echo "quick_start.sh: finished in $(( $(date +%s) - start )) s; adapters in $OUTPUT_DIR/{best_model,final_model}"
