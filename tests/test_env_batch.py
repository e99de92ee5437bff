"""dp-eval's environments in this process or each in its own subprocess: the same episodes either way."""
import numpy as np
import pytest
import torch

from dp import envs
from dp.eval.rollout import eval_seeds, run_episodes


class ExpertRows:
    """The toy task's scripted expert for each batch row, behind the interface run_episodes drives (a
    deterministic actor: each row's expert is seeded by its episode order)."""

    needs_prediction = False

    def __init__(self):
        self.experts = []

    def eval(self):
        return self

    def reset(self):
        self.experts = []

    def select_action(self, obs):
        n = len(obs["instruction"])
        if not self.experts:
            self.experts = [envs.expert("toy") for _ in range(n)]
            for i, e in enumerate(self.experts):
                e.reset(seed=i)
        return torch.as_tensor(np.stack([e.act({"state": obs["state"][i]}) for i, e in enumerate(self.experts)]))


@pytest.mark.parametrize("n_envs", [1, 3])
def test_subprocess_envs_give_the_episodes_in_process_envs_give(n_envs):
    seeds = eval_seeds(5)
    sync = run_episodes(ExpertRows(), "toy", seeds, {}, n_envs=n_envs, progress=False, vector="sync")
    sub = run_episodes(ExpertRows(), "toy", seeds, {}, n_envs=n_envs, progress=False, vector="async")
    assert sub["vector"] == "async"
    key = lambda e: (e["seed"], e["success"], e["length"])  # noqa: E731
    assert [key(e) for e in sub["episodes"]] == [key(e) for e in sync["episodes"]]
    assert all(e["success"] for e in sync["episodes"])  # episodes end on success: the final info is read
    assert max(e["length"] for e in sync["episodes"]) < envs.make("toy").unwrapped.max_episode_steps


def test_a_bad_vector_mode_is_refused():
    from dp.eval.env_batch import EnvBatch

    with pytest.raises(ValueError, match=r"vector must be one of \['sync', 'async'\]"):
        EnvBatch("toy", {}, 2, vector="threads")
