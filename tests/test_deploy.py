"""Planned predictions (no host reads), torch.export of them, and dp-export artifacts.

A planned prediction must equal the eager one exactly (same arithmetic, decided earlier);
the artifact must equal it within ``EXPORT_TOLERANCE`` and load without dp's training code.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dp.data import Normalizer
from dp.deploy import PlannedPrediction
from dp.deploy.export import EXPORT_TOLERANCE, example_inputs, export_policy
from dp.errors import ConfigError
from dp.policies import DiTPolicy
from dp.runtime.artifact import META, PACKAGE, ExportedPolicy

SHAPE_META = {"action": [2], "obs": {"state": [4]}}


def tiny(**kw) -> DiTPolicy:
    torch.manual_seed(0)
    policy = DiTPolicy(SHAPE_META, **{"horizon": 8, "n_action_steps": 4, "dim": 32, "depth": 2, "heads": 2, **kw})
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": rng.normal(size=(200, 2)), "state": rng.normal(size=(200, 4))}))
    with torch.no_grad():  # adaLN and the final layer start at zero: give every path a non-trivial weight
        for p in policy.dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy.eval()


MOE = {"ffn": "moe", "level_cond": "add", "level_token": True, "norm": "rms",
       "moe": {"num_experts": 4, "top_k": 2}}
CASES = [
    ("dit", {}, ("ddim", 10)),
    ("dit", {}, ("dpm_solver_pp", 5)),
    ("dit", {}, ("ddpm", 6)),
    ("dit edm", {"process": {"schedule": "edm", "prediction": "edm"}}, ("heun", 4)),
    ("mode", MOE, ("ddim", 5)),
    ("switch", {"switch": {"num_experts": 3, "top_k": 2}}, ("ddim", 5)),
    ("meanflow", {"process": {"name": "meanflow"}, "sampler": {"name": "meanflow", "steps": 1}}, ("meanflow", 2)),
]


@pytest.mark.parametrize("label, options, sampler", CASES, ids=[c[0] + "-" + c[2][0] for c in CASES])
def test_planned_prediction_equals_the_eager_one(label, options, sampler):
    policy = tiny(**options)
    policy.set_sampler(*sampler)
    planned = PlannedPrediction(policy, batch=3)
    state = torch.randn(3, policy.n_obs_steps, 4)
    with torch.inference_mode():
        # eager: the grid read as the sampler runs (predict_action plans by default; switch that off)
        policy.generator = torch.Generator().manual_seed(1)
        noise = policy.prior_sample(3)
        policy.planning = False
        eager = policy.sample_target(policy.normalize_obs({"state": state}), noise=noise)
        policy.planning = True
        policy.generator = torch.Generator().manual_seed(1)
        noise_again = policy.prior_sample(3)
        got = planned(state, noise_again)
    assert torch.equal(noise, noise_again)
    want = policy.normalizer.unnormalize("action", policy.codec.output(eager))
    assert got.shape == (3, 8, 2)
    assert torch.equal(got, want), f"{label}: planned differs from eager by {(got - want).abs().max():.3g}"


@pytest.mark.parametrize("options", [{}, MOE], ids=["dit", "mode"])
def test_a_planned_prediction_traces_without_host_reads(options):
    """torch.export fails on any tensor read on the host (a data-dependent branch): tracing is the proof."""
    policy = tiny(**options)
    policy.set_sampler("ddim", 4)
    planned = PlannedPrediction(policy, batch=1)
    inputs = example_inputs(planned, torch.Generator().manual_seed(0))
    program = torch.export.export(planned, tuple(inputs))
    with torch.inference_mode():
        assert torch.equal(program.module()(*inputs), planned(*inputs))


@pytest.mark.parametrize("options", [{}, {"action_patch": 2}], ids=["patch1", "patch2"])
def test_planned_streaming_calls_equal_the_eager_ones(options):
    """An episode's first call (warm-up, then its passes) and a later one (shift, passes), buffer as tensors."""
    policy = tiny(n_obs_steps=1, streaming={"train_fraction": 0.8}, **options)
    policy.set_sampler("streaming", 4)  # 2 chunks of 4 actions: 2 passes per call
    first, later = PlannedPrediction(policy, 2, first=True), PlannedPrediction(policy, 2, first=False)
    states = [torch.randn(2, 1, 4) for _ in range(3)]
    noises = [policy.prior_sample(2) for _ in range(3)]
    with torch.inference_mode():
        policy.reset()
        eager = [policy.normalizer.unnormalize("action", policy.codec.output(
            policy.sample_target(policy.normalize_obs({"state": s}), noise=n))) for s, n in zip(states, noises)]
        got, buffer = first(states[0], noises[0])
        planned = [got]
        for s, n in zip(states[1:], noises[1:]):
            got, buffer = later(s, buffer, n)
            planned.append(got)
        assert policy.sampler.buffer is not None  # the eager calls' state, untouched by the planned ones
    for e, p in zip(eager, planned):
        assert torch.equal(e, p), f"planned streaming differs by {(e - p).abs().max():.3g}"
    program = torch.export.export(later, (states[0], buffer, noises[0]))  # no host reads in a later call
    with torch.inference_mode():
        assert torch.equal(program.module()(states[1], buffer, noises[1])[0], later(states[1], buffer, noises[1])[0])
    policy.reset()  # a later call's plan on an empty buffer would index the wrong calls' terms
    with pytest.raises(ValueError, match="buffer is empty"), torch.inference_mode():
        policy.sample_target(policy.normalize_obs({"state": states[0]}), plan=later.plan, noise=noises[0])


