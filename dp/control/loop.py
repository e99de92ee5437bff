"""The fixed-rate control loop: observe -> (async) predict -> act, with deadlines and a watchdog.

    summary = ControlLoop(policy, robot, LoopConfig(hz=20, mode="async", max_ticks=1200), "runs/x/control").run()

Tick i is scheduled at t0 + i / hz and must send its action before t0 + (i + 1) / hz. Each
tick: observe, collect a finished prediction, maybe start one, send the action planned for
this tick (clipped to the robot's limits) or, when there is none, hold a safe action.

A prediction started at tick L from the observation of tick L plans ticks L, L+1, ...
(its executed actions, ``policy.executed_actions``); actions whose tick has passed when it
arrives are dropped, never sent late. Predictions run on one background thread in every mode,
so the watchdog can hold at the deadline while a prediction is still running. Modes:
- ``sync``: start a prediction when the plan runs dry and wait for it inside the tick (until
  just before the tick's end);
- ``async``: start the next prediction while the current chunk executes, as soon as the
  planned actions left cover the expected latency (the slowest of the last few predictions)
  plus ``lead_margin_ticks``. At the switch, ``async_blend="committed"`` passes the k actions
  that will run meanwhile to ``policy.predict_action(obs, committed=[1, k, A])`` (real-time
  chunking: the policy continues them), keeps them and appends the rest of the new chunk;
  policies without that keyword, and ``"ensemble"``, blend the overlap by temporal
  ensembling (ACT: the i-th oldest prediction of a tick weighs exp(-ensemble_k * i));
- ``streaming``: for a policy whose sampler is ``streaming`` (a few denoising passes per call). Each
  call yields the buffer's next chunk, so it is started, like async's, as soon as the planned
  actions left cover the expected latency plus ``lead_margin_ticks``, from the observation of that
  tick, and its chunk is planned after the current one (chunk boundaries stay where the buffer has
  them). Nothing is inpainted: the actions still to run lie before the new chunk, which continues
  the buffer it was denoised in.

Safety: an action leaves the loop only if every value is finite and inside the robot's limits.
A prediction holding NaN or inf is a fault: it is discarded whole (none of its actions is
planned, so the ticks it would have served hold the safe action), logged and counted, and
``max_nonfinite`` such predictions in a row stop the loop (stop reason ``nonfinite_actions``).

Each episode's first chunk is predicted before its first tick (``start_wait_s``, 0 = off):
the clock restarts when it arrives, as a robot waits at its start pose after a reset.
"""
from __future__ import annotations

import inspect
import logging
import math
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dp.control.robot import Robot
from dp.control.telemetry import Telemetry
from dp.errors import ConfigError

log = logging.getLogger("dp.control")

MODES = ("sync", "async", "streaming")
BLENDS = ("committed", "ensemble")
SPIN_S = 0.0005  # sleep until this close to a tick's start, then spin: sleep() wakes up late
LATENCY_WINDOW = 5  # expected latency = the slowest of the last few predictions


