"""A checkpoint is untrusted input: loading one never runs code, only registered dp policy
classes are built, and weights that are not finite are refused."""
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from dp.checkpoint import CheckpointError
from dp.policies.registry import build_policy, load_policy
from train_helpers import rewrite_checkpoint_file, tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling it creates (or truncates) ``marker``: code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _craft(ckpt: Path, policy_cfg: dict) -> None:
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    cfg["policy"] = policy_cfg
    rewrite_checkpoint_file(ckpt, "config.yaml", yaml.safe_dump(cfg).encode())


def _attacks(ckpt: Path, tmp_path: Path):
    """(name, policy config, file that must not be created or changed) for each crafted config."""
    payload = ckpt / "payload.pkl"
    torch.save(_Payload(tmp_path / "pwned_torch"), payload)
    (ckpt / "payload.npy").write_bytes(pickle.dumps(_Payload(tmp_path / "pwned_numpy")))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    real = yaml.safe_load((ckpt / "config.yaml").read_text())["policy"]
    return [
        ("torch.load", {"_target_": "torch.load", "f": str(payload), "weights_only": False}, tmp_path / "pwned_torch"),
        ("numpy.load nested in a real policy", {**real, "process": {"_target_": "numpy.load",
                                                                    "file": str(ckpt / "payload.npy"),
                                                                    "allow_pickle": True}},
         tmp_path / "pwned_numpy"),
        ("builtins.open", {"_target_": "builtins.open", "file": str(victim), "mode": "w"}, victim),
    ]


def test_the_payloads_are_live_under_hydra_instantiate(tmp_path):
    """What the old loader did with these configs: code runs (the tests below would pass vacuously otherwise)."""
    from hydra.utils import instantiate

    ckpt = tiny_checkpoint(tmp_path / "run")
    for name, cfg, marker in _attacks(ckpt, tmp_path):
        try:
            instantiate(cfg)
        except Exception:  # noqa: BLE001 - the nested one fails after its payload ran
            pass
        assert (marker.read_text() == "") if marker.name == "victim.txt" else marker.exists(), name


def test_crafted_checkpoint_configs_are_refused_and_run_nothing(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run")
    for name, cfg, marker in _attacks(ckpt, tmp_path):
        _craft(ckpt, cfg)
        with pytest.raises(CheckpointError, match=r"registered dp policy class|keys starting with '_'") as info:
            load_policy(ckpt)
        assert "\n" not in str(info.value), name
        if marker.name == "victim.txt":
            assert marker.read_text() == "precious", name
        else:
            assert not marker.exists(), name


def test_dp_eval_refuses_a_crafted_checkpoint_in_one_line(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run")
    name, cfg, marker = _attacks(ckpt, tmp_path)[1]
    _craft(ckpt, cfg)
    done = subprocess.run([sys.executable, "-m", "dp.eval.cli", f"checkpoint={ckpt}", "n_episodes=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "keys starting with '_'" in lines[0], done.stderr
    assert not marker.exists()


def test_policy_configs_hold_only_known_options_and_plain_data():
    cfg = {"_target_": "dp.policies.dit.DiTPolicy", "shape_meta": {"action": [2], "obs": {"state": [4]}},
           "dim": 32, "depth": 1, "heads": 2}
    assert build_policy(cfg).config["dim"] == 32
    with pytest.raises(ValueError, match=r"\['dimm'\] is not an option of DiTPolicy"):
        build_policy({**cfg, "dimm": 32})
    with pytest.raises(ValueError, match="expected plain data"):
        build_policy({**cfg, "process": {"schedule": object()}})
    # MoDE's options are DiTPolicy's (it passes **kwargs through)
    assert build_policy({**cfg, "_target_": "dp.policies.mode.MoDEPolicy"}).config["ffn"] == "moe"


def test_non_finite_weights_are_refused_at_load(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run")
    weights = load_file(str(ckpt / "weights.safetensors"))
    name = next(k for k in weights if k.endswith("weight") and weights[k].is_floating_point())
    weights[name][0] = float("nan")
    save_file(weights, str(tmp_path / "w.safetensors"))
    rewrite_checkpoint_file(ckpt, "weights.safetensors", (tmp_path / "w.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=rf"non-finite weights \(NaN or inf\) in \['{name}'\]"):
        load_policy(ckpt)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_config"])
def test_damaged_checkpoints_give_one_clear_error(tmp_path, damage):
    ckpt = tiny_checkpoint(tmp_path / "run")
    w = ckpt / "weights.safetensors"
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(w.read_bytes())
        data[-20] ^= 0xFF
        w.write_bytes(bytes(data))
    else:
        (ckpt / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match="damaged or incomplete") as info:
        load_policy(ckpt)
    assert "\n" not in str(info.value)


def test_weights_of_another_shape_are_refused(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run")
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    cfg["policy"]["dim"] = 64
    rewrite_checkpoint_file(ckpt, "config.yaml", yaml.safe_dump(cfg).encode())
    with pytest.raises(CheckpointError, match="size mismatch .* different runs"):
        load_policy(ckpt)
    assert torch.isfinite(torch.zeros(1)).all()