def test_samplers_without_a_fixed_plan_are_refused_clearly():
    policy = tiny(n_obs_steps=1, streaming={"train_fraction": 0.8})
    policy.set_sampler("streaming", 2)
    with pytest.raises(ConfigError, match="first=True or first=False"):
        policy.plan_prediction(1)
    from dp.policies.ddvla import DDVLAPolicy

    masked = DDVLAPolicy(SHAPE_META, horizon=4, n_action_steps=2, dim=32, depth=1, heads=2, bins=8)
    with pytest.raises(ConfigError, match="no fixed plan"):  # its decoding order depends on the confidences
        PlannedPrediction(masked)
    language = DiTPolicy({**SHAPE_META, "instructions": ["push the block"]}, horizon=8, n_action_steps=4, dim=32,
                         depth=1, heads=2, language={"encoder": "builtin", "layers": 1})
    with pytest.raises(ConfigError, match="instruction"):
        PlannedPrediction(language)


def truncated_policy(fallback_score: float, **kw) -> DiTPolicy:
    policy = tiny(process={"prediction": "x0"}, anchors={"count": 4}, **kw)
    with torch.no_grad():
        policy.plugins["anchors"].anchors.copy_(torch.randn(4, 8, 2))
    policy.set_sampler("truncated", 2, fallback_score=fallback_score, fallback_steps=3)
    return policy


def test_planned_truncated_sampling_equals_the_eager_anchored_path():
    """The anchored path planned (noise for every anchor of every row as input), traced without host reads."""
    policy = truncated_policy(fallback_score=0.0)  # no row falls back
    planned = PlannedPrediction(policy, batch=3)
    assert planned.noise_shape == (12, 8, 2)
    state, noise = torch.randn(3, policy.n_obs_steps, 4), torch.randn(12, 8, 2)
    with torch.inference_mode():
        eager = policy.sample_target(policy.normalize_obs({"state": state}), noise=noise)
        got, score = planned(state, noise)
    assert torch.equal(got, policy.normalizer.unnormalize("action", eager))
    assert score.shape == (3,) and bool(((score > 0) & (score < 1)).all())
    program = torch.export.export(planned, (state, noise))
    with torch.inference_mode():
        assert torch.equal(program.module()(state, noise)[0], got)
    with pytest.raises(ValueError, match="every anchor of every row"):
        policy.sample_target(policy.normalize_obs({"state": state}), noise=torch.randn(3, 8, 2))