@dataclass
class LoopConfig:
    hz: float = 20.0
    mode: str = "async"
    async_blend: str = "committed"
    ensemble_k: float = 0.01
    lead_margin_ticks: int = 2
    max_ticks: int | None = None  # None: until SIGINT/SIGTERM or the miss limit
    max_consecutive_misses: int = 10  # 0: never stop for misses
    max_nonfinite: int = 3  # stop after this many non-finite predictions in a row
    safe_action: list[float] | None = None  # None: hold the last sent action
    stall: dict = field(default_factory=lambda: {"every": 0, "seconds": 0.0})
    torch_threads: int | None = None  # None: 1 in async mode, torch's default otherwise
    warmup: int = 2  # predictions before t0 (caches, first latency estimate)
    send_margin_ms: float = 1.0  # stop waiting for a prediction this long before the tick's end
    start_wait_s: float = 0.5  # per episode: wait up to this long for its first chunk before its first tick
    progress: bool = False

    def __post_init__(self):
        def need(name: str, ok: bool, expected: str):
            if not ok:
                raise ConfigError(f"{name} must be {expected}, got {getattr(self, name)!r}.")

        need("hz", _number(self.hz) and self.hz > 0, "a number > 0")
        need("mode", self.mode in MODES, f"one of {list(MODES)}")
        need("async_blend", self.async_blend in BLENDS, f"one of {list(BLENDS)}")
        need("max_nonfinite", _integer(self.max_nonfinite) and self.max_nonfinite >= 1, "an integer >= 1")
        need("safe_action", self.safe_action is None or (
            isinstance(self.safe_action, (list, tuple)) and all(_number(v) and math.isfinite(v) for v in self.safe_action)),
            "null or a list of finite numbers")
        for name in ("lead_margin_ticks", "max_consecutive_misses", "warmup"):
            need(name, _integer(getattr(self, name)) and getattr(self, name) >= 0, "an integer >= 0")
        for name in ("max_ticks", "torch_threads"):
            value = getattr(self, name)
            need(name, value is None or (_integer(value) and value >= 1), "an integer >= 1 or null")
        for name in ("ensemble_k", "send_margin_ms", "start_wait_s"):
            need(name, _number(getattr(self, name)) and getattr(self, name) >= 0, "a number >= 0")
        stall = self.stall if isinstance(self.stall, dict) else {"": None}
        every, seconds = stall.get("every", 0), stall.get("seconds", 0.0)
        need("stall", set(stall) <= {"every", "seconds"} and _integer(every) and every >= 0
             and _number(seconds) and seconds >= 0, "{every: integer >= 0, seconds: number >= 0} (every 0: off)")

    @property
    def period(self) -> float:
        return 1.0 / self.hz


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_policy_for_mode(policy, mode: str) -> None:
    """``streaming`` needs a streaming sampler; other modes run any policy."""
    sampler = getattr(getattr(policy, "sampler", None), "name", None)
    if mode == "streaming" and sampler != "streaming":
        raise ConfigError(
            f"mode=streaming needs a policy whose sampler is 'streaming' (policy.sampler.name); this policy's "
            f"sampler is {sampler!r}. Pass sampler={{name: streaming, steps: K}} if the policy supports it, "
            f"or use mode=sync or mode=async.")


def rate_warning(latency_s: float | None, cfg: LoopConfig, n_exec: int) -> str | None:
    """Before the first tick: whether the measured prediction time lets ``cfg.mode`` hold the rate.
    sync waits for a prediction inside one tick; async and streaming must finish one while the
    ``n_exec`` actions of the last one run (less the lead margin). None when it fits."""
    if latency_s is None:
        return None
    ms, period_ms = 1000 * latency_s, 1000 * cfg.period
    if cfg.mode == "sync":
        budget = period_ms - cfg.send_margin_ms
        if ms > budget:
            return (f"mode={cfg.mode} at {cfg.hz:g} Hz: a prediction took {ms:.1f} ms in the warm-up, more than the "
                    f"{budget:.1f} ms a tick leaves for it, so the ticks that wait for one will miss their deadline. "
                    f"Use mode=async, fewer sampler steps, a lower rate, or an exported artifact (dp-export).")
        return None
    budget = (n_exec - cfg.lead_margin_ticks) * period_ms
    if ms > budget:
        return (f"mode={cfg.mode} at {cfg.hz:g} Hz: a prediction took {ms:.1f} ms in the warm-up, more than the {budget:.1f} "
                f"ms that {n_exec} executed actions less {cfg.lead_margin_ticks} lead ticks leave for it, so the plan "
                f"will run dry. Use fewer sampler steps, a lower rate, or an exported artifact (dp-export).")
    return None


# ------------------------------------------------------------------ inference worker
@dataclass
class Prediction:
    actions: np.ndarray  # executed actions [Ta, A], env units
    latency_s: float  # predict_action (+ injected stall) on the worker


