"""policy=rdt: one policy over a mixture of robots in the unified space."""
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from dp.collect import collect
from dp.constants import CONFIG_DIR
from dp.core.layers import CrossAttention
from dp.data.unified import embodiment
from dp.errors import ConfigError
from dp.policies import Policy
from dp.train.trainer import Trainer

TINY = ["policy=rdt", "policy.dim=32", "policy.depth=2", "policy.heads=2", "policy.horizon=8",
        "policy.n_action_steps=4"]


@pytest.fixture
def stores(mixture_stores):
    return mixture_stores


def mixture_cfg(stores, out, *overrides):
    datasets = (f"[{{path: {stores['rs_lift']}, embodiment: ur5e, weight: 1.0}},"
                f"{{path: {stores['rs_two_arm_lift']}, embodiment: two_arm_panda, weight: 1.0}},"
                f"{{path: {stores['mw_reach']}, embodiment: metaworld, weight: 2.0}}]")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("train", overrides=[
            "task=rs_lift", f"+task.datasets={datasets}", f"output_dir={out}", "logging.mode=disabled",
            "progress=false", "training.batch_size=16", "training.warmup_steps=5", "training.val_every=0",
            "training.log_every=1", "training.lr=2e-3", *overrides])


def test_tiny_rdt_trains_on_three_robots_and_drives_each(stores, tmp_path):
    trainer = Trainer(mixture_cfg(stores, tmp_path / "run", *TINY, "training.steps=30"))
    trainer.run()
    losses = trainer.history["loss"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    policy = Policy.from_checkpoint(tmp_path / "run")
    assert policy.embodiments == ["ur5e", "two_arm_panda", "metaworld"]
    batch = trainer.dataset.get_batch(np.arange(0, len(trainer.dataset), 7)[:12])
    obs = {**batch["obs"], **{k: batch[k] for k in ("state_mask", "action_mask", "object_mask", "embodiment",
                                                     "control_hz", "task_id")}}
    chunk = policy.predict_action(obs)
    assert chunk.shape == (12, 8, 128) and torch.isfinite(chunk).all()
    mask = torch.as_tensor(batch["action_mask"])
    assert not chunk[~mask[:, None].expand_as(chunk)].any()  # nothing outside a robot's slots
    for row in range(12):  # each row comes back as its own robot's env action
        emb = embodiment(policy.embodiments[int(batch["embodiment"][row])])
        assert emb.action_from_unified(chunk[row].numpy()).shape == (8, emb.action_dim)


def test_one_evaluation_reports_every_robot_of_the_mixture(stores, tmp_path):
    from dp.eval.evaluate import evaluate_checkpoint

    Trainer(mixture_cfg(stores, tmp_path / "run", *TINY, "training.steps=2")).run()
    summary = evaluate_checkpoint(str(tmp_path / "run"), n_episodes=2, n_envs=2, n_videos=0, max_steps=12,
                                  progress=False)
    assert sorted(summary["per_task"]) == ["mw_reach[metaworld]", "rs_lift[ur5e]", "rs_two_arm_lift[two_arm_panda]"]
    assert all(v["episodes"] == 2 and v["nonfinite_episodes"] == 0 for v in summary["per_task"].values())
    # the two arms were driven: 12 steps each, as the env's 14-d action space takes them
    assert all(e["length"] == 12 for e in summary["per_task"]["rs_two_arm_lift[two_arm_panda]"]["episode_results"])


def test_fine_tuning_starts_from_the_pretrained_weights_on_a_new_robot(stores, tmp_path):
    """Pretrained on a UR5e, fine-tuned on a Panda (an embodiment it never saw): every weight starts
    as pretrained; only the normalizer is the new robot's."""
    from dp.checkpoint import CheckpointError

    ur5e = f"[{{path: {stores['rs_lift']}, embodiment: ur5e}}]"
    panda = f"[{{path: {stores['rs_lift_panda']}, embodiment: panda}}]"

    def cfg(data, out, *extra):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            return compose("train", overrides=[
                "task=rs_lift", f"+task.datasets={data}", f"output_dir={out}", "logging.mode=disabled",
                "progress=false", "training.batch_size=8", "training.warmup_steps=2", "training.val_every=0",
                "training.val_ratio=0", *TINY, *extra])

    Trainer(cfg(ur5e, tmp_path / "pre", "training.steps=3")).run()
    pretrained = Policy.from_checkpoint(tmp_path / "pre").state_dict()
    tuned = Trainer(cfg(panda, tmp_path / "tune", "training.steps=3", f"training.init_from={tmp_path / 'pre'}"))
    for k, v in tuned.policy.state_dict().items():
        if not k.startswith("normalizer."):
            torch.testing.assert_close(v, pretrained[k], msg=k)
    assert tuned.policy.embodiments == ["panda"] and "action__panda" in tuned.policy.normalizer.keys()
    with pytest.raises(CheckpointError, match="does not fit the policy.*same policy config"):
        Trainer(cfg(panda, tmp_path / "wide", "training.steps=3", "policy.dim=48",
                    f"training.init_from={tmp_path / 'pre'}"))


def test_condition_keys_and_values_are_computed_once_per_prediction(stores, tmp_path):
    """DPM-Solver++ 5 steps calls the network 5 times; the language and observation K/V
    projections run once per layer per prediction, not once per step."""
    trainer = Trainer(mixture_cfg(stores, tmp_path / "run", *TINY, "training.steps=1"))
    policy = trainer.policy.eval()
    batch = trainer.dataset.get_batch(np.arange(4))
    obs = {**batch["obs"], **{k: batch[k] for k in ("state_mask", "action_mask", "object_mask", "embodiment",
                                                     "control_hz", "task_id")}}
    kv_calls, network_calls = [], []
    hooks = [m.kv.register_forward_hook(lambda *a: kv_calls.append(1))
             for m in policy.dit.modules() if isinstance(m, CrossAttention)]
    hooks.append(policy.codec.head.register_forward_hook(lambda *a: network_calls.append(1)))
    policy.predict_action(obs)
    for h in hooks:
        h.remove()
    assert len(network_calls) == 5
    assert len(kv_calls) == policy.dit.depth  # one K/V projection per cross-attention layer


def test_loss_counts_valid_slots_only(stores, tmp_path):
    trainer = Trainer(mixture_cfg(stores, tmp_path / "run", *TINY, "training.steps=1", "policy.dropout.language=0",
                                  "policy.dropout.observation=0", "policy.dropout.state=0"))
    policy = trainer.policy
    batch = {k: (torch.as_tensor(v) if not isinstance(v, dict) else {n: torch.as_tensor(a) for n, a in v.items()})
             for k, v in trainer.dataset.get_batch(np.arange(16)).items()}
    real = policy.network

    def perfect_on_valid_slots(x_t, level, cache):  # exact x0 where valid, garbage elsewhere
        x0 = policy._per_embodiment("action", batch["action"].float(), batch["embodiment"])
        return torch.where(cache.action_valid[:, None].expand_as(x0), x0, torch.full_like(x0, 7.0))

    policy.network = perfect_on_valid_slots
    assert policy.compute_loss(batch)["loss"].item() == 0.0
    policy.network = real
    assert policy.compute_loss(batch)["loss"].item() > 0.0


def test_rdt_refuses_a_plain_dataset_odd_depth_and_no_language():
    from dp.policies.rdt import RDTPolicy

    meta = {"action": [128], "obs": {"state": [128], "object": [10]}, "embodiments": ["panda"],
            "instructions": ["lift the red cube"]}
    with pytest.raises(ConfigError, match="dataset mixture in the unified space"):
        RDTPolicy({"action": [7], "obs": {"state": [19]}}, language={"encoder": "builtin"})
    with pytest.raises(ConfigError, match="depth must be even"):
        RDTPolicy(meta, depth=3, language={"encoder": "builtin"})
    with pytest.raises(ConfigError, match="needs language"):
        RDTPolicy(meta)


def test_the_benchmark_per_step_projection_computes_the_same_chunk():
    """dp-bench rdt times the cached K/V against projecting them at every step: both must compute
    the same actions, and the per-step side must really project again at each of the 5 calls."""
    from dp.bench.rdt import PerStepConditionKV, _obs, _policy

    policy = _policy()
    obs = _obs(policy)
    policy.generator = torch.Generator().manual_seed(0)
    cached = policy.predict_action(obs)
    kv_calls = []
    hooks = [m.kv.register_forward_hook(lambda *a: kv_calls.append(1))
             for m in policy.dit.modules() if isinstance(m, CrossAttention)]
    policy.generator = torch.Generator().manual_seed(0)
    with PerStepConditionKV(policy):
        per_step = policy.predict_action(obs)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(per_step, cached)
    assert len(kv_calls) == policy.dit.depth * (1 + 5)
    assert "forward" not in vars(policy.dit)  # the context restored the DiT


def test_two_cameras_are_two_token_groups_from_store_to_rollout(tmp_path):
    """agentview and the wrist camera, each its own ImageTokens, read from the store in training
    and from the env's image keys in a rollout."""
    from dp.eval.evaluate import evaluate_checkpoint

    store = tmp_path / "lift_2cam.zarr"
    collect({"task": {"name": "rs_lift", "env": "rs_lift", "env_options": {"extra_cameras": ["robot0_eye_in_hand"]}},
             "n_episodes": 2, "obs": "image", "image_size": 32, "output": str(store), "seed": 0,
             "keep_failed": False, "max_attempts_factor": 2, "overwrite": False, "progress": False})
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("train", overrides=[
            "task=rs_lift", f"+task.datasets=[{{path: {store}, embodiment: panda}}]",
            "+task.cameras={agentview: img, wrist: robot0_eye_in_hand_image}", f"output_dir={tmp_path / 'run'}",
            "logging.mode=disabled", "progress=false", "training.batch_size=4", "training.warmup_steps=1",
            "training.val_every=0", "training.val_ratio=0", "training.steps=2", *TINY,
            "policy.image_encoder={crop: 28, width: 8, stages: 2}"])
    trainer = Trainer(cfg)
    assert sorted(trainer.policy.obs_encoder.images) == ["agentview", "wrist"]
    trainer.run()
    summary = evaluate_checkpoint(str(tmp_path / "run"), n_episodes=1, n_envs=1, n_videos=0, max_steps=6,
                                  progress=False)
    assert summary["per_task"]["rs_lift[panda]"]["episode_results"][0]["length"] == 6
