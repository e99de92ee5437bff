"""Conventions every task family shares (see envs/__init__.py)."""
import numpy as np
import pytest

import envs


@pytest.mark.parametrize("name, proprio", [("toy", 2), ("mw_push", 4), ("pusht", 2), ("rs_lift", 9),
                                           ("rs_two_arm_lift", 18)])
def test_agent_pos_is_the_proprioceptive_head_of_state(name, proprio):
    env = envs.make(name)
    obs, _ = env.reset(seed=3)
    assert env.unwrapped.proprio_dims == proprio
    for _ in range(2):
        assert obs["agent_pos"].dtype == np.float32 and obs["agent_pos"].shape == (proprio,)
        np.testing.assert_array_equal(obs["agent_pos"], obs["state"][:proprio])
        assert env.observation_space.contains(obs)
        obs = env.step(env.action_space.sample())[0]
    env.close()
