import numpy as np
import pytest
import torch

from dp.data import Normalizer
from dp.policies import DiTPolicy, MLPBCPolicy, Policy
from dp.train.trainer import Trainer
from train_helpers import TINY_DIT, toy_dataset, train_cfg

META = {"action": [2], "obs": {"state": [4]}}


def _fitted(policy):
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": rng.uniform(-3, 5, (200, 2)), "state": rng.normal(size=(200, 4))}))
    return policy.eval()


def test_condition_is_encoded_once_per_prediction(monkeypatch):
    policy = _fitted(DiTPolicy(META, dim=32, depth=2, heads=2, sampler={"name": "ddim", "steps": 7}))
    calls = {"encode": 0, "obs": 0, "dit": 0}
    enc, obs_fwd, dit_fwd = policy.dit.encode_condition, policy.obs_encoder.forward, policy.dit.forward
    monkeypatch.setattr(policy.dit, "encode_condition", lambda *a, **k: calls.__setitem__("encode", calls["encode"] + 1) or enc(*a, **k))
    monkeypatch.setattr(policy.obs_encoder, "forward", lambda *a, **k: calls.__setitem__("obs", calls["obs"] + 1) or obs_fwd(*a, **k))
    monkeypatch.setattr(policy.dit, "forward", lambda *a, **k: calls.__setitem__("dit", calls["dit"] + 1) or dit_fwd(*a, **k))
    policy.predict_action({"state": torch.zeros(3, 2, 4)})
    assert calls == {"encode": 1, "obs": 1, "dit": 7}


def test_select_action_pops_a_queue_of_executed_actions():
    policy = _fitted(DiTPolicy(META, dim=32, depth=2, heads=2, horizon=8, n_obs_steps=2, n_action_steps=3))
    policy.generator = torch.Generator().manual_seed(0)
    steps = [torch.full((1, 4), float(i)) for i in range(4)]  # one env step's state each
    first = [policy.select_action({"state": steps[i]}) for i in range(3)]
    # the chunk came from the first step's observation, repeated To=2 times (episode start)
    policy.generator = torch.Generator().manual_seed(0)
    chunk = policy.predict_action({"state": torch.stack([steps[0], steps[0]], 1)})
    torch.testing.assert_close(torch.stack(first, 1), chunk[:, 1:4])  # action[To-1 : To-1+Ta]
    # the 4th step predicts again, from the last two steps
    assert policy.needs_prediction
    policy.generator = torch.Generator().manual_seed(1)
    fourth = policy.select_action({"state": steps[3]})
    policy.generator = torch.Generator().manual_seed(1)
    torch.testing.assert_close(fourth, policy.predict_action({"state": torch.stack([steps[2], steps[3]], 1)})[:, 1])
    policy.reset()
    assert policy.needs_prediction and len(policy._history) == 0


def test_the_history_takes_env_images_channels_last_and_instructions():
    policy = DiTPolicy({"action": [2], "obs": {"agent_pos": [3], "image": [3, 16, 16]}}, dim=32, depth=1, heads=2,
                       horizon=8, n_obs_steps=2, n_action_steps=4, image_encoder={"crop": 16, "width": 8})
    history = policy.new_history()
    img = torch.randint(0, 255, (16, 16, 3), dtype=torch.uint8)
    history.push_one({"agent_pos": np.zeros(3, np.float32), "image": img.numpy(), "instruction": "push",
                      "extra": np.zeros(7)})
    batch = history.batch()
    assert batch["image"].shape == (1, 2, 3, 16, 16) and batch["agent_pos"].shape == (1, 2, 3)
    torch.testing.assert_close(batch["image"][0, 1], img.permute(2, 0, 1))
    assert batch["instruction"] == ["push"] and "extra" not in batch
    with pytest.raises(ValueError, match=r"lacks \['image'\]"):
        history.push_one({"agent_pos": np.zeros(3, np.float32)})


@pytest.mark.parametrize("cls", [DiTPolicy, MLPBCPolicy])
def test_predict_returns_env_units_and_rejects_wrong_shapes(cls):
    policy = _fitted(cls(META, **({"dim": 32, "depth": 1, "heads": 2} if cls is DiTPolicy else {"dim": 16})))
    a = policy.predict_action({"state": np.zeros((2, 2, 4), dtype=np.float32)})
    assert a.shape == (2, 16, 2)
    assert (a >= -3.2).all() and (a <= 5.2).all()  # unnormalized to the action range [-3, 5]
    with pytest.raises(ValueError, match="n_obs_steps=2"):
        policy.predict_action({"state": torch.zeros(2, 3, 4)})
    with pytest.raises(ValueError, match="expects last dim 4"):
        policy.predict_action({"state": torch.zeros(2, 2, 5)})