class Predictor:
    """``policy.predict_action`` on one background thread, in submission order.

    Every ``stall_every``-th counted prediction sleeps ``stall_seconds`` before returning
    (stall injection for tests); ``close`` cuts a stall short.
    """

    def __init__(self, policy, stall_every: int = 0, stall_seconds: float = 0.0):
        self.policy = policy
        self.accepts_committed = "committed" in inspect.signature(policy.predict_action).parameters
        self.stall_every, self.stall_seconds = int(stall_every), float(stall_seconds)
        self.calls = 0  # counted predictions (warm-up excluded)
        self.stalls = 0
        self._closing = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dp-control-inference")

    def submit(self, obs: dict, committed: np.ndarray | None = None, reset: bool = False,
               count: bool = True) -> Future:
        """obs: {key: [1, To, ...] tensors, "instruction": [str]}; committed: [k, A] or None.
        ``reset`` calls ``policy.reset()`` first (a new episode), on the worker thread like
        every other policy call, so the policy is never used from two threads at once."""
        return self._pool.submit(self._predict, obs, committed, reset, count)

    def _predict(self, obs, committed, reset, count) -> Prediction:
        if reset:
            self.policy.reset()
        kwargs = {}
        if committed is not None and len(committed):
            kwargs["committed"] = torch.as_tensor(committed[None], dtype=torch.float32, device=self.policy.device)
        t = time.perf_counter()
        with torch.inference_mode():
            chunk = self.policy.predict_action(obs, **kwargs)
            actions = self.policy.executed_actions(chunk)[0].float().cpu().numpy()
        if count:
            self.calls += 1
            if self.stall_every and self.calls % self.stall_every == 0:
                self.stalls += 1
                self._closing.wait(self.stall_seconds)
        return Prediction(actions, time.perf_counter() - t)

    def close(self) -> None:
        self._closing.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------ the plan
@dataclass
class Planned:
    tick: int
    total: np.ndarray  # weighted sum of the predictions for this tick [A]
    weight: float
    n: int  # predictions blended in
    obs_time: float  # perf_counter of the newest observation behind it

    @property
    def action(self) -> np.ndarray:
        return self.total / self.weight


class ActionQueue:
    """Planned actions for consecutive ticks, oldest first."""

    def __init__(self):
        self._q: deque[Planned] = deque()

    def __len__(self) -> int:
        return len(self._q)

    def clear(self) -> None:
        self._q.clear()

    def drop_before(self, tick: int) -> None:
        while self._q and self._q[0].tick < tick:
            self._q.popleft()

    def pop(self, tick: int) -> Planned | None:
        """The action planned for ``tick`` (older ones are dropped: their time has passed)."""
        self.drop_before(tick)
        return self._q.popleft() if self._q and self._q[0].tick == tick else None

    def has(self, tick: int) -> bool:
        return bool(self._q) and self._q[0].tick == tick

    def head(self, k: int) -> np.ndarray:
        """The next k planned actions [k, A]."""
        return np.stack([self._q[j].action for j in range(k)])

    def replace(self, start: int, actions: np.ndarray, keep: int, obs_time: float) -> None:
        """A chunk for ticks start, start+1, ...: keep the plan for ticks < start + keep (the
        committed actions the chunk continues), replace the rest by actions[keep:]."""
        while self._q and self._q[-1].tick >= start + keep:
            self._q.pop()
        for j in range(keep, len(actions)):
            self._q.append(Planned(start + j, actions[j].astype(np.float64), 1.0, 1, obs_time))

    def ensemble(self, start: int, actions: np.ndarray, k: float, obs_time: float) -> None:
        """Temporal ensembling: a tick's i-th prediction (0 = oldest) weighs exp(-k * i)."""
        first = self._q[0].tick if self._q else start
        for j, a in enumerate(actions.astype(np.float64)):
            idx = start + j - first
            if idx < 0:
                continue
            if idx < len(self._q):
                p = self._q[idx]
                w = math.exp(-k * p.n)
                p.total, p.weight, p.n, p.obs_time = p.total + w * a, p.weight + w, p.n + 1, obs_time
            else:
                self._q.append(Planned(start + j, a, 1.0, 1, obs_time))


@dataclass
class _Job:
    future: Future
    tick: int  # the tick of its first action (its observation's tick, except for streaming's early start)
    keep: int  # committed actions it continues
    obs_time: float  # perf_counter when its observation was taken


def sleep_until(t: float) -> None:
    while (left := t - time.perf_counter()) > 0:
        if left > SPIN_S:
            time.sleep(left - SPIN_S)


