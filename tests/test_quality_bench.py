"""dp-bench quality: collects, trains and evaluates over seeds, one row per (task, policy), rows kept across runs."""
import json
import os
import shutil
from pathlib import Path

import pytest

from dp.bench import quality


def test_quality_trains_and_evaluates_every_seed_and_keeps_earlier_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the task's store (data/quality/toy.zarr) is collected here
    monkeypatch.setattr(quality, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr("dp.results.RESULTS_DIR", tmp_path / "results")
    tiny = ["logging.mode=disabled", "training.steps=4", "training.warmup_steps=1", "training.val_every=0",
            "training.batch_size=8"]
    args = ["--tasks", "toy", "--seeds", "0", "1", "--policies", "mlp_bc", "--episodes", "3", "--runs", "runs/q",
            "--demos", "6", "--set", *tiny]
    quality.main(args)
    rows = json.loads((tmp_path / "results" / "quality.json").read_text())["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert row["task"] == "toy" and row["policy"] == "mlp_bc" and row["seeds"] == 2 and row["steps"] == 4
    run = f"runs/q/toy_mlp_bc{quality.settings_tag(sorted(tiny))}_seed"  # the settings' hash names the runs
    assert str(quality.run_dir("toy", "mlp_bc", 1, tiny, runs="runs/q")) == f"{run}1"
    per_seed = [json.loads((tmp_path / f"{run}{s}/eval_quality/report.json").read_text()) for s in (0, 1)]
    assert [r["episodes"] for r in per_seed] == [3, 3]
    assert row["success_mean"] == pytest.approx(sum(r["success_rate"] for r in per_seed) / 2)
    assert row["train_min"] > 0 and "toy" in (tmp_path / "results" / "quality.md").read_text()
    assert sorted(p.name for p in (tmp_path / "data" / "quality").iterdir()) == ["toy.zarr"]
    from dp.data import ReplayBuffer

    assert ReplayBuffer.open(tmp_path / "data" / "quality" / "toy.zarr").n_episodes == 6
    # the same call again reuses the finished runs; other overrides train their own runs and add a row
    report0 = tmp_path / f"{run}0/eval_quality/report.json"
    stamp = report0.stat().st_mtime
    quality.main(args)
    assert report0.stat().st_mtime == stamp
    # each seed left a record beside the table: the row comes back from the records without the run directories
    records = sorted((tmp_path / "results" / "quality_runs").glob("*.json"))
    assert [p.stem for p in records] == [Path(f"{run}{s}").name for s in (0, 1)]
    record = json.loads(records[0].read_text())
    assert record["report"]["success_rate"] == per_seed[0]["success_rate"] and "videos" not in record["report"]
    shutil.move(tmp_path / "runs/q", tmp_path / "runs_elsewhere")
    quality.main(args)
    assert not (tmp_path / "runs/q").exists()  # nothing retrained or re-evaluated
    assert json.loads((tmp_path / "results" / "quality.json").read_text())["rows"] == [row]
    shutil.move(tmp_path / "runs_elsewhere", tmp_path / "runs/q")
    # inference settings name an evaluation of the same runs, its record and its row: nothing is retrained
    quality.main([*args, "--eval-set", "n_action_steps=1"])
    tag = quality.settings_tag(["n_action_steps=1"])
    assert sorted(p.name for p in (tmp_path / "runs/q").iterdir()) == [Path(f"{run}{s}").name for s in (0, 1)]
    assert json.loads((tmp_path / f"{run}1/eval_quality{tag}/report.json").read_text())["n_action_steps"] == 1
    assert (tmp_path / "results" / "quality_runs" / f"{Path(run).name}0_eval{tag}.json").exists()
    rows = json.loads((tmp_path / "results" / "quality.json").read_text())["rows"]
    assert rows[0] == row and rows[1]["settings"].endswith("; eval: n_action_steps=1")
    quality.main([*args, "training.lr=1e-3"])
    rows = json.loads((tmp_path / "results" / "quality.json").read_text())["rows"]
    assert len(rows) == 3 and rows[0] == row and "training.lr=1e-3" in rows[2]["settings"]
    assert len(list((tmp_path / "runs/q").glob("toy_mlp_bc_*_seed*"))) == 4  # two new runs beside the first two
    assert report0.stat().st_mtime == stamp


def test_jobs_run_seeds_at_once_with_the_cores_shared_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(quality, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr("dp.results.RESULTS_DIR", tmp_path / "results")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    tiny = ["logging.mode=disabled", "training.steps=3", "training.warmup_steps=1", "training.val_every=0",
            "training.batch_size=8"]
    args = ["--tasks", "toy", "--seeds", "0", "1", "--policies", "mlp_bc", "--episodes", "2", "--runs", "runs/q",
            "--demos", "4", "--jobs", "2", "--set", *tiny]
    quality.main(args)
    [row] = json.loads((tmp_path / "results" / "quality.json").read_text())["rows"]
    assert row["seeds"] == 2 and row["steps"] == 3
    run = Path(quality.run_name("toy", "state", "mlp_bc", sorted(tiny), 0)).name[:-1]  # without the seed
    for seed in (0, 1):
        record = json.loads((tmp_path / "results" / "quality_runs" / f"{run}{seed}.json").read_text())
        assert record["train"]["threads"] == max(1, (os.cpu_count() or 1) // 2)  # the cores shared out
        log = (tmp_path / "runs/q" / f"{run}{seed}.log").read_text()  # each job's output in its own log
        assert "parameters" in log and "success" in log  # dp-train's and dp-eval's
    with pytest.raises(SystemExit):
        quality.main(["--tasks", "toy", "--jobs", "0"])


def test_a_recipe_and_the_same_set_name_the_same_runs():
    """The settings that name a run are the recipe's keys that --set leaves to it, then --set."""
    recipe = "task.recipe={training: {steps: 20000, lr: 0.001}}"
    assert quality.settings_of("toy", ["training.steps=20000"]) == ["training.steps=20000"]  # toy has no recipe
    assert quality.settings_of("toy", ["training.steps=5000", "seed=0"]) == []  # the defaults, restated
    assert quality.settings_of("toy", ["task.obs_angles=null"]) == []  # a null default, restated
    assert quality.settings_of("toy", [recipe]) == [recipe]
    from dp.recipes import pending

    tree = {"training": {"steps": 20000, "lr": 0.001}}
    assert pending(tree, ["training.lr=0.01"]) == {"training.steps": 20000}
    assert pending(tree, ["training={steps: 1}"]) == {}
    assert quality.settings_tag([f"{k}={v}" for k, v in pending(tree, []).items()]) == \
        quality.settings_tag(["training.steps=20000", "training.lr=0.001"])
    assert quality.settings_tag([]) == ""


def test_execution_settings_do_not_name_runs():
    """bf16, compile, threads and the image cache change how a run computes, not what it learns: as --device,
    they leave its name alone, so an interrupted run resumes under them; a learning setting beside them names."""
    fast = ["training.bf16=true", "training.compile=true", "training.num_threads=1", "training.image_cache_mb=64"]
    assert quality.settings_of("toy", fast) == []
    assert quality.settings_of("pusht", fast) == quality.settings_of("pusht", [])
    assert quality.settings_of("toy", [*fast, "training.lr=0.01"]) == ["training.lr=0.01"]


def test_image_encoder_settings_name_image_runs_only(monkeypatch):
    """A state policy never reads policy.image_encoder: set or in the recipe, it leaves a state run's name
    alone and names an image run, the recipe's value as the same --set would."""
    enc = ["policy.image_encoder.stages=3", "policy.image_encoder.crop=84"]
    assert quality.settings_of("toy", enc) == quality.settings_of("toy", []) == []
    assert quality.settings_of("toy", enc, "image") == sorted(enc)
    given = quality.settings_of("toy", [*enc, "training.lr=0.01"], "image")
    cfg = quality._train_cfg("toy")
    cfg.task.recipe = {"policy": {"image_encoder": {"stages": 3, "crop": 84}}}
    monkeypatch.setattr(quality, "_train_cfg", lambda name, overrides=(): cfg)
    assert quality.settings_of("toy", ["training.lr=0.01"], "image") == given
    assert quality.settings_of("toy", ["training.lr=0.01"]) == ["training.lr=0.01"]


def test_a_task_setting_and_the_same_set_name_the_same_runs(monkeypatch):
    """task.obs_angles set in the task config names runs as --set 'task.obs_angles=...' does; order is free."""
    cfg = quality._train_cfg("toy")
    cfg.task.obs_angles = {"state": [3]}
    monkeypatch.setattr(quality, "_train_cfg", lambda name: cfg)
    assert quality.settings_of("toy", []) == ["task.obs_angles={state: [3]}"]
    assert quality.settings_of("toy", ["training.lr=0.01"]) == \
        quality.settings_of("toy", ["training.lr=0.01", "task.obs_angles={state: [3]}"]) == \
        ["task.obs_angles={state: [3]}", "training.lr=0.01"]


def test_pusht_runs_are_named_by_its_state_keys():
    """PushT's task config reads the T's corners (task.state_keys): they name its runs, as its recipe does."""
    assert quality.settings_of("pusht", []) == [
        "policy.n_action_steps=2", "task.state_keys=[agent_pos, keypoint]", "training.steps=50000"]


def test_a_task_eval_recipe_names_its_evaluations_and_eval_set_wins():
    assert quality.eval_settings_of("toy", []) == []
    assert quality.eval_settings_of("rs_square", []) == ["n_action_steps=1"]  # its eval_recipe
    assert quality.eval_settings_of("rs_square", ["n_action_steps=2", "initial_noise=episode"]) == \
        ["initial_noise=episode", "n_action_steps=2"]


def test_task_specs_and_row_merging():
    assert quality.task_spec("pusht@image") == ("pusht", "image") and quality.task_spec("rs_can") == ("rs_can", "state")
    with pytest.raises(SystemExit, match="after @ must be 'image'"):
        quality.task_spec("pusht@depth")
    a, b = {"task": "x", "policy": "dit", "v": 1}, {"task": "y", "policy": "dit", "v": 2}
    assert quality.merge_rows([a, b], [{"task": "x", "policy": "dit", "v": 3}]) == [{**a, "v": 3}, b]


def test_a_task_set_gets_a_per_task_table():
    def report(rates):
        return {"report": {"per_task": {t: {"success_rate": r} for t, r in rates.items()}}}

    rows = quality.per_task_rows([report({"a": 1.0, "b": 0.5}), report({"a": 0.5, "b": 0.0})])
    assert rows == [{"task": "a", "success_mean": 0.75, "per_seed": "100% / 50%"},
                    {"task": "b", "success_mean": 0.25, "per_seed": "50% / 0%"}]


def test_a_row_averages_the_final_coverage_and_score_where_every_seed_reports_them():
    """PushT's target is the mean final coverage: the row carries it (and DP's score) over seeds; tasks
    without them get neither column."""
    def record(success, **means):
        task = {"success_rate": success, **{f"mean_{k}": v for k, v in means.items()}}
        return {"machine": "m", "report": {"success_rate": success, "episodes": 50, "per_task": {"pusht": task}},
                "train": {"seconds": 60.0, "steps": 10}}

    row = quality.quality_row("pusht", "state", "dit", [], [0, 1],
                              [record(0.7, coverage=0.9, score=0.95), record(0.5, coverage=0.8, score=0.85)])
    assert row["coverage_mean"] == pytest.approx(0.85) and row["score_mean"] == pytest.approx(0.9)
    assert row["per_seed"] == "70% / 50%" and row["success_mean"] == pytest.approx(0.6)
    row = quality.quality_row("pusht", "state", "dit", [], [0, 1], [record(0.7, coverage=0.9), record(0.5)])
    assert "coverage_mean" not in row and "score_mean" not in row


def test_an_expert_variant_names_its_runs_and_its_store(tmp_path):
    """Demonstrations from another expert variant (task.expert_options) train other runs, from their own store,
    named by the options' value however the command line reached it; the stock expert (none) names neither, so
    its runs kept their names when rs_square adopted DART demonstrations."""
    recipe = ["policy.n_action_steps=2", "training.steps=50000"]
    dart = "task.expert_options={action_noise: 0.2}"
    assert quality.settings_of("rs_square", []) == sorted([*recipe, dart])  # rs_square's own options
    assert quality.settings_of("rs_square", [dart]) == quality.settings_of("rs_square", [])
    stock = quality.settings_of("rs_square", ["task.expert_options=null"])
    assert stock == recipe and quality.settings_tag(stock) == "_ccdc8f56"  # the name its runs had before DART
    assert quality.store_path("rs_square", "state", tmp_path, stock) == tmp_path / "rs_square.zarr"
    assert quality.settings_of("rs_can", []) == ["training.steps=20000"]
    # hydra merges a mapping into the one there: a variant replaces rs_square's options after clearing them
    plan = quality.settings_of("rs_square", ["task.expert_options=null", "task.expert_options={plan: two_switches}"])
    assert plan == sorted([*recipe, "task.expert_options={plan: two_switches}"])
    assert quality.settings_of("rs_square", ["task.expert_options.action_noise=0.1"]) == \
        sorted([*recipe, "task.expert_options={action_noise: 0.1}"])
    default = quality.settings_of("rs_square", [])
    stores = {quality.store_path("rs_square", "state", tmp_path, s) for s in (stock, plan, default)}
    assert len(stores) == 3 and all(p.name.startswith("rs_square") for p in stores)
    assert quality.store_path("rs_square", "image", tmp_path, plan).name.startswith("rs_square_img_")
    # dp-collect clears the task's options before it sets the variant's
    assert quality._collect_expert(plan) == ["task.expert_options=null", "task.expert_options={plan: two_switches}"]
    assert quality._collect_expert(stock) == ["task.expert_options=null"]