def test_image_policy_trains_and_predicts(tmp_path):
    data = toy_dataset(tmp_path, n_episodes=6, obs="image")
    cfg = train_cfg(data, tmp_path / "img", *TINY_DIT, "task.obs=image", "policy.image_encoder.crop=28",
                    "policy.image_encoder.width=8", "training.steps=4", "training.batch_size=8")
    Trainer(cfg).run()
    policy = Policy.from_checkpoint(tmp_path / "img")
    assert policy.obs_encoder.cameras == ["image"]
    assert sorted(policy.obs_encoder.keys) == ["agent_pos", "image"]  # not the full state: it holds the objects
    obs = {"agent_pos": torch.zeros(2, 2, 2), "image": torch.zeros(2, 2, 3, 32, 32, dtype=torch.uint8)}
    assert policy.predict_action(obs).shape == (2, 8, 2)
    stem = policy.obs_encoder.encoders["image"].stem[0].weight  # a loaded checkpoint keeps the fast layout
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()


def test_image_encoder_layouts_agree():
    """Channels-last and contiguous trunks compute the same features (to float rounding), so the layout
    is a speed choice only; gradients agree too."""
    from dp.encoders.image import ImageEncoder

    torch.manual_seed(0)
    fast = ImageEncoder(image_size=40, crop=32, dim=16, width=8).eval()
    plain = ImageEncoder(image_size=40, crop=32, dim=16, width=8).eval()
    plain.load_state_dict(fast.state_dict())
    plain.set_memory_format(torch.contiguous_format)
    assert plain.stem[0].weight.is_contiguous()
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    a, b = fast(images), plain(images)
    a.square().sum().backward()
    b.square().sum().backward()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.stem[0].weight.grad, plain.stem[0].weight.grad, rtol=1e-3, atol=1e-5)


def test_sampler_and_process_options_from_config(tmp_path):
    data = toy_dataset(tmp_path)
    for proc, sampler in ((["policy.process.schedule=flow", "policy.process.prediction=velocity"], "euler"),
                          (["policy.process.schedule=edm", "policy.process.prediction=edm", "~policy.process.clip_x0"], "heun")):
        cfg = train_cfg(data, tmp_path / sampler, *TINY_DIT, *proc, f"sampler={sampler}", "training.steps=3")
        Trainer(cfg).run()
        policy = Policy.from_checkpoint(tmp_path / sampler)
        assert policy.sampler.name == sampler and policy.process.schedule == proc[0].split("=")[1]
        assert torch.isfinite(policy.predict_action({"state": torch.zeros(1, 2, 4)})).all()


def test_action_patch_policy_trains_and_round_trips(tmp_path):
    data = toy_dataset(tmp_path)
    Trainer(train_cfg(data, tmp_path / "patch", *TINY_DIT, "policy.action_patch=4", "training.steps=3")).run()
    policy = Policy.from_checkpoint(tmp_path / "patch")
    assert policy.codec.tokenizer.pos.shape[1] == policy.horizon // 4
    assert policy.predict_action({"state": torch.zeros(3, 2, 4)}).shape == (3, policy.horizon, 2)


def test_initial_noise_is_drawn_once_per_episode():
    policy = _fitted(DiTPolicy(META, dim=32, depth=2, heads=2, initial_noise="episode"))
    torch.nn.init.normal_(policy.codec.head.proj.weight, std=0.1)
    obs = {"state": torch.randn(3, 2, 4)}
    policy.generator = torch.Generator().manual_seed(0)
    a, b = policy.predict_action(obs), policy.predict_action(obs)
    torch.testing.assert_close(a, b)  # same episode, same observation: same chunk
    policy.reset()
    c = policy.predict_action(obs)
    assert not torch.allclose(a, c)  # a new episode draws new noise
    assert not torch.allclose(c[0], c[1])  # rows (envs) get their own noise
    policy.set_initial_noise("call")
    assert policy.config["initial_noise"] == "call"
    assert not torch.allclose(policy.predict_action(obs), policy.predict_action(obs))
    policy.set_initial_noise("episode")  # an inference-time switch: fresh noise for the new setting
    torch.testing.assert_close(policy.predict_action(obs), policy.predict_action(obs))
    with pytest.raises(ValueError, match=r"initial_noise: expected one of \('call', 'episode'\), found 'fixed'"):
        DiTPolicy(META, initial_noise="fixed")
    with pytest.raises(ValueError, match="found 'fixed'"):
        policy.set_initial_noise("fixed")
