#!/usr/bin/env bash
# One-step MeanFlow against DDIM-10 and the other real-time samplers (mw_push, rs_lift), the 50 Hz loop,
# and Switch-DiT against MoDE and a dense DiT on MT10. Each step skips itself when its result exists.
#   bash scripts/meanflow_switch_experiments.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
export MUJOCO_GL=${MUJOCO_GL:-egl}
STEPS=${STEPS:-5000}          # per single-task row (dp/configs/train.yaml's default)
MT10_STEPS=${MT10_STEPS:-6000} # the MoDE rows' steps
EPISODES=${EPISODES:-50}

train() {  # train OUT ARGS...: skipped when OUT has finished
  local out=$1; shift
  [ -e "$out/.done" ] && return 0
  dp-train output_dir="$out" resume=true progress=false "$@" && touch "$out/.done"
}
sweep() {  # sweep RUN NAME SPECS...: one row per sampler, 50 episodes each
  local run=$1 name=$2; shift 2
  [ -e "bench/results/$name.json" ] || python -m dp.eval.sweep "$run" "$@" --episodes "$EPISODES" --name "$name"
}

[ -e data/rs_lift.zarr ] || dp-collect task=rs_lift n_episodes=100 obs=state output=data/rs_lift.zarr progress=false
for task in mw_push rs_lift; do
  common=(task="$task" policy.n_obs_steps=1 training.steps="$STEPS")  # the real-time layout: 2 chunks of 8
  train "runs/${task}_ddim" policy=dit "${common[@]}"
  train "runs/${task}_meanflow" policy=meanflow "${common[@]}" policy.streaming.train_fraction=0.8
  train "runs/${task}_flow" policy=dit "${common[@]}" policy.process.schedule=flow policy.process.prediction=velocity
  train "runs/${task}_rt" policy=dit "${common[@]}" policy.process.prediction=x0 policy.streaming.train_fraction=0.8 \
    policy.anchors.count=20
  sweep "runs/${task}_ddim" "onestep_${task}_ddim" ddim:10
  sweep "runs/${task}_meanflow" "onestep_${task}_meanflow" meanflow:1 meanflow:2 streaming:2:base=meanflow
  sweep "runs/${task}_flow" "onestep_${task}_flow" euler:1 euler:2
  sweep "runs/${task}_rt" "onestep_${task}_rt" streaming:2 truncated:2
done
# the 50 Hz loop, one pass per chunk, no async
[ -e runs/mw_push_meanflow/control_sync_50hz/summary.json ] || dp-control checkpoint=runs/mw_push_meanflow robot=sim \
  hz=50 mode=sync max_ticks=5000 output_dir=runs/mw_push_meanflow/control_sync_50hz progress=false
[ -e bench/results/sampling_cost.json ] || dp-bench sampling
[ -e bench/results/train_step.json ] || dp-bench train_step

# MT10 with language, the MoDE rows' demos and steps
LANG='policy.language={encoder: builtin, layers: 2}'
train runs/mt10_switch task=mt10 policy=switch_dit "$LANG" training.steps="$MT10_STEPS"
train runs/mt10_switch_noprior task=mt10 policy=switch_dit "$LANG" policy.switch.prior_weight=0 training.steps="$MT10_STEPS"
train runs/mt10_mode task=mt10 policy=mode training.steps="$MT10_STEPS"
train runs/mt10_dense task=mt10 policy=dit "$LANG" training.steps="$MT10_STEPS"
for run in mt10_switch mt10_switch_noprior mt10_mode mt10_dense; do
  [ -e "runs/$run/eval/report.json" ] || dp-eval checkpoint="runs/$run" n_episodes="$EPISODES" n_envs=25 progress=false
done
for run in mt10_switch mt10_switch_noprior mt10_mode; do
  [ -e "runs/$run/routing.png" ] || python -m dp.eval.routing "runs/$run/checkpoints/latest"
done
echo "meanflow and switch experiments done"
