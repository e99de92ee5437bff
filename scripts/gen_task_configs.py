"""Write dp/configs/task/<name>.yaml for every task and multi-task set in dp/envs/.

    python scripts/gen_task_configs.py

The files are committed; rerun after adding a task. Hand-edited options belong in
EXTRA_OPTIONS below, tuned settings in RECIPES and EVAL_RECIPES (dp/recipes.py says how dp-train
and dp-eval apply them), not in the generated files.
"""
from pathlib import Path

from dp import envs

EXTRA_OPTIONS: dict[str, dict] = {}
# Low-dim observation dims that are angles (radians, wrapping at 2 pi), with the A/B that justified each.
OBS_ANGLES: dict[str, str] = {}
# Store keys concatenated into the low-dim `state` observation (task.obs=state), with the A/B that justified each.
STATE_KEYS: dict[str, str] = {
    # PushT, seed 0, 20000 steps, 2 actions per chunk, 50 episodes: the pose [agent, block x, y, angle] -> the agent
    # and the T's 8 corners (Diffusion Policy's low-dim PushT input; no angle wrap): success 28% -> 66%, score
    # 0.622 -> 0.902, final coverage 0.56 -> 0.85 (seeds 1 and 2 with keypoints: 0.786, 0.685; mean of 3: 0.791)
    "pusht": "[agent_pos, keypoint]",
}
# Per task: train-config keys that differ from the defaults, each with the A/B that justified it
# (a comment here and an entry in CHANGELOG.md). An empty recipe means the defaults were good enough.
RECIPES: dict[str, dict] = {
    # 5000 -> 20000 -> 50000 steps: 4% -> 60% -> 80% success (seed 0, 50 episodes; validation loss 0.017 -> 0.0068
    # at 20000, still falling); 3 seeds at 50000: 88 / 80 / 78% (mean 82.0%). Executing 8 / 4 / 2 actions per chunk
    # on the 50000-step checkpoints of seeds 1 and 2 (evaluation only, 50 episodes each): 80 / 84 / 88% and
    # 78 / 80 / 86% (mean 79 -> 82 -> 87%); 1: 86% / 94% (within noise of 2, at twice the predictions)
    "rs_square": {"policy": {"n_action_steps": 2}, "training": {"steps": 50000}},
    # 5000 -> 20000 steps: 88% -> 100% success (seed 0, 50 episodes)
    "rs_can": {"training": {"steps": 20000}},
    # with the block angle as (sin, cos), seed 0, 50 episodes: 5000 -> 20000 steps: score 0.229 -> 0.524; on the
    # 20000-step checkpoint, executing 2 actions per chunk instead of 8: success 18% -> 38%, score 0.524 -> 0.705
    # (the scripted expert pushes up to 30 px a step; 8 open-loop steps carry the T far)
    # with the T's corners as state (2 actions per chunk), seed 0: 20000 -> 50000 steps: score 0.902 -> 0.937,
    # final coverage 0.848 -> 0.897, success 66% -> 74%
    # from images (state runs ignore policy.image_encoder, dp.bench.quality.IMAGE_ONLY_KEYS), seed 0: the stock
    # encoder (76 px crop, 4 stages: a 3x3 map) -> 84 px crop, 3 stages (a 6x6 map): validation loss at 5000 /
    # 8000 steps 0.0756 / 0.0680 -> 0.0656 / 0.0557 (the state policy's: 0.066 / 0.0531); 20 episodes at 5000
    # steps: score 0.307 (stock at 18774: 0.106), at 13000: 30% success, coverage 0.524, at 22000: 50%, coverage
    # 0.791 (seed 1 at 20000: 50%, coverage 0.751);
    # scripts/pusht_pose_probe.py: pose RMSE 17.4 / 12.1 -> 5.7 / 5.1 px
    "pusht": {"policy": {"n_action_steps": 2, "image_encoder": {"stages": 3, "crop": 84}},
              "training": {"steps": 50000}},
}
# Per task: the scripted expert's options for the demonstrations dp-collect records (task.expert_options), with the
# A/B that justified each.
EXPERT_OPTIONS: dict[str, str] = {
    # DART: the expert's actions executed with Gaussian noise of std 0.2, its own actions stored (200 demos, 50000
    # steps, 50 episodes per seed, 1 / 2 actions per chunk): seed 0: 90 / 82% -> 94 / 86%; seed 1: 88 / 84% ->
    # 92 / 92% (CHANGELOG.md has seed 2 and the 3-seed means)
    "rs_square": "{action_noise: 0.2}",
}
# Per task: dp-eval's inference settings (dp.recipes.EVAL_KEYS) for its checkpoints, each with its A/B.
EVAL_RECIPES: dict[str, dict] = {
    # Executing 1 action per chunk instead of the 2 the recipe trains for, evaluation only, 50 episodes per
    # checkpoint: stock expert seeds 0 / 1 / 2: 82 / 84 / 84% -> 90 / 88 / 82%; trained for 8 (50000 steps)
    # seeds 1 / 2: 88 / 86% -> 86 / 94%; DART demonstrations seeds 0 / 1 / 2: 86 / 92 / 100% -> 94 / 92 / 96%
    # (better on 4 of the 8 checkpoints, tied on 1, worse on 3; mean 87.8% -> 90.3%). With the two_switches
    # expert plan (not adopted) it lost: 86 / 82% -> 86 / 78%.
    "rs_square": {"n_action_steps": 1},
}
# Demonstrations per task that a recipe assumes (dp-bench quality collects this many): the Diffusion
# Policy benchmarks use 200 (robomimic's proficient-human sets; PushT 206); Meta-World sets 50 per task.
DEMOS = {"mt10": 50, "mt50": 50}
DEFAULT_DEMOS = 200
OUT = Path(__file__).resolve().parent.parent / "dp" / "configs" / "task"


