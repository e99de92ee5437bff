#!/usr/bin/env bash
# Video prediction, sparse attention, and PAD against the image dit, with and without co-training.
# Each step skips itself when its result exists, so an interrupted run resumes.
#   bash scripts/video_pad_experiments.sh            # everything, in order
#   PART=video bash scripts/video_pad_experiments.sh # only the video rows; PART=pad only the PAD rows
#   PART=pad RUNS=mw3_pad_cotrain bash scripts/video_pad_experiments.sh  # only the named PAD-part runs
# The two parts share no runs, so they can run side by side (OMP_NUM_THREADS=1 each on a 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
export MUJOCO_GL=${MUJOCO_GL:-egl}
VIDEO_STEPS=${VIDEO_STEPS:-4000}
POLICY_STEPS=${POLICY_STEPS:-3000}
EPISODES=${EPISODES:-50}
PART=${PART:-all}
PAD_BATCH=${PAD_BATCH:-64}
RUNS=${RUNS:-mw3_dit mw3_pad mw3_pad_cotrain mw3_pad_w01 mw3_pad_shift}

collect() {  # collect TASK N OUT
  [ -e "$3" ] || dp-collect task="$1" n_episodes="$2" obs=image output="$3" progress=false
}
train() {  # train OUT ARGS...: skipped when OUT has finished
  local out=$1; shift
  [ -e "$out/.done" ] && return 0
  dp-train output_dir="$out" resume=true progress=false "$@" && touch "$out/.done"
}

if [ "$PART" != pad ]; then
collect mw_push 100 data/mw_push_img.zarr
# rs_lift frames: the two-camera Panda store of scripts/rdt_images.sh (its agentview camera is `img`)
[ -e data/rs_lift_panda_img.zarr ] || dp-collect task=rs_lift obs=image '+task.env_options.extra_cameras=[robot0_eye_in_hand]' \
  n_episodes=100 output=data/rs_lift_panda_img.zarr progress=false

# future frames: 8-frame clips (2 context, 6 predicted), 10% of episodes held out
declare -A STORE=([mw_push]=data/mw_push_img.zarr [rs_lift]=data/rs_lift_panda_img.zarr)
for name in mw_push rs_lift; do
  train "runs/video_$name" task="$name" task.obs=image task.dataset_path="${STORE[$name]}" policy=video \
    training.steps="$VIDEO_STEPS" training.batch_size=16 training.val_ratio=0.1
  for steps in 10 1; do  # DDIM 10 (a sample) and 1 (the model's mean estimate in one step)
    out="bench/results/video_${name}_ddim$steps"
    [ -e "$out/video_eval.json" ] || dp-video-eval checkpoint="runs/video_$name" n_clips=64 output_dir="$out" \
      "sampler={name: ddim, steps: $steps}" progress=false
  done
done
[ -e bench/results/video_sparse.json ] || dp-bench video_sparse --checkpoint runs/video_mw_push

fi

if [ "$PART" != video ]; then
collect mw3 50 data/mw3_img.zarr
collect mw_door_open 50 data/mw_door_open_img.zarr
collect mw_window_open 50 data/mw_window_open_img.zarr

# PAD against the image dit on three tasks with language, the same steps and batch
LANG='policy.language={encoder: builtin, layers: 2}'
# mw3_pad_w01: the A/B on PAD's image loss weight (1.0 -> 0.1), same steps and batch
# mw3_pad_shift: on top of w01, DrQ random shift of 4 px on PAD's clips (the dit's encoder random-crops 84 -> 76;
# PAD's patch tokens had no augmentation)
declare -A EXTRA=([mw3_dit]="policy=dit" [mw3_pad]="policy=pad" [mw3_pad_cotrain]="policy=pad"
                  [mw3_pad_w01]="policy=pad policy.image_loss_weight=0.1"
                  [mw3_pad_shift]="policy=pad policy.image_loss_weight=0.1 policy.shift=4")
for run in $RUNS; do
  video=()
  [ "$run" = mw3_pad_cotrain ] && video=('task.video_datasets=[{path: data/mw_door_open_img.zarr}, {path: data/mw_window_open_img.zarr}]')
  train "runs/$run" task=mw3 ${EXTRA[$run]} "$LANG" training.steps="$POLICY_STEPS" training.batch_size="$PAD_BATCH" "${video[@]}"
  [ -e "runs/$run/eval/report.json" ] || dp-eval checkpoint="runs/$run" n_episodes="$EPISODES" n_envs=25 progress=false
done
fi
echo "video and PAD experiments ($PART) done"
