#!/usr/bin/env bash
# RDT from two cameras and the instruction on rs_lift with a Panda. Resumable like rdt_experiments.sh.
#   bash scripts/rdt_images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
export MUJOCO_GL=${MUJOCO_GL:-egl}
STEPS=${RDT_IMAGE_STEPS:-3000}
OUT=runs/rdt_lift_panda_img

[ -e data/rs_lift_panda_img.zarr ] || dp-collect task=rs_lift obs=image '+task.env_options.extra_cameras=[robot0_eye_in_hand]' \
  n_episodes=100 output=data/rs_lift_panda_img.zarr progress=false
if ! [ -e "$OUT/.done" ]; then
  dp-train task=rdt_lift_panda_img policy=rdt training.steps="$STEPS" output_dir="$OUT" resume=true progress=false
  touch "$OUT/.done"
fi
[ -e "$OUT/eval/report.json" ] || dp-eval checkpoint="$OUT" n_episodes=50 n_envs=25 progress=false
echo "rdt image experiment done"
