#!/usr/bin/env bash
# `make demo`: the main job. Collect 100 Meta-World push demonstrations with the scripted
# expert, train the baseline DiT policy on them, evaluate it for 50 episodes in
# simulation, and print the success rate and where the videos and report are.
# Training takes about 5 minutes on a 2-core CPU (4.8 measured, README); collection and evaluation add a few. Steps already done (store, finished run) are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
# Overrides for a different machine or a quick check, e.g.
#   DEMO_TRAIN_ARGS="device=cuda" make demo
#   DEMO_TASK=toy DEMO_TRAIN_ARGS="training.steps=50" DEMO_EPISODES=5 bash scripts/demo.sh
TASK=${DEMO_TASK:-mw_push}
DATA=data/$TASK.zarr
RUN=runs/demo_$TASK
if [ ! -d "$DATA" ]; then
  $BIN/dp-collect task=$TASK n_episodes=100 obs=state output=$DATA
fi
$BIN/dp-data validate $DATA --require state action
$BIN/dp-data info $DATA
if [ ! -f "$RUN/train_summary.json" ]; then
  RESUME=false; [ -e "$RUN/checkpoints/latest" ] && RESUME=true   # an interrupted demo continues
  # dp/configs/train.yaml defaults: batch 64, 5000 steps, lr 5e-4 (about 5 minutes on 2 CPU cores)
  $BIN/dp-train task=$TASK policy=dit output_dir=$RUN resume=$RESUME ${DEMO_TRAIN_ARGS:-}
fi
$BIN/dp-eval checkpoint=$RUN/checkpoints/latest n_episodes=${DEMO_EPISODES:-50} output_dir=$RUN/eval
