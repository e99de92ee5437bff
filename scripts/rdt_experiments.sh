#!/usr/bin/env bash
# RDT's figures: one checkpoint for five robots against per-robot dit baselines, and transfer to a
# UR5e from 20 demos. Each step skips itself when its result exists, so an interrupted run resumes.
#   bash scripts/rdt_experiments.sh            (collects the stores first when they are missing)
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
export MUJOCO_GL=${MUJOCO_GL:-egl}
STEPS=${RDT_STEPS:-10000}          # the rdt run; each per-robot dit gets STEPS / 5
PRE_STEPS=${RDT_PRE_STEPS:-6000}   # pretraining on Panda, Sawyer, IIWA
TUNE_STEPS=${RDT_TUNE_STEPS:-2000} # fine-tuning (and the from-scratch control) on 20 UR5e demos
EPISODES=${RDT_EPISODES:-50}

collect() {  # collect TASK ROBOT OUT
  [ -e "$3" ] || dp-collect task="$1" ${2:++task.env_options.robot=$2} n_episodes=100 obs=state output="$3" progress=false
}
train() {  # train OUT ARGS...: skipped when OUT has a final checkpoint
  local out=$1; shift
  [ -e "$out/checkpoints/latest" ] && [ -e "$out/.done" ] && return 0
  dp-train output_dir="$out" resume=true progress=false "$@" && touch "$out/.done"
}
evaluate() {  # evaluate RUN
  [ -e "$1/eval/report.json" ] || dp-eval checkpoint="$1" n_episodes="$EPISODES" n_envs=25 progress=false
}

for robot in Panda Sawyer IIWA UR5e; do
  collect rs_lift "$robot" "data/rs_lift_${robot,,}.zarr"
done
collect rs_two_arm_lift "" data/rs_two_arm_lift.zarr

# batch-1 latency with and without the cached condition K/V (a quiet CPU: before the training runs)
[ -e bench/results/rdt_latency.json ] || dp-bench rdt

# one rdt checkpoint, five robots
train runs/rdt_lift5 task=rdt_lift5 policy=rdt training.steps="$STEPS"
evaluate runs/rdt_lift5
# beside each robot, a dit trained on that robot's data alone, the same total steps split evenly
for robot in panda sawyer iiwa ur5e; do
  train "runs/dit_lift_$robot" task=rs_lift task.dataset_path="data/rs_lift_$robot.zarr" policy=dit \
    training.steps=$((STEPS / 5))
  evaluate "runs/dit_lift_$robot"
done
train runs/dit_two_arm_lift task=rs_two_arm_lift task.dataset_path=data/rs_two_arm_lift.zarr policy=dit \
  training.steps=$((STEPS / 5))
evaluate runs/dit_two_arm_lift

# transfer: pretrain on three arms, fine-tune on 20 UR5e demos; the control trains on the same 20 from scratch
train runs/rdt_lift3 task=rdt_lift3 policy=rdt training.steps="$PRE_STEPS"
train runs/rdt_ur5e20_tuned task=rdt_ur5e policy=rdt training.max_train_episodes=20 training.steps="$TUNE_STEPS" \
  training.init_from=runs/rdt_lift3
train runs/rdt_ur5e20_scratch task=rdt_ur5e policy=rdt training.max_train_episodes=20 training.steps="$TUNE_STEPS"
evaluate runs/rdt_ur5e20_tuned
evaluate runs/rdt_ur5e20_scratch
echo "rdt experiments done"