# ------------------------------------------------------------------ the loop
class ControlLoop:
    """Drives ``robot`` with ``policy`` at ``config.hz``; writes telemetry to ``output_dir``."""

    def __init__(self, policy, robot: Robot, config: LoopConfig, output_dir: str | Path, info: dict | None = None):
        check_policy_for_mode(policy, config.mode)
        self.policy, self.robot, self.cfg = policy, robot, config
        self.output_dir = Path(output_dir)
        self.info = dict(info or {})  # extra summary fields (checkpoint, task, ...)
        self.low, self.high = (np.asarray(x, np.float32) for x in robot.action_limits)
        self.safe_action = None
        if config.safe_action is not None:
            safe = np.asarray(config.safe_action, np.float32).reshape(-1)
            if safe.shape != self.low.shape:
                raise ConfigError(f"safe_action must have {self.low.shape[0]} values (the action size), "
                                 f"got {safe.shape[0]}.")
            self.safe_action = np.clip(safe, self.low, self.high)
        self._stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        """Stop after the current tick (signal handlers call this)."""
        if self._stop_reason is None:
            self._stop_reason = reason

    # -------------------------------------------------------------- setup / teardown
    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: self.request_stop(signal.Signals(signum).name))

        def restore():
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _hold_action(self, last_sent: np.ndarray | None) -> np.ndarray:
        if self.safe_action is not None:
            return self.safe_action
        if last_sent is not None:
            return last_sent
        middle = (self.low + self.high) / 2  # nothing sent yet: the middle of the limits (0 where unbounded)
        return np.clip(np.where(np.isfinite(middle), middle, 0.0), self.low, self.high).astype(np.float32)

    def _fresh_history(self, obs: dict):
        """The policy's observation history for a new episode, holding its first observation."""
        history = self.policy.new_history()
        self._observe(history, obs)
        return history

    def _observe(self, history, obs: dict) -> None:
        history.push_one({**obs, "instruction": self.robot.instruction})

    def run(self) -> dict:
        """Run until max_ticks, a signal or too many consecutive misses; return the summary."""
        cfg = self.cfg
        threads_before = torch.get_num_threads()
        threads = cfg.torch_threads or (1 if cfg.mode == "async" else None)
        if threads:
            torch.set_num_threads(int(threads))
        blend = cfg.async_blend
        predictor = Predictor(self.policy, cfg.stall.get("every", 0), cfg.stall.get("seconds", 0.0))
        if cfg.mode == "async" and blend == "committed" and not predictor.accepts_committed:
            log.warning("policy.predict_action takes no `committed` actions: async_blend falls back to ensemble")
            blend = "ensemble"
        telemetry = Telemetry(self.output_dir, cfg.hz)
        restore_signals = self._install_signal_handlers()
        self.stats = {"clipped_actions": 0, "start_waits_ms": [], "nonfinite_predictions": 0,
                      "nonfinite_actions_blocked": 0}
        t_start = time.perf_counter()
        try:
            self._loop(predictor, telemetry, blend)
        except BaseException as e:  # the summary is still written (finally), then the error goes on
            self.request_stop(f"error: {type(e).__name__}: {e}")
            raise
        finally:
            predictor.close()
            restore_signals()
            torch.set_num_threads(threads_before)
            summary = telemetry.close(self._summary_info(predictor, blend, threads or threads_before,
                                                         time.perf_counter() - t_start))
        log.info("control run stopped: %s", summary["stop_reason"])
        return summary

    def _summary_info(self, predictor: Predictor, blend: str, threads: int, wall_s: float) -> dict:
        from dp.results import machine_info

        results = getattr(self.robot, "results", None)
        reports = getattr(self.robot, "reports_success", False)
        episodes = len(results) if results is not None else None
        successes = sum(r["success"] for r in results) if results is not None and reports else None
        machine = machine_info(str(getattr(self.policy, "device", "cpu")))
        return {
            "consecutive_miss_stop": self._stop_reason == "consecutive_misses",
            "stop_reason": self._stop_reason,
            "episodes": episodes,
            "successes": successes,
            "success_rate": successes / episodes if successes is not None and episodes else None,
            "episode_results": results,
            "mode": self.cfg.mode,
            "async_blend": blend if self.cfg.mode == "async" else None,
            "hz": self.cfg.hz,
            "n_obs_steps": self.policy.n_obs_steps,
            "n_action_steps": self.policy.n_action_steps,
            "sampler": self._sampler(),
            "stalls_injected": predictor.stalls,
            "episode_start_waits": len(self.stats["start_waits_ms"]),
            "episode_start_wait_ms_max": max(self.stats["start_waits_ms"], default=None),
            "clipped_actions": self.stats["clipped_actions"],
            "rate_warning": self.stats.get("rate_warning"),
            "nonfinite_predictions": self.stats["nonfinite_predictions"],
            "nonfinite_actions_blocked": self.stats["nonfinite_actions_blocked"],
            "wall_s": wall_s,
            "machine": {"cpu": machine["cpu"], "cores": machine["cpu_count"], "torch": machine["torch"],
                        "torch_threads": threads, "device": machine["device"]},
            **self.info,
        }

    def _sampler(self) -> dict | None:
        """The sampler predictions used: the policy's config entry (options included) or its sampler."""
        configured = getattr(self.policy, "config", {}).get("sampler")
        sampler = getattr(self.policy, "sampler", None)
        if configured:
            return dict(configured)
        return {"name": sampler.name, "steps": sampler.steps} if sampler is not None else None

    # -------------------------------------------------------------- the ticks
    def _warmup(self, predictor: Predictor, history) -> list[float]:
        latencies = []
        for _ in range(self.cfg.warmup):
            latencies.append(predictor.submit(history.batch(), count=False).result().latency_s)
        return latencies[1:]  # the first call builds caches: not what later calls cost

    def _loop(self, predictor: Predictor, tel: Telemetry, blend: str) -> None:
        cfg, robot, policy = self.cfg, self.robot, self.policy
        dt = cfg.period
        n_exec = policy.n_action_steps
        queue = ActionQueue()
        obs = robot.observe()
        episode = robot.episode
        history = self._fresh_history(obs)
        latencies = deque(self._warmup(predictor, history), maxlen=LATENCY_WINDOW)
        self.stats["rate_warning"] = rate_warning(max(latencies, default=None), cfg, n_exec)
        if self.stats["rate_warning"]:
            log.warning(self.stats["rate_warning"])
            print(f"warning: {self.stats['rate_warning']}", flush=True)
        new_episode = True  # reset the policy with the episode's first prediction
        job: _Job | None = None  # the prediction for the current episode, if one is running
        stale: list[Future] = []  # predictions for a finished episode: only their latency is kept
        last_sent = None
        misses_in_a_row = 0
        faults_in_a_row = 0  # non-finite predictions
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_ticks, desc=f"control {cfg.mode} {cfg.hz:g} Hz", unit="tick")

        def missed(tick: int) -> None:
            nonlocal misses_in_a_row
            misses_in_a_row += 1
            if misses_in_a_row == 1:
                log.warning("tick %d: deadline missed (no fresh action); holding", tick)
            if cfg.max_consecutive_misses and misses_in_a_row >= cfg.max_consecutive_misses:
                log.warning("%d consecutive deadline misses: stopping", misses_in_a_row)
                self.request_stop("consecutive_misses")

        def harvest(tick: int) -> float | None:
            """Merge a finished prediction into the plan; its latency in ms, else None."""
            nonlocal job, faults_in_a_row
            done_ms = None
            for f in [f for f in stale if f.done()]:
                stale.remove(f)
                done_ms = f.result().latency_s * 1000
                tel.inference(done_ms)
            if job is None or not job.future.done():
                return done_ms
            pred = job.future.result()
            latencies.append(pred.latency_s)
            tel.inference(pred.latency_s * 1000)
            if not np.isfinite(pred.actions).all():  # a fault: none of its actions is planned
                job = None
                faults_in_a_row += 1
                self.stats["nonfinite_predictions"] += 1
                log.error("tick %d: the prediction holds non-finite actions (NaN/inf); discarded, holding "
                          "(%d in a row)", tick, faults_in_a_row)
                if faults_in_a_row >= cfg.max_nonfinite:
                    log.error("%d non-finite predictions in a row: stopping", faults_in_a_row)
                    self.request_stop("nonfinite_actions")
                return pred.latency_s * 1000
            faults_in_a_row = 0
            if blend == "ensemble" and cfg.mode == "async":
                queue.ensemble(job.tick, pred.actions, cfg.ensemble_k, job.obs_time)
            else:
                queue.replace(job.tick, pred.actions, job.keep, job.obs_time)
            queue.drop_before(tick)
            job = None
            return pred.latency_s * 1000

        def begin_episode(tick: int) -> None:
            """An episode's first chunk is predicted before its first tick, as a robot waits at its
            start pose after a reset: there is no plan yet to execute meanwhile, and a stale
            prediction of the last episode may still hold the worker. Waits at most start_wait_s,
            then restarts the clock at ``tick``."""
            nonlocal job, new_episode, t0, episode, history
            obs = robot.observe()
            episode = robot.episode
            history = self._fresh_history(obs)
            queue.clear()
            if job is not None:
                stale.append(job.future)
            t_obs = time.perf_counter()
            job = _Job(predictor.submit(history.batch(), None, reset=True), tick, 0, t_obs)
            new_episode = False
            try:
                job.future.result(timeout=cfg.start_wait_s)
            except FutureTimeout:
                pass
            harvest(tick)
            self.stats["start_waits_ms"].append((time.perf_counter() - t_obs) * 1000)
            t0 = time.perf_counter() - tick * dt

        t0 = time.perf_counter() + dt  # one period of lead: the first tick starts on time
        i = 0
        while self._stop_reason is None and (cfg.max_ticks is None or i < cfg.max_ticks):
            if cfg.start_wait_s > 0 and (new_episode or robot.episode != episode):
                begin_episode(i)
            scheduled = t0 + i * dt
            deadline = scheduled + dt
            sleep_until(scheduled)
            if self._stop_reason is not None:  # a signal during the sleep: this tick never started
                break
            start = time.perf_counter()
            obs = robot.observe()
            t_obs = time.perf_counter()
            if robot.episode != episode:
                episode, new_episode = robot.episode, True
                history = self._fresh_history(obs)
                queue.clear()
                if job is not None:
                    stale.append(job.future)
                    job = None
            else:
                self._observe(history, obs)
            inference_ms = harvest(i)
            queue.drop_before(i)

            if job is None:
                lead = math.ceil(max(latencies, default=0.0) * cfg.hz) + cfg.lead_margin_ticks
                first_tick = i  # the tick the new chunk's first action is for
                if cfg.mode == "async":
                    launch = len(queue) <= lead
                    keep = min(len(queue), lead, n_exec - 1) if blend == "committed" else 0
                elif cfg.mode == "streaming":
                    # the buffer advances one chunk per call: the next chunk follows the plan, so start it
                    # early enough to be ready, from this (a few ticks early) observation
                    launch, keep = len(queue) <= lead, 0
                    first_tick = i + len(queue)
                else:
                    launch, keep = len(queue) == 0, 0
                if launch:
                    # what will really be sent meanwhile: the plan, clipped
                    committed = np.clip(queue.head(keep), self.low, self.high) if keep else None
                    future = predictor.submit(history.batch(), committed, reset=new_episode)
                    job, new_episode = _Job(future, first_tick, keep, t_obs), False

            if job is not None and not queue.has(i):
                # nothing planned for this tick: wait for the prediction until just before the deadline
                try:
                    job.future.result(timeout=max(0.0, deadline - cfg.send_margin_ms / 1000 - time.perf_counter()))
                except FutureTimeout:
                    pass
                inference_ms = harvest(i) or inference_ms

            planned = queue.pop(i)
            if planned is not None:
                raw, source = planned.action.astype(np.float32), "policy"
            else:
                raw, source = self._hold_action(last_sent), "hold"
            action = np.clip(raw, self.low, self.high)
            self.stats["clipped_actions"] += int(not np.array_equal(action, raw))
            if not np.isfinite(action).all():  # last guard (np.clip passes NaN through): never sent
                self.stats["nonfinite_actions_blocked"] += 1
                action, source = self._hold_action(last_sent), "hold"
            robot.act(action)
            sent = time.perf_counter()
            last_sent = action
            met = source == "policy" and sent <= deadline
            tel.row(i, scheduled - t0, start - t0, (sent - planned.obs_time) * 1000 if planned else None,
                    inference_ms, met, source, episode, action)
            if met:
                misses_in_a_row = 0
            else:
                missed(i)

            # an overrun never bursts: ticks whose start is over half a period past are skipped
            now = time.perf_counter()
            i += 1
            while (now - (t0 + i * dt) > dt / 2 and self._stop_reason is None
                   and (cfg.max_ticks is None or i < cfg.max_ticks)):
                tel.row(i, i * dt, None, None, None, False, "skip", episode)
                missed(i)
                i += 1
            if bar is not None:
                bar.update(tel.ticks - bar.n)
        if bar is not None:
            bar.close()
        self.request_stop("max_ticks")  # no-op when something else stopped the loop