def test_graphed_truncated_sampling_falls_back_for_rows_outside_the_anchors():
    from dp.deploy.graphed import GraphedPrediction

    policy = truncated_policy(fallback_score=1.0)  # every row scores below 1: every row is sampled in full
    state, noise = torch.randn(2, policy.n_obs_steps, 4), torch.randn(8, 8, 2)
    with torch.inference_mode():
        policy.generator = torch.Generator().manual_seed(3)
        want = policy.normalizer.unnormalize("action", policy.sample_target(policy.normalize_obs({"state": state}),
                                                                            noise=noise))
        policy.generator = torch.Generator().manual_seed(3)
        full = policy.prior_sample(2)
    graphed = GraphedPrediction(policy, batch=2)
    got = graphed(state, noise, fallback_noise=full)
    assert graphed.fallbacks == 2 and (got - want).abs().max() <= 1e-5
    policy.sampler.fallback_score = 0.0
    with torch.inference_mode():
        anchored = PlannedPrediction(policy, batch=2)(state, noise)[0]
    assert torch.equal(graphed(state, noise), anchored) and graphed.fallbacks == 2


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """One compiled artifact (AOTInductor takes about a minute on two cores) shared by the tests below."""
    policy = tiny(depth=1)
    policy.set_sampler("ddim", 4)
    out = tmp_path_factory.mktemp("export") / "artifact"
    meta = export_policy(policy, out, info={"tasks": ["toy"], "env_options": {}, "collection_seeds_max": -1},
                         progress=lambda *_: None)
    return policy, out, meta


def test_the_artifact_equals_the_eager_policy(artifact):
    policy, out, meta = artifact
    assert meta["max_abs_error"] <= EXPORT_TOLERANCE
    exported = ExportedPolicy(out, seed=3)
    state = torch.randn(1, policy.n_obs_steps, 4)
    exported.generator.manual_seed(3)
    noise = meta["noise"]["scale"] * torch.randn(meta["noise"]["shape"], generator=torch.Generator().manual_seed(3))
    got = exported.predict_action({"state": state})
    with torch.inference_mode():
        want = PlannedPrediction(policy)(state, noise)
    assert (got - want).abs().max() <= EXPORT_TOLERANCE
    assert exported.executed_actions(got).shape == (1, policy.n_action_steps, 2)
    history = exported.new_history()
    history.push_one({"state": np.zeros(4, np.float32)})
    assert exported.predict_action(history.batch()).shape == (1, 8, 2)


def test_the_artifact_loads_without_training_code(artifact):
    _, out, _ = artifact
    code = (f"import sys, torch; from dp.runtime.artifact import ExportedPolicy; p = ExportedPolicy({str(out)!r}); "
            "h = p.new_history(); h.push_one({'state': [0.0] * 4}); a = p.predict_action(h.batch()); "
            "bad = sorted(m for m in sys.modules if m.startswith(('dp.policies', 'dp.core', 'dp.diffusion', "
            "'dp.train', 'dp.data', 'dp.encoders', 'hydra', 'omegaconf'))); print(list(a.shape), bad)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("[1, 8, 2] []"), run.stdout


def test_bad_artifacts_and_inputs_fail_clearly(artifact, tmp_path):
    _, out, meta = artifact
    exported = ExportedPolicy(out)
    with pytest.raises(ConfigError, match=r"exported for shape \[1, 2, 4\].*got \[2, 2, 4\]"):
        exported.predict_action({"state": torch.zeros(2, 2, 4)})
    with pytest.raises(ConfigError, match="lacks 'state'"):
        exported.predict_action({"image": torch.zeros(1, 2, 4)})
    with pytest.raises(ConfigError, match="no policy.json"):
        ExportedPolicy(tmp_path)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / PACKAGE, "r+b") as f:  # one flipped byte
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ConfigError, match="changed or truncated"):
        ExportedPolicy(copy)
    other = dict(meta, torch="0.0.1")
    (copy / META).write_text(json.dumps(other))
    shutil.copy(out / PACKAGE, copy / PACKAGE)
    with pytest.raises(ConfigError, match="torch 0.0.1"):
        ExportedPolicy(copy)


