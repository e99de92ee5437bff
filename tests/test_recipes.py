"""A task's recipe: applied by dp-train over the defaults, the command line wins, bad keys are refused."""
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dp.constants import CONFIG_DIR
from dp.errors import ConfigError
from dp.recipes import EVAL_KEYS, apply_recipe, eval_recipe, flatten, given_keys, pending
from train_helpers import toy_dataset, train_cli_args


def train_cfg(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("train", overrides=["task=toy", *overrides])


RECIPE = "task.recipe={training: {steps: 7, lr: 0.001}, policy: {n_action_steps: 4}}"


def test_recipe_sets_its_keys_unless_the_command_line_does():
    cfg = train_cfg(RECIPE)
    assert apply_recipe(cfg, [RECIPE]) == {"training.steps": 7, "training.lr": 0.001, "policy.n_action_steps": 4}
    assert cfg.training.steps == 7 and cfg.policy.n_action_steps == 4
    # a key on the command line wins, and so does a parent key; a group choice keeps the recipe
    overrides = [RECIPE, "training.steps=3", "policy=mlp_bc"]
    cfg = train_cfg(*overrides)
    applied = apply_recipe(cfg, overrides)
    assert cfg.training.steps == 3 and "training.steps" not in applied and applied["policy.n_action_steps"] == 4
    assert cfg.policy.name == "mlp_bc"
    overrides = [RECIPE, "training={steps: 5}"]
    assert "training.lr" not in apply_recipe(train_cfg(*overrides), overrides)


def test_a_key_the_command_line_sets_or_deletes_is_left_out_of_the_recipe():
    overrides = ["+policy.extra=1", "~training.lr", "training.steps=3", "policy=mlp_bc"]
    assert given_keys(overrides) == {"policy.extra", "training.lr", "training.steps"}
    recipe = {"training": {"steps": 7, "lr": 0.001, "batch_size": 8}, "policy": {"extra": 2}}
    assert pending(recipe, overrides) == {"training.batch_size": 8}


def test_a_recipe_key_the_config_lacks_is_refused_with_the_fix():
    bad = "task.recipe={training: {stepz: 7}}"
    with pytest.raises(ConfigError, match="recipe sets 'training.stepz'.*gen_task_configs"):
        apply_recipe(train_cfg(bad), [bad])
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}


def test_a_policy_key_the_chosen_policy_lacks_is_left_out(capsys):
    """pusht's recipe tunes the dit image encoder: policy=pad (no image_encoder) trains with the rest of it;
    a policy key that not even the baseline dit policy has is still refused."""
    cfg = train_cfg("task=pusht", "policy=pad")
    applied = apply_recipe(cfg, [])
    assert "policy.image_encoder.crop" not in applied and applied["policy.n_action_steps"] == 2
    assert "image_encoder" not in cfg.policy and "left out policy.image_encoder" in capsys.readouterr().err
    bad = "task.recipe={policy: {n_action_stepz: 2}}"
    with pytest.raises(ConfigError, match="recipe sets 'policy.n_action_stepz'"):
        apply_recipe(train_cfg(bad, "policy=pad"), [bad])


def test_every_shipped_recipe_applies_to_the_default_train_config():
    from dp import envs

    for name in [*envs.task_names(), *envs.task_sets()]:
        cfg = train_cfg(f"task={name}")
        recipe = cfg.task.recipe
        applied = apply_recipe(cfg, [])  # raises on a key the config lacks, or an eval_recipe key dp-eval lacks
        assert set(applied) == set(flatten(OmegaConf.to_container(recipe))) if recipe else not applied
        assert cfg.task.demos >= 1
        assert set(eval_recipe(cfg.task)) <= set(EVAL_KEYS)


def test_an_eval_recipe_holds_inference_settings_only_and_dp_train_checks_it_first():
    assert eval_recipe(train_cfg().task) == {}  # toy has none
    good = "task.eval_recipe={n_action_steps: 1, sampler: {name: ddim, steps: 4}}"
    assert eval_recipe(train_cfg(good).task) == {"n_action_steps": 1, "sampler": {"name": "ddim", "steps": 4}}
    assert eval_recipe({"name": "x", "eval_recipe": {"initial_noise": "episode"}}) == {"initial_noise": "episode"}
    for bad, message in (("task.eval_recipe={horizon: 4}", r"eval_recipe sets \['horizon'\], which are not inference"),
                         ("task.eval_recipe=[1]", "eval_recipe must be a mapping of dp-eval keys")):
        with pytest.raises(ConfigError, match=message):
            apply_recipe(train_cfg(bad), [bad])  # before any training


def test_dp_train_prints_and_records_the_recipe(tmp_path):
    out = tmp_path / "run"
    args = train_cli_args(toy_dataset(tmp_path, n_episodes=4), out, "policy=mlp_bc", "training.warmup_steps=2",
                          "task.recipe={training: {steps: 3, warmup_steps: 1}}")
    proc = subprocess.run([sys.executable, "-m", "dp.train.cli", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "recipe: training.steps=3" in proc.stderr and "warmup_steps" not in proc.stderr
    saved = (out / "checkpoints" / "latest" / "config.yaml").read_text()
    assert "steps: 3" in saved and "warmup_steps: 2" in saved
