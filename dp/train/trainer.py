"""The one Trainer every policy uses (no per-method workspaces).

AdamW (no decay on norms/biases/positions), warmup + cosine, gradient clipping, EMA
with diffusion_policy's power schedule, optional bf16 autocast and torch.compile,
device from config, DDP under torchrun, atomic checkpoints with exact resume, wandb
logging, a tqdm bar, a training-curve PNG and periodic evaluation rollouts.

Exact resume: batch k is a pure function of (seed, k) (see StepBatches), and the torch
RNG is re-seeded from (seed, rank, k) before every step, so a resumed run computes
bit-for-bit the losses an uninterrupted run computes.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm import tqdm

from dp.checkpoint import (
    LATEST, CheckpointError, has_checkpoints, load_config, load_tensors, load_train_state, newest_complete, resolve,
    save_checkpoint, verify,
)
from dp.data import DatasetError, SequenceDataset, collate_batch
from dp.data.cotrain import CoTrainDataset
from dp.data.mixture import MixtureDataset
from dp.data.atomic import GracefulInterrupt
from dp.errors import ConfigError, UserError
from dp.policies.registry import build_policy, load_weights
from dp.train.batches import StepBatches
from dp.train.config_checks import check_train_config
from dp.train.distributed import DistInfo, barrier, init_distributed, mean_across, shutdown
from dp.train.ema import EMA
from dp.train.schedule import param_groups, warmup_cosine


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=cpu.")
    return torch.device(name)


def _is_store_keys(value) -> bool:
    """A store key, or a non-empty list of them (concatenated low-dim keys or stacked cameras)."""
    return isinstance(value, str) or (isinstance(value, list) and bool(value) and all(isinstance(x, str) for x in value))


def obs_keys_for(task_cfg) -> dict:
    """Batch obs name -> store key(s): ``task.obs_keys`` when set (a list concatenates low-dim keys
    or stacks cameras, e.g. ``{state: [agent_pos, object]}``), else the default of ``task.obs``: for state,
    ``{state: task.state_keys}`` (``state`` when null), for image ``{agent_pos, image}``."""
    if task_cfg.get("obs_keys"):
        keys = OmegaConf.to_container(task_cfg.obs_keys, resolve=True) if isinstance(
            task_cfg.obs_keys, DictConfig) else dict(task_cfg.obs_keys)
        bad = {k: v for k, v in keys.items() if not _is_store_keys(v)}
        if bad:
            raise ConfigError(f"task.obs_keys maps an observation name to a store key or a list of them; got {bad}.")
        return keys
    obs = task_cfg.get("obs", "state")
    if obs == "state":  # task.state_keys: the store keys that make the state (PushT: agent + the T's corners)
        keys = task_cfg.get("state_keys")
        if keys is None:
            return {"state": "state"}
        keys = list(keys) if isinstance(keys, ListConfig) else keys
        if not _is_store_keys(keys):
            raise ConfigError(f"task.state_keys lists the store keys concatenated into the state observation, e.g. "
                              f"[agent_pos, keypoint]; got {keys!r}. Set it to null to read the store's 'state'.")
        return {"state": keys}
    if obs == "image":  # camera + proprioception only: the full state would give the objects away
        return {"agent_pos": "agent_pos", "image": "img"}
    raise ConfigError(f"task.obs must be 'state' or 'image' (or set task.obs_keys), got {obs!r}.")


def derived_agent_pos(obs_keys: dict, task_cfg, path: Path) -> dict:
    """An image policy reads ``agent_pos``. A store that lacks it but has ``state`` (diffusion_policy's
    PushT store) gets ``agent_pos = state[0:P]``, P the task's proprioceptive dims (the head of
    ``state``, as dp.envs lays it out); the env gives the same columns at run time."""
    if task_cfg.get("obs_keys") or obs_keys.get("agent_pos") != "agent_pos":
        return obs_keys
    from dp import envs
    from dp.data import ReplayBuffer

    keys = ReplayBuffer.open(path).keys()
    if "agent_pos" in keys or "state" not in keys:
        return obs_keys
    env = envs.make(envs.task_set(task_cfg.env)[0])
    proprio = int(env.unwrapped.proprio_dims)
    env.close()
    print(f"{path} has no data/agent_pos: agent_pos = state[0:{proprio}] (the first {proprio} numbers of "
          f"{task_cfg.env}'s state are the robot's own; set task.obs_keys to choose otherwise)")
    return {**obs_keys, "agent_pos": f"state[0:{proprio}]"}


def shape_meta_of(dataset: SequenceDataset | MixtureDataset | CoTrainDataset) -> dict:
    shapes = dataset.sample_shapes()  # images channels first
    if isinstance(dataset, MixtureDataset):  # unified space: the embodiments index the normalizers
        meta = {"action": shapes["action"], "obs": shapes["obs"], "embodiments": shapes["embodiments"],
                "sources": [{k: s[k] for k in ("name", "embodiment")} for s in dataset.sources],
                "cameras": dict(dataset.cameras)}  # obs name -> store key(s)
        if dataset.attrs.get("instructions"):
            meta["instructions"] = list(dataset.attrs["instructions"])
        return meta
    meta = {"action": shapes["action"], "obs": shapes["obs"], "obs_keys": dict(dataset.obs_keys)}
    if dataset.attrs.get("instructions"):  # task_id -> instruction, for language-conditioned policies
        meta["instructions"] = list(dataset.attrs["instructions"])
    return meta


def open_dataset(cfg) -> SequenceDataset | MixtureDataset | CoTrainDataset:
    p = cfg.policy
    if cfg.task.get("datasets"):  # a mixture of stores and embodiments in the unified space
        return MixtureDataset(
            OmegaConf.to_container(cfg.task.datasets, resolve=True), horizon=p.horizon, n_obs_steps=p.n_obs_steps,
            n_action_steps=p.n_action_steps, object_dim=cfg.task.get("object_dim"),
            cameras=OmegaConf.to_container(cfg.task.cameras, resolve=True) if cfg.task.get("cameras") else None,
            val_ratio=cfg.training.val_ratio, seed=cfg.seed, max_train_episodes=cfg.training.get("max_train_episodes"))
    path = Path(cfg.task.dataset_path)
    if not path.exists():
        obs = cfg.task.get("obs", "state")
        raise DatasetError(
            f"No dataset at {path}. Make it with:\n  dp-collect task={cfg.task.name} n_episodes=100 obs={obs} "
            f"output={path}"
        )
    dataset = SequenceDataset(
        path, horizon=p.horizon, n_obs_steps=p.n_obs_steps, n_action_steps=p.n_action_steps,
        obs_keys=derived_agent_pos(obs_keys_for(cfg.task), cfg.task, path), val_ratio=cfg.training.val_ratio,
        seed=cfg.seed,
        max_train_episodes=cfg.training.get("max_train_episodes"),
        key_offsets=OmegaConf.to_container(p.key_offsets, resolve=True) if p.get("key_offsets") else None,
        image_cache_mb=cfg.training.get("image_cache_mb", "auto"),
    )
    check_dataset_task(dataset.attrs, cfg.task, path)
    if cfg.task.get("video_datasets"):  # co-training on action-free video (PAD)
        return CoTrainDataset(dataset, OmegaConf.to_container(cfg.task.video_datasets, resolve=True),
                              cfg.task.get("video_fraction", 0.3), key_offsets=dataset.key_offsets)
    return dataset


def check_dataset_task(attrs, task_cfg, path) -> None:
    """The tasks a dataset records must be the task config's (``task.allow_mismatch=true`` skips this).

    A store that records no tasks (imported from elsewhere) is not checked."""
    from dp import envs

    recorded = list(attrs.get("tasks") or ([attrs["task"]] if attrs.get("task") else []))
    if not recorded or task_cfg.get("allow_mismatch", False):
        return
    expected = list(envs.task_set(task_cfg.env))
    if sorted(recorded) != sorted(expected):
        shown = recorded if len(recorded) <= 5 else recorded[:5] + [f"... {len(recorded)} tasks"]
        raise DatasetError(
            f"{path} holds demonstrations of {shown}, but task={task_cfg.name} trains and evaluates "
            f"{expected if len(expected) <= 5 else task_cfg.env}. Pick the matching task (task=...), point "
            "task.dataset_path at that task's store, or pass task.allow_mismatch=true if this is intended."
        )


def to_device(batch, device):
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return batch


class Trainer:
    def __init__(self, cfg: DictConfig):
        check_train_config(cfg)
        self.cfg = cfg
        self.dist: DistInfo = init_distributed(cfg.device)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.dist.world > 1:
            self.device = torch.device("cuda", self.dist.local_rank)
        if cfg.training.get("num_threads"):
            torch.set_num_threads(int(cfg.training.num_threads))
        self.out = Path(cfg.output_dir)
        self.ckpt_root = self.out / "checkpoints"

        self.dataset = open_dataset(cfg)
        self.val_dataset = self.dataset.get_validation_dataset() if cfg.training.val_ratio > 0 else None
        self.shape_meta = shape_meta_of(self.dataset)
        if cfg.task.get("obs_angles"):  # low-dim dims in radians: the encoder sees their sin and cos
            self.shape_meta["angles"] = OmegaConf.to_container(cfg.task.obs_angles, resolve=True)
        policy_cfg = OmegaConf.to_container(cfg.policy, resolve=True)
        policy_cfg.pop("name", None)
        policy_cfg["shape_meta"] = self.shape_meta
        # a policy config with a `sampler: null` slot takes the sampler group's choice (dp/configs/sampler/)
        if "sampler" in policy_cfg and policy_cfg["sampler"] is None and cfg.get("sampler") is not None:
            policy_cfg["sampler"] = OmegaConf.to_container(cfg.sampler, resolve=True)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every run
        self.policy = build_policy(policy_cfg).to(self.device)
        # optional hooks: a model needs only compute_loss(batch) -> {"loss": ...}
        if hasattr(self.policy, "set_normalizer"):
            normalizer = self.dataset.fit_normalizer(cfg.training.get("normalizer", "limits"))
            for key, dims in self.shape_meta.get("angles", {}).items():  # checked by the policy's obs encoder
                normalizer.pass_through(key, dims)
            self.policy.set_normalizer(normalizer)
        if hasattr(self.policy, "fit_to_data"):  # e.g. anchors for truncated diffusion (resuming reloads them)
            self.policy.fit_to_data(self.dataset)
        if cfg.training.get("init_from") and not (cfg.resume and has_checkpoints(self.ckpt_root)):
            self._init_from(cfg.training.init_from)
        self.policy.to(self.device)
        self.ema = EMA(self.policy, **cfg.training.ema) if cfg.training.ema else None

        t = cfg.training
        self.optimizer = torch.optim.AdamW(param_groups(self.policy, t.weight_decay), lr=t.lr, betas=tuple(t.betas))
        self.scheduler = warmup_cosine(self.optimizer, t.warmup_steps, t.steps)
        self.batches = StepBatches(len(self.dataset), t.batch_size, cfg.seed, self.dist.rank, self.dist.world)
        self.model = LossModule(self.policy)  # what DDP and torch.compile wrap: forward is compute_loss
        if self.dist.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.loss_fn = torch.compile(self.model) if t.get("compile") else self.model
        self.step = 0
        self.wandb_id: str | None = None
        self.seconds_before = 0.0   # training seconds of the segments before a resume
        self._segment_start = time.perf_counter()
        self.last_metrics: dict = {}
        self.history = {"step": [], "loss": [], "lr": [], "val_step": [], "val_loss": [], "eval_step": [],
                        "eval_success": []}
        self.full_config = self._full_config(policy_cfg)
        if cfg.resume:
            self._resume()

    # -------------------------------------------------------------- setup
    def _full_config(self, policy_cfg: dict) -> dict:
        cfg = OmegaConf.to_container(self.cfg, resolve=True)
        cfg["policy"] = policy_cfg
        cfg["dataset_attrs"] = {k: self.dataset.attrs.get(k) for k in ("task", "tasks", "instructions", "env_options",
                                                                       "obs", "dp_version", "sources")}
        cfg["collection_seeds_max"] = max(self.dataset.attrs.get("seeds", [0]) or [0])
        return cfg

    def _resume(self) -> None:
        """Continue from the newest complete checkpoint (``latest``, else the newest ``step_*``
        whose files and checksums read back); never silently from step 0 when checkpoints exist."""
        ckpt, skipped = newest_complete(self.ckpt_root)
        for line in skipped if self.dist.main else []:
            print(f"resume: skipped {line}")
        if ckpt is None:
            if has_checkpoints(self.ckpt_root):
                raise CheckpointError(
                    f"resume=true, but no checkpoint under {self.ckpt_root} is complete and readable "
                    f"({len(skipped)} skipped, listed above). Refusing to start over from step 0: pass "
                    "resume=false to retrain from scratch, or a new output_dir.")
            if self.dist.main:
                print(f"resume=true but no checkpoint under {self.ckpt_root}; starting from step 0")
            return
        self._check_same_data(ckpt)
        weights, ema, state = load_train_state(ckpt)
        advice = "Resume with the run's own config, or pass resume=false with a new output_dir."
        load_weights(self.policy, weights, ckpt / "weights.safetensors", advice)
        if self.ema is not None and ema is not None:
            load_weights(self.ema.model, ema, ckpt / "ema.safetensors", advice)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.history = {k: list(v) for k, v in json.loads(state["history"]).items()}
        self.wandb_id = state.get("wandb_id") or None
        self.seconds_before = float(state.get("train_seconds", 0.0))
        if self.dist.main:
            print(f"resumed from {ckpt} at step {self.step}")

    def _init_from(self, path) -> None:
        """Fine-tuning: start from another run's (EMA) weights, keeping the normalizer fitted on
        this run's data (a new robot has its own statistics). Optimizer, schedule and step start
        fresh. Every weight must fit: a different architecture is an error, not a partial load."""
        ckpt = resolve(path)
        verify(ckpt)
        source = ckpt / ("ema.safetensors" if (ckpt / "ema.safetensors").exists() else "weights.safetensors")
        state = {k: v for k, v in load_tensors(source).items() if not k.startswith("normalizer.")}
        state.update({k: v for k, v in self.policy.state_dict().items() if k.startswith("normalizer.")})
        load_weights(self.policy, state, source, "training.init_from needs a checkpoint of the same policy "
                     "config (dim, depth, heads, horizon, language vocabulary); pass the same policy options.")
        if self.dist.main:
            print(f"initialised from {source} (normalizer refitted on {self.cfg.task.get('dataset_path') or 'the mixture'})")

    def _check_same_data(self, ckpt: Path) -> None:
        """A resumed run must see data of the shapes it was built for: the action dimension sizes the
        action codec (the discrete codec's bins and per-dimension embeddings, the continuous one's
        projections), the observation shapes size the encoders."""
        saved = (load_config(ckpt).get("policy") or {}).get("shape_meta") or {}
        found = {"action": list(self.shape_meta["action"]),
                 **{f"obs.{k}": list(v) for k, v in self.shape_meta["obs"].items()}}
        expected = {"action": list(saved.get("action", [])),
                    **{f"obs.{k}": list(v) for k, v in (saved.get("obs") or {}).items()}}
        if saved and found != expected:
            diff = [f"{k}: checkpoint {expected.get(k)}, dataset {found.get(k)}"
                    for k in sorted(set(found) | set(expected)) if found.get(k) != expected.get(k)]
            raise CheckpointError(
                f"resume=true: {ckpt} was trained on data of other shapes than {self.cfg.task.dataset_path} "
                f"({'; '.join(diff)}); its action codec and encoders cannot read this dataset. Resume with the "
                "run's own task and dataset, or train this dataset into a new output_dir (resume=false).")

    # -------------------------------------------------------------- steps
    def _batch(self, idx) -> dict:
        return to_device(collate_batch(self.dataset.get_batch(idx)), self.device)

    def _autocast(self):
        if self.cfg.training.get("bf16"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> float:
        torch.manual_seed(int(np.random.SeedSequence([self.cfg.seed, self.dist.rank, self.step]).generate_state(1)[0]))
        self.policy.train()
        if hasattr(self.policy, "begin_training_step"):  # e.g. MeanFlow's curriculum reads the step
            self.policy.begin_training_step(self.step)
        batch = self._batch(self.batches.indices(self.step))
        with self._autocast():
            out = self.loss_fn(batch)
        loss = out["loss"]
        self.last_metrics = {k: v.detach() for k, v in out.items() if k != "loss"}  # e.g. balance loss, router stats
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # max_norm inf when clipping is off: the norm is still computed (and logged), grads scaled by 1
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.training.grad_clip or math.inf)
        self.last_metrics["grad_norm"] = grad_norm.detach()
        value = loss.detach().float().item()
        # checked before the weights change, on the all-reduced gradient norm too, so every DDP rank stops
        if not (math.isfinite(value) and math.isfinite(float(grad_norm))):
            self._diverged(value, float(grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.policy, self.step)
        return value

    def _diverged(self, loss: float, grad_norm: float):
        last, _ = newest_complete(self.ckpt_root)
        saved = f"the last finite checkpoint is {last}" if last else "no checkpoint was saved yet"
        raise TrainingDiverged(
            f"training diverged at step {self.step + 1}: loss {loss}, gradient norm {grad_norm}; {saved} "
            "(weights after it were not saved). Retrain with a lower training.lr (e.g. half), keep "
            "training.grad_clip on, and check the data with `dp-data validate`.")

    @torch.no_grad()
    def val_loss(self, max_batches: int = 4) -> float | None:
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return None
        model = self.ema.model if self.ema is not None else self.policy
        model.eval()
        rng_state = torch.get_rng_state()
        torch.manual_seed(self.cfg.seed + 12345)
        order = np.random.default_rng(0).permutation(len(self.val_dataset))
        bs = self.cfg.training.batch_size
        losses = []
        for i in range(min(max_batches, max(1, len(order) // bs))):
            batch = to_device(collate_batch(self.val_dataset.get_batch(order[i * bs : (i + 1) * bs])), self.device)
            with self._autocast():
                losses.append(model.compute_loss(batch)["loss"].float().item())
        torch.set_rng_state(rng_state)
        return float(np.mean(losses))

    def evaluate(self, n_episodes: int) -> dict:
        from dp.eval.rollout import eval_seeds, run_episodes, summarize

        policy = self.ema.model if self.ema is not None else self.policy
        video_dir = self.out / "eval_videos" / f"step_{self.step:08d}"
        results = [
            run_episodes(policy, task, eval_seeds(n_episodes), self.dataset.attrs.get("env_options"),
                         n_envs=self.cfg.eval.n_envs, n_videos=1, video_dir=video_dir, progress=False)
            for task in self.dataset.attrs.get("tasks", [self.cfg.task.env])
        ]
        summary = summarize(results)
        summary["videos"] = {r["task"]: r["videos"][0] for r in results if r["videos"]}  # one mp4 per task
        return summary

    def save(self) -> Path:
        state = {"history": json.dumps(self.history), "wandb_id": self.wandb_id or "",
                 "train_seconds": self.train_seconds()}
        return save_checkpoint(self.ckpt_root, self.step, self.policy, self.ema.model if self.ema else None,
                               self.optimizer, self.scheduler, self.full_config, state, self.cfg.training.keep_checkpoints)

    def train_seconds(self) -> float:
        """Seconds spent in ``run`` over every segment of this run (resumes included)."""
        return self.seconds_before + time.perf_counter() - self._segment_start

    # -------------------------------------------------------------- loop
    def run(self) -> dict:
        cfg, t = self.cfg, self.cfg.training
        main = self.dist.main
        run = None
        if main:
            self.out.mkdir(parents=True, exist_ok=True)  # before wandb, which warns "git root ... does not exist"
            run = self._init_wandb()
            print(f"policy {type(self.policy).__name__}: "
                  f"{sum(p.numel() for p in self.policy.parameters()) / 1e6:.2f}M parameters; "
                  f"{len(self.dataset)} training windows; "
                  f"device {self.device}; {self.dist.world} process(es)")
        bar = tqdm(total=t.steps, initial=self.step, desc="train", unit="step", disable=not (main and cfg.progress))
        t0, start_step, recent = time.perf_counter(), self.step, []
        recent_parts: dict[str, list[torch.Tensor]] = {}  # loss parts (keys ending in _loss, e.g. action_loss, image_loss)
        self._segment_start = t0
        with GracefulInterrupt() as interrupt:
            while self.step < t.steps:
                loss = self.train_step()
                recent.append(loss)
                for k, v in self.last_metrics.items():  # kept on the device: read once per log window
                    if k.endswith("_loss") and v.numel() == 1:
                        recent_parts.setdefault(k, []).append(v.reshape(()))
                if self.step % t.log_every == 0 or self.step == t.steps:
                    mean_loss = mean_across(float(np.mean(recent)), self.dist)
                    recent = []
                    lr = self.scheduler.get_last_lr()[0]
                    self.history["step"].append(self.step)
                    self.history["loss"].append(mean_loss)
                    self.history["lr"].append(lr)
                    for k, values in recent_parts.items():  # the loss parts, averaged like the loss
                        self.history.setdefault(k, []).append(float(torch.stack(values).float().mean()))
                    recent_parts = {}
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.1e}")
                    if run is not None:
                        extra = {f"train/{k}": float(v) for k, v in self.last_metrics.items()}
                        run.log({"train/loss": mean_loss, "train/lr": lr, **extra}, step=self.step)
                if main and t.val_every and self.step % t.val_every == 0:
                    v = self.val_loss()
                    if v is not None:
                        self.history["val_step"].append(self.step)
                        self.history["val_loss"].append(v)
                        if run is not None:
                            run.log({"val/loss": v}, step=self.step)
                if main and cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < t.steps:
                    res = self.evaluate(cfg.eval.n_episodes_periodic)
                    self.history["eval_step"].append(self.step)
                    self.history["eval_success"].append(res["success_rate"])
                    bar.write(f"step {self.step}: eval success {res['success_rate']:.0%} "
                              f"({res['episodes']} episodes)")
                    if run is not None:
                        import wandb

                        videos = {f"eval/video/{k}": wandb.Video(v, format="mp4") for k, v in res["videos"].items()}
                        run.log({"eval/success_rate": res["success_rate"], **videos}, step=self.step)
                if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                    if main:
                        path = self.save()
                        if not cfg.progress:  # no bar (a log file, dp-bench's jobs): one line per checkpoint instead
                            rate = (self.step - start_step) / max(time.perf_counter() - t0, 1e-9)
                            print(f"step {self.step}/{t.steps}: loss {self.history['loss'][-1]:.4f}, "
                                  f"{rate:.2f} steps/s; saved {path}", flush=True)
                    barrier(self.dist)
                bar.update(1)
                if interrupt.received is not None:
                    path = self.save() if main else self.ckpt_root / LATEST
                    bar.close()
                    shutdown(self.dist)
                    raise KeyboardInterrupt(f"training interrupted at step {self.step}; saved {path}; "
                                            "continue with resume=true")
        bar.close()
        seconds = time.perf_counter() - t0
        summary = {"steps": self.step, "seconds": seconds, "total_seconds": self.train_seconds(),
                   "steps_per_s": (self.step - start_step) / max(seconds, 1e-9),
                   "threads": torch.get_num_threads(),
                   "final_loss": self.history["loss"][-1] if self.history["loss"] else None}
        if main:
            path = self.save()
            from dp.eval.plots import training_curve

            training_curve(self.history, self.out / "training_curve.png",
                           f"{cfg.task.name} / {type(self.policy).__name__}")
            (self.out / "history.json").write_text(json.dumps(self.history))
            summary["checkpoint"] = str(path)
            summary["training_curve"] = str(self.out / "training_curve.png")
            (self.out / "train_summary.json").write_text(json.dumps(summary, indent=2))
            if run is not None:
                run.finish()
        shutdown(self.dist)
        return summary

    def _init_wandb(self):
        mode = self.cfg.logging.mode
        if mode == "disabled":
            return None
        try:
            import wandb
        except ImportError:  # the [wandb] extra is optional; online logging was asked for by name
            if mode == "online":
                raise ConfigError("logging.mode=online needs wandb: pip install 'dp[wandb]' (or logging.mode="
                                  "disabled).") from None
            print("wandb is not installed (pip install 'dp[wandb]'): metrics go to history.json and "
                  "training_curve.png only.")
            return None

        # the run id travels in the checkpoint, so resume=true continues the same wandb run
        self.wandb_id = self.cfg.logging.get("run_id") or self.wandb_id or uuid.uuid4().hex[:8]
        return wandb.init(project=self.cfg.logging.project, mode=mode, dir=str(self.out), config=self.full_config,
                          name=self.out.name, resume="allow", id=self.wandb_id)


class LossModule(torch.nn.Module):
    """``forward(batch)`` is ``model.compute_loss(batch)``: DDP and torch.compile wrap a forward,
    and a trained model need not define one."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> dict:
        return self.model.compute_loss(batch)


class TrainingDiverged(UserError):
    """The loss or the gradient norm became NaN or inf."""