def test_dp_control_runs_an_artifact(artifact, tmp_path):
    from dp.control.cli import control_checkpoint

    _, out, _ = artifact
    summary = control_checkpoint(artifact=str(out), hz=50, max_ticks=40, mode="sync", torch_threads=1,
                                 max_consecutive_misses=0, max_steps=10, output_dir=str(tmp_path / "control"))
    assert summary["ticks"] == 40 and summary["task"] == "toy" and summary["artifact"] == str(out)
    assert summary["sampler"] == {"name": "ddim", "steps": 4} and summary["nonfinite_predictions"] == 0
    with pytest.raises(ConfigError, match="one of checkpoint=RUN"):
        control_checkpoint(checkpoint="x", artifact=str(out))


def test_the_graphed_prediction_rebuilds_on_weight_and_sampler_changes():
    """On a CPU the static-buffer path runs without a graph; the rebuild logic is the same as on CUDA."""
    from dp.deploy.graphed import GraphedPrediction

    policy = tiny()
    policy.set_sampler("ddim", 4)
    graphed = GraphedPrediction(policy)
    state = torch.randn(1, policy.n_obs_steps, 4)
    noise = policy.prior_sample(1)
    with torch.inference_mode():
        want = PlannedPrediction(policy)(state, noise)
    assert torch.equal(graphed(state, noise), want) and graphed.builds == 1
    graphed(state, noise)
    assert graphed.builds == 1  # nothing changed: no rebuild
    with torch.no_grad():
        next(policy.dit.parameters()).mul_(1.5)  # an in-place update (an optimizer or EMA step)
    with torch.inference_mode():
        want = PlannedPrediction(policy)(state, noise)
    assert torch.equal(graphed(state, noise), want) and graphed.builds == 2
    policy.set_sampler("ddim", 2)
    assert graphed(state, noise).shape == (1, 8, 2) and graphed.builds == 3
    with pytest.raises(ValueError, match="built for inputs"):
        graphed(torch.randn(2, policy.n_obs_steps, 4), noise)


def test_the_graphed_streaming_prediction_keeps_its_buffer_in_static_memory():
    from dp.deploy.graphed import GraphedPrediction

    policy = tiny(n_obs_steps=1, streaming={"train_fraction": 0.8})
    policy.set_sampler("streaming", 4)
    graphed = GraphedPrediction(policy)
    states = [torch.randn(1, 1, 4) for _ in range(4)]
    noises = [policy.prior_sample(1) for _ in range(4)]
    with torch.inference_mode():
        policy.reset()
        want = []
        for i, (s, n) in enumerate(zip(states, noises)):
            if i == 2:
                policy.reset()
            want.append(policy.normalizer.unnormalize("action", policy.codec.output(
                policy.sample_target(policy.normalize_obs({"state": s}), noise=n))))
    state_memory = None
    for i, (s, n) in enumerate(zip(states, noises)):
        if i == 2:
            graphed.reset()
        assert torch.equal(graphed(s, n), want[i])
        state_memory = state_memory or graphed.state.data_ptr()
        assert graphed.state.data_ptr() == state_memory  # the same static buffer every call
    assert graphed.builds == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("options", [{}, MOE], ids=["dit", "mode"])
