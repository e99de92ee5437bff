"""Token-sequence observation encoders (dp.encoders.tokens): shapes, masks, embeddings, crops."""
import pytest
import torch

from dp.encoders.language import make_language_encoder
from dp.encoders.tokens import ImageTokens, ObservationTokens, StateTokens, Tokens, WordTokens
from dp.errors import ConfigError
from text_helpers import tiny_local_text_model

D = 16
SMALL = {"width": 8, "stages": 2}  # 32px images -> 4x4 feature maps
INSTRUCTIONS = ["push the block", "open the top drawer now", "close it"]


def _images(b=2, t=2, v=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, v, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("views,per_image", [(1, 1), (1, 4), (2, 1), (2, 4)])
def test_image_tokens_shape(views, per_image):
    enc = ImageTokens([views, 3, 32, 32], D, n_obs_steps=2, tokens_per_image=per_image, crop=28, **SMALL)
    out = enc(_images(b=3, v=views))
    assert out.x.shape == (3, 2 * views * per_image, D) == (3, enc.n_tokens, D)
    assert out.mask.shape == (3, enc.n_tokens) and out.mask.all()


def test_image_tokens_single_camera_layouts():
    enc = ImageTokens([3, 32, 32], D, n_obs_steps=2, **SMALL).eval()
    img = _images(v=1)
    assert torch.equal(enc(img).x, enc(img[:, :, 0]).x)  # [B, To, 3, H, W] is V = 1
    assert enc(img[:, :, 0].float()).x.shape == (2, 8, D)  # float in [0, 255] too
    with pytest.raises(ConfigError, match="tokens_per_image must be a square"):
        ImageTokens([3, 32, 32], D, 2, tokens_per_image=3, **SMALL)
    with pytest.raises(ConfigError, match="needs a 4x4 feature map"):
        ImageTokens([3, 32, 32], D, 2, tokens_per_image=16, width=8, stages=3)  # 2x2 map
    with pytest.raises(ConfigError, match="image must be"):
        ImageTokens([2, 3, 32, 32], D, 2, **SMALL)(img[:, :, 0])


def test_camera_embedding_tells_identical_images_apart():
    enc = ImageTokens([2, 3, 32, 32], D, n_obs_steps=1, tokens_per_image=4, **SMALL).eval()
    img = _images(t=1, v=1).expand(-1, -1, 2, -1, -1, -1)  # the same picture in both slots
    x = enc(img).x.reshape(2, 2, 4, D)  # [B, V, P, D]
    assert not torch.allclose(x[:, 0], x[:, 1])
    with torch.no_grad():
        enc.camera_emb.zero_()
    x = enc(img).x.reshape(2, 2, 4, D)
    assert torch.allclose(x[:, 0], x[:, 1])


def test_image_tokens_eval_is_deterministic_train_crops_randomly():
    enc = ImageTokens([1, 3, 32, 32], D, n_obs_steps=2, crop=24, **SMALL).eval()
    img = _images(v=1)
    a = enc(img).x
    assert torch.equal(a, enc(img).x)
    frames = img[:, :, 0].flatten(0, 1)
    feat = enc.cnn.feature_map(frames)
    assert feat.shape[-2:] == (3, 3) == (enc.cnn.feature_shape()[1],) * 2  # 24px through 2 stages
    assert torch.equal(feat, enc.cnn.feature_map(frames[..., 4:28, 4:28]))  # eval takes the centre crop
    enc.train()
    torch.manual_seed(0)
    c = enc(img).x
    assert not torch.allclose(c, enc(img).x) and not torch.allclose(c, a)


def test_gradients_reach_the_cnn():
    enc = ImageTokens([2, 3, 32, 32], D, n_obs_steps=2, crop=28, **SMALL)
    enc(_images()).x.square().mean().backward()
    assert enc.cnn.stem[0].weight.grad is not None and enc.cnn.stem[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.parameters())  # no unused parameters (DDP-safe)


def test_state_tokens():
    enc = StateTokens({"state": [4], "goal": [2]}, D, n_obs_steps=3)
    obs = {"state": torch.randn(5, 3, 4), "goal": torch.randn(5, 3, 2)}
    out = enc(obs)
    assert out.x.shape == (5, 6, D) and out.mask.all()
    # step-major, keys sorted: token 1 is (step 0, "state"); changing state at step 2 moves only token 5
    obs2 = {**obs, "state": obs["state"].clone()}
    obs2["state"][:, 2] += 1
    changed = (enc(obs2).x - out.x).abs().sum((0, 2)) > 0
    assert changed.tolist() == [False, False, False, False, False, True]
    # a state constant over time gives different tokens per step: the step embedding
    still = {"state": torch.randn(5, 1, 4).expand(-1, 3, -1), "goal": torch.randn(5, 1, 2).expand(-1, 3, -1)}
    assert not torch.allclose(enc(still).x[:, 0], enc(still).x[:, 2])
    with torch.no_grad():
        enc.step_emb.zero_()
    assert torch.allclose(enc(still).x[:, 0], enc(still).x[:, 2])


def test_tokens_cat_and_pooled_masked_mean():
    x = torch.randn(2, 4, D)
    t = Tokens(x, torch.tensor([[True, True, False, False], [True, True, True, True]]))
    pooled = t.pooled()
    assert torch.allclose(pooled[0], x[0, :2].mean(0)) and torch.allclose(pooled[1], x[1].mean(0))
    both = Tokens.cat(t, Tokens.dense(torch.randn(2, 3, D)))
    assert both.x.shape == (2, 7, D) and both.mask.sum(1).tolist() == [5, 7]
    assert both.attn_mask().shape == (2, 1, 1, 7)


def _check_padding(enc: WordTokens, short: str, long: str, longer: str):
    enc.eval()
    with torch.no_grad():
        a = enc([short, long])
        b = enc([short, longer])
    n = int(a.mask[0].sum())
    assert a.mask[0, :n].all() and not a.mask[0, n:].any() and a.mask[1].all()  # short: False at its tail
    assert b.x.shape[1] > a.x.shape[1]
    assert torch.allclose(a.x[0, :n], b.x[0, :n], atol=1e-5)  # padding does not leak
    assert (a.x[0, n:] == 0).all()
    assert torch.allclose(a.pooled()[0], a.x[0, :n].mean(0), atol=1e-6)
    return a


def test_builtin_word_tokens_mask_padding():
    texts = ["push the block", "open the top drawer", "open the top drawer on the left side"]
    lang = make_language_encoder({"encoder": "builtin"}, texts, D)
    enc = WordTokens(lang, D)
    a = _check_padding(enc, *texts)
    assert a.x.shape == (2, 4, D) and a.mask.sum(1).tolist() == [3, 4]
    pooled_before = lang(texts[:2])  # the pooled forward is unchanged by the tokens method
    assert pooled_before.shape == (2, D)
    enc.train()
    enc(texts).x.sum().backward()
    assert lang.embed.weight.grad is not None


def test_pretrained_word_tokens_mask_padding(tmp_path):
    texts = ["push the block", "open the top drawer", "open the top drawer on the left side"]
    tiny_local_text_model(tmp_path / "text", texts)
    lang = make_language_encoder({"encoder": "pretrained", "path": str(tmp_path / "text")}, texts, D)
    assert lang.token_dim == 24
    enc = WordTokens(lang, D)
    a = _check_padding(enc, *texts)
    assert a.x.shape == (2, 4, D)
    fresh = WordTokens(make_language_encoder({"encoder": "pretrained", "path": str(tmp_path / "text")}, texts, D), D)
    fresh.proj.load_state_dict(enc.proj.state_dict())
    alone = fresh([texts[0]])  # encoded without any padding at all
    assert torch.allclose(alone.x[0], a.x[0, :3], atol=1e-5)
    enc.train()
    enc(texts).x.sum().backward()
    assert enc.proj.weight.grad is not None  # the projection trains; the text model stays frozen
    assert lang(texts).shape == (3, D)  # the pooled forward still works


def test_observation_tokens_groups():
    shape_meta = {"action": [2], "obs": {"state": [4], "front": [3, 32, 32], "cams": [2, 3, 32, 32]},
                  "instructions": INSTRUCTIONS}
    enc = ObservationTokens(shape_meta, D, n_obs_steps=2, image_encoder={"tokens_per_image": 4, **SMALL},
                            language={"encoder": "builtin"})
    obs = {"state": torch.randn(3, 2, 4), "front": _images(b=3, v=1)[:, :, 0], "cams": _images(b=3, v=2),
           "instruction": INSTRUCTIONS}
    groups = enc(obs)
    assert list(groups) == ["state", "image", "language"]
    assert groups["state"].x.shape == (3, 2, D)
    assert groups["image"].x.shape == (3, 2 * 2 * 4 + 2 * 1 * 4, D)  # "cams" then "front"
    assert groups["language"].x.shape == (3, 5, D) and groups["language"].mask.sum(1).tolist() == [3, 5, 2]
    prefix = Tokens.cat(*groups.values())
    assert prefix.x.shape == (3, 2 + 24 + 5, D) and prefix.mask.sum(1).tolist() == [29, 31, 28]
    assert enc.keys == ["state", "cams", "front"]
    state_only = ObservationTokens({"action": [2], "obs": {"state": [4]}}, D, 2)
    assert list(state_only({"state": torch.randn(1, 2, 4)})) == ["state"]
    with pytest.raises(ConfigError, match="obs keys must be"):
        ObservationTokens({"action": [2], "obs": {"depth": [1, 32, 32]}}, D, 2)
    with pytest.raises(KeyError, match="instruction"):
        enc({k: v for k, v in obs.items() if k != "instruction"})
