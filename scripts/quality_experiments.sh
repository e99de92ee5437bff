#!/usr/bin/env bash
# The benchmark rows people cite, over 3 training seeds (bench/results/quality.md). Resumable: each run is
# finished when runs/quality/<task>_<policy>_seed<S>/.done exists, each evaluation when its report exists.
#   bash scripts/quality_experiments.sh            # SEEDS="0" for a one-seed pilot
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
export MUJOCO_GL=${MUJOCO_GL:-egl}
SEEDS=${SEEDS:-0 1 2}
LANG_SET='policy.language={encoder: builtin, layers: 2}'
STOCK='task.expert_options=null'  # Square's arms before it adopted DART demonstrations: the stock expert
TWO_SWITCHES=("$STOCK" 'task.expert_options={plan: two_switches}')  # cleared first: hydra merges mappings

# eval_action_steps TASK SEED N SETTING... [n_videos=K] [initial_noise=episode]: the dit run `dp-bench quality
# --tasks TASK --seeds SEED --set SETTING...` made, evaluated on 50 episodes executing N actions per chunk (into
# RUN/eval_taN, or RUN/eval_taN_episode_noise; skipped if done)
eval_action_steps() {
  local task=$1 seed=$2 ta=$3 settings=() extra=() run out
  for a in "${@:4}"; do case $a in n_videos=*|initial_noise=*) extra+=("$a") ;; *) settings+=("$a") ;; esac; done
  run=$(python -c "import sys; from dp.bench.quality import run_dir; print(run_dir(sys.argv[1], 'dit', int(sys.argv[2]), sys.argv[3:]))" "$task" "$seed" "${settings[@]}")
  out="$run/eval_ta$ta"
  case " ${extra[*]} " in *" initial_noise=episode "*) out="${out}_episode_noise" ;; esac
  [ -e "$out/report.json" ] || dp-eval checkpoint="$run" n_episodes=50 n_action_steps="$ta" progress=false "${extra[@]}" output_dir="$out"
}

# recipe A/Bs (seed 0): the defaults against one changed setting; an adopted value goes into the task's recipe.
# Square's arms below its DART and eval_recipe lines were evaluated at their trained actions per chunk (their
# records); run again, they are evaluated as its eval_recipe says (1 action per chunk), into new records
dp-bench quality --tasks rs_can rs_stack rs_two_arm_lift pusht --seeds 0 --set training.steps=5000
# Square (policy.n_action_steps=8: the defaults' arm, before the recipe's 2): 5000, 20000, 50000 steps, then 50000
# over 3 seeds, and seeds 1 and 2's checkpoints executing 4, 2 and 1 actions per chunk
for steps in 5000 20000; do dp-bench quality --tasks rs_square --seeds 0 --set "$STOCK" policy.n_action_steps=8 training.steps=$steps; done
dp-bench quality --tasks rs_square --seeds 0 1 2 --set "$STOCK" policy.n_action_steps=8 training.steps=50000
for seed in 1 2; do
  for ta in 4 2 1; do eval_action_steps rs_square "$seed" "$ta" "$STOCK" policy.n_action_steps=8 training.steps=50000; done
done
# PushT (policy.n_action_steps=8: the defaults' arm, before the recipe's 2): the block angle as (sin, cos) or raw,
# at 5000 and 20000 steps; then each 20000-step checkpoint executing 2 actions per chunk. These arms read the pose
# (task.state_keys=null); PushT's default is now the keypoints, so they are named by it and not by their first runs
dp-bench quality --tasks pusht --seeds 0 --set 'task.obs_angles={state: [4]}' task.state_keys=null policy.n_action_steps=8 training.steps=5000
for angles in 'task.obs_angles={state: [4]}' 'task.obs_angles=null'; do
  dp-bench quality --tasks pusht --seeds 0 --set "$angles" task.state_keys=null policy.n_action_steps=8 training.steps=20000
  eval_action_steps pusht 0 2 "$angles" task.state_keys=null policy.n_action_steps=8 training.steps=20000 n_videos=2
done

dp-bench quality --tasks rs_can rs_square rs_stack rs_two_arm_lift pusht --seeds $SEEDS
# Square at its recipe: seeds 0 and 1 also executing 1 action per chunk; then demonstrations from the expert plan
# with 2 switches instead of 5 (its own store and runs), evaluated both ways; where the failures sit
for seed in 0 1; do eval_action_steps rs_square "$seed" 1 "$STOCK"; done
dp-bench quality --tasks rs_square --seeds 0 1 --set "${TWO_SWITCHES[@]}"
for seed in 0 1; do eval_action_steps rs_square "$seed" 1 "${TWO_SWITCHES[@]}"; done
# one starting noise per episode instead of per prediction, on the recipe's checkpoints
for seed in 0 1; do for ta in 2 1; do eval_action_steps rs_square "$seed" "$ta" "$STOCK" initial_noise=episode; done; done
# DART demonstrations (the expert's actions executed with noise of std 0.2, its labels stored; own store and
# runs; Square's default since) against the stock expert, 3 seeds each, executing 2 actions per chunk and 1
# (rs_square's eval_recipe)
for ta in 2 1; do
  dp-bench quality --tasks rs_square --seeds 0 1 2 --eval-set n_action_steps=$ta
  dp-bench quality --tasks rs_square --seeds 0 1 2 --set "$STOCK" --eval-set n_action_steps=$ta
done
dp-bench quality --tasks pusht@image --seeds $SEEDS
dp-bench quality --tasks mt50 --seeds 0 --set "$LANG_SET"
