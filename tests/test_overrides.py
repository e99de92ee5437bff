"""A task's option mappings set on the command line replace the task config's, in every hydra entry point."""
import subprocess
import sys

import pytest
import yaml
from hydra.errors import ConfigCompositionException

from dp.bench import quality
from dp.overrides import replace_mappings

PLAN = "task.expert_options={plan: two_switches}"


def _job_config(module: str, *overrides: str) -> dict:
    """The config a dp command line composes (hydra's ``--cfg job``: printed, nothing run)."""
    out = subprocess.run([sys.executable, "-m", module, *overrides, "--cfg", "job"], capture_output=True, text=True,
                         check=True)
    return yaml.safe_load(out.stdout)


def test_a_mapping_on_the_command_line_replaces_the_task_configs():
    """rs_square collects DART demos by default ({action_noise: 0.2}); {plan: ...} means those options alone."""
    for module in ("dp.train.cli", "dp.collect"):
        assert _job_config(module, "task=rs_square", PLAN)["task"]["expert_options"] == {"plan": "two_switches"}
    assert _job_config("dp.train.cli", "task=rs_square")["task"]["expert_options"] == {"action_noise": 0.2}
    dotted = _job_config("dp.collect", "task=rs_square", "task.expert_options.action_noise=0.1")
    assert dotted["task"]["expert_options"] == {"action_noise": 0.1}  # one entry changed, the mapping kept
    assert _job_config("dp.collect", "task=pusht", "task.env_options={image_size: 64}")["task"]["env_options"] == \
        {"image_size": 64}


def test_hydra_alone_merges_and_fails_so_dp_bench_names_the_replacement():
    with pytest.raises(ConfigCompositionException, match="Could not override 'task.expert_options'"):
        from hydra import compose, initialize_config_dir

        from dp.constants import CONFIG_DIR
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            compose("train", overrides=["task=rs_square", PLAN])
    assert quality._train_cfg("rs_square", [PLAN]).task.expert_options == {"plan": "two_switches"}
    assert "task.expert_options={plan: two_switches}" in quality.settings_of("rs_square", [PLAN])


def test_only_whole_mappings_of_task_options_are_rewritten():
    assert replace_mappings(["task=x", PLAN, "task.expert_options.plan=a", "+task.obs_keys={state: s}",
                             "policy.image_encoder={crop: 84}", "task.expert_options=null"]) == \
        ["task=x", "task.expert_options=null", PLAN, "task.expert_options.plan=a", "+task.obs_keys={state: s}",
         "policy.image_encoder={crop: 84}", "task.expert_options=null"]
