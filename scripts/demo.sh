#!/usr/bin/env bash
# `make demo`: the main job. Collects 100 Meta-World push demonstrations with the
# scripted expert, validates the store and prints its summary.
# (Training and evaluation join this script when dp-train/dp-eval land.)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=data/mw_push.zarr
if [ ! -d "$DATA" ]; then
  $BIN/dp-collect task=mw_push n_episodes=100 obs=state output=$DATA
fi
$BIN/dp-data validate $DATA --require state action
$BIN/dp-data info $DATA