def render(name: str, env: str, instruction: str | None) -> str:
    opts, recipe = EXTRA_OPTIONS.get(name, {}), RECIPES.get(name, {})
    opt_lines = "env_options: {}" if not opts else "env_options:\n" + "\n".join(f"  {k}: {v}" for k, v in opts.items())
    about = f"# {instruction}" if instruction else f"# multi-task set: {len(envs.task_set(env))} tasks"
    return (
        f"# generated by scripts/gen_task_configs.py\n{about}\n"
        f"name: {name}\nenv: {env}\n{opt_lines}\n"
        "obs: state                  # state | image (image also needs a store collected with obs=image)\n"
        "obs_keys: null             # obs name -> store key(s), e.g. {state: [agent_pos, object]}; null: from obs\n"
        f"{'obs_angles: ' + str(OBS_ANGLES.get(name, 'null')):<27}# obs name -> dims in radians, seen as (sin, cos); "
        "e.g. {state: [4]}\n"
        f"{'state_keys: ' + STATE_KEYS.get(name, 'null'):<26} # obs=state: store keys concatenated into the state; "
        "null: the store's state\n"
        f"dataset_path: data/{name}.zarr\n"
        "allow_mismatch: false      # true: train even when the dataset records other task(s) than env\n"
        f"{'expert_options: ' + EXPERT_OPTIONS.get(name, 'null'):<26} # options of the scripted expert dp-collect "
        "runs: rs_square's {plan: two_switches}; any task's {action_noise: 0.2} (DART)\n"
        f"{'demos: ' + str(DEMOS.get(name, DEFAULT_DEMOS)):<27}# demonstrations (per task of a set) the recipe assumes\n"
        + _render_recipe(recipe)
        + _render_eval_recipe(EVAL_RECIPES.get(name, {}))
    )


def _render_recipe(recipe: dict) -> str:
    head = "recipe:                    # tuned train settings; the command line wins (dp/recipes.py)"
    if not recipe:
        return head.replace("recipe:     ", "recipe: null") + "\n"
    def block(tree: dict, indent: str) -> list[str]:
        return [line for k, v in tree.items() for line in
                ([f"{indent}{k}:", *block(v, indent + "  ")] if isinstance(v, dict) else [f"{indent}{k}: {v}"])]

    return "\n".join([head, *block(recipe, "  ")]) + "\n"


def _render_eval_recipe(recipe: dict) -> str:
    head = "eval_recipe:               # inference settings dp-eval uses; its command line wins (dp/recipes.py)"
    if not recipe:
        return head.replace("eval_recipe:     ", "eval_recipe: null") + "\n"
    return "\n".join([head] + [f"  {k}: {v}" for k, v in recipe.items()]) + "\n"


def write(name: str, text: str) -> None:
    """Write a task config unless a hand-written one (not starting with the generated header) is there."""
    path = OUT / f"{name}.yaml"
    if path.exists() and not path.read_text().startswith("# generated by"):
        print(f"kept hand-written {path.name}")
        return
    path.write_text(text)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in envs.task_names():
        write(name, render(name, name, envs.task_info(name)["instruction"]))
    for name in envs.task_sets():
        write(name, render(name, name, None))
    print(f"wrote {len(list(OUT.glob('*.yaml')))} task configs to {OUT}")


if __name__ == "__main__":
    main()