def test_the_cuda_graph_equals_eager(options):
    from dp.deploy.graphed import GraphedPrediction

    policy = tiny(**options).cuda()
    policy.set_sampler("ddim", 10)
    graphed = GraphedPrediction(policy)
    state = torch.randn(1, policy.n_obs_steps, 4, device="cuda")
    noise = policy.prior_sample(1)
    with torch.inference_mode():
        want = PlannedPrediction(policy)(state, noise)
    got = graphed(state, noise)
    assert graphed.captured and (got - want).abs().max() <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_the_cuda_graph_streams_like_eager():
    from dp.deploy.graphed import GraphedPrediction

    policy = tiny(n_obs_steps=1, streaming={"train_fraction": 0.8}).cuda()
    policy.set_sampler("streaming", 4)
    graphed = GraphedPrediction(policy)
    states = [torch.randn(1, 1, 4, device="cuda") for _ in range(3)]
    noises = [policy.prior_sample(1) for _ in range(3)]
    with torch.inference_mode():
        policy.reset()
        for s, n in zip(states, noises):
            want = policy.normalizer.unnormalize("action", policy.codec.output(
                policy.sample_target(policy.normalize_obs({"state": s}), noise=n)))
            assert (graphed(s, n) - want).abs().max() <= 1e-5


def test_a_streaming_artifact_carries_its_buffer_between_calls(tmp_path):
    """Two programs (an episode's first call, later calls); the buffer passes between them in the loader."""
    policy = tiny(depth=1, n_obs_steps=1, streaming={"train_fraction": 0.8})
    policy.set_sampler("streaming", 4)
    out = tmp_path / "artifact"
    meta = export_policy(policy, out, info={"tasks": ["toy"], "env_options": {}, "collection_seeds_max": -1},
                         progress=lambda *_: None)
    assert meta["state"]["shape"] == [1, 8, 2] and set(meta["files"]) == {"policy.pt2", "first.pt2"}
    exported = ExportedPolicy(out, seed=5)
    draws = torch.Generator().manual_seed(5)
    states = [torch.randn(1, 1, 4) for _ in range(4)]
    policy.reset()
    for i, s in enumerate(states):
        if i == 2:  # a new episode: both start again from noise alone
            exported.reset()
            policy.reset()
        noise = meta["noise"]["scale"] * torch.randn(meta["noise"]["shape"], generator=draws)
        with torch.inference_mode():
            want = policy.normalizer.unnormalize("action", policy.codec.output(
                policy.sample_target(policy.normalize_obs({"state": s}), noise=noise)))
        assert (exported.predict_action({"state": s}) - want).abs().max() <= EXPORT_TOLERANCE
    from dp.control.cli import control_checkpoint

    summary = control_checkpoint(artifact=str(out), hz=50, max_ticks=30, mode="streaming", torch_threads=1,
                                 max_consecutive_misses=0, max_steps=10, output_dir=str(tmp_path / "control"))
    assert summary["ticks"] == 30 and summary["sampler"]["name"] == "streaming"


def test_a_truncated_artifact_runs_its_fallback_program_for_unsure_rows(tmp_path):
    """Two programs (the anchored path, the full sample); the loader reads the scores and falls back per row."""
    policy = truncated_policy(fallback_score=0.0, depth=1)  # one block: a quicker compile
    out = tmp_path / "artifact"
    meta = export_policy(policy, out, batch=2, progress=lambda *_: None)
    assert set(meta["files"]) == {"policy.pt2", "fallback.pt2"} and meta["noise"]["shape"] == [8, 8, 2]
    state = torch.randn(2, policy.n_obs_steps, 4)
    for threshold, fell_back in ((0.0, 0), (1.0, 2)):
        exported = ExportedPolicy(out, seed=5)
        exported.fallback["score"] = threshold
        policy.sampler.fallback_score = threshold
        draws = torch.Generator().manual_seed(5)
        noise = torch.randn(8, 8, 2, generator=draws)
        policy.generator = draws  # the fallback's noise is the loader's next draw
        with torch.inference_mode():
            want = policy.normalizer.unnormalize("action", policy.sample_target(
                policy.normalize_obs({"state": state}), noise=noise))
        assert (exported.predict_action({"state": state}) - want).abs().max() <= EXPORT_TOLERANCE
        assert exported.fallbacks == fell_back
