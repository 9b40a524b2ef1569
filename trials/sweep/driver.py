"""The sweep driver: Optuna ask-and-tell, Ray fan-out, tracked runs, crash recovery.

Every change of a trial's state goes through the ``Recorder`` (trials/sweep/recorder.py): the
result file, then the tracker, then Optuna, so a driver killed at any point loses nothing.
On start, the trials a dead driver left RUNNING are recovered by the same recorder (finished
from their saved result, or failed as ``driver_died`` and re-queued: training resumes from
the checkpoint).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import optuna
from optuna.trial import TrialState

from carvelab.search_space.sweep_dir import SweepDir, driver_lock
from carvelab.search_space.points import point_config
from carvelab.search_space.sweep_spec import SUITE_PARAM, SweepSpec
from carvelab.search_space.yaml_io import ConfigError
from carvelab.trials.sweep import study as st
from carvelab.trials.sweep.callbacks import FrontPublisher
from carvelab.trials.sweep.recorder import Recorder
from carvelab.trials.tracking import flatten, open_tracker, redact, redact_text, tracking_uri

logger = logging.getLogger(__name__)
MAX_CONSECUTIVE_INFEASIBLE = 200
NODE_CHECK_EVERY_S = 5.0  # how often waiting trials are compared with the live nodes


@dataclass
class SweepSummary:
    name: str
    sweep_dir: str
    storage: str
    tracking_uri: str
    parent_run_id: Optional[str]
    counts: dict = field(default_factory=dict)
    front_size: int = 0
    wall_s: float = 0.0
    loop_s: float = 0.0   # from the first launch to the last record (excludes set-up and Ray start)


@dataclass
class _Inflight:
    handle: object
    trial: optuna.trial.Trial
    run_id: Optional[str]


class SweepDriver:
    def __init__(self, spec: SweepSpec, root: str | Path = "carvelab_sweeps", address: Optional[str] = None,
                 on_update: Optional[Callable[[dict], None]] = None, callbacks: Optional[list] = None):
        self.spec = spec
        self.dir = SweepDir(root, spec.name)
        self.address = address
        self.on_update = on_update or (lambda counts: None)
        self.counts = {"running": 0, "pending": 0, "completed": 0, "pruned": 0, "failed": 0, "infeasible": 0,
                       "front": 0}  # pending: submitted, waiting in Ray's queue for resources
        self.unschedulable_since: Optional[float] = None  # since when waiting trials fit no live node
        self._nodes_checked, self._why = -math.inf, None
        self.stop_launching = False
        # None: the default, the live Pareto front in MLflow (callbacks.FrontPublisher)
        self.callbacks = [FrontPublisher()] if callbacks is None else list(callbacks)

    # ------------------------------------------------------------------ set-up
    def _open(self) -> None:
        self.dir.bind(self.spec)
        self.storage = self.spec.storage or self.dir.optuna_url
        self.tracking_uri = tracking_uri(self.spec.tracking, self.dir.path)
        self.tracker = open_tracker(self.spec.tracking, self.dir.path)
        self.parent = self.tracker.start_parent(self.spec.name, {
            "carvelab.mode": self.spec.mode, "carvelab.storage": redact(self.storage) or "",
            "carvelab.sweep_dir": str(self.dir.path)})
        # The logged copy has credentials redacted; the local snapshot keeps them (mode 600).
        self.tracker.log_text(self.parent, redact_text((self.dir.path / "sweep.yaml").read_text()), "sweep.yaml")
        self.study = st.open_study(self.spec, self.storage)
        self.dists = st.space_distributions(self.spec)
        self.recorder = Recorder(self.dir, self.tracker, self.tracker.store(), self.study,
                                 [o.metric for o in self.spec.objectives], self.spec.seeds[0], self.spec.name)

    def run(self) -> SweepSummary:
        from carvelab.trials.sweep import scheduler

        t0 = time.monotonic()
        self._refuse_a_study_without_its_folder()
        started = scheduler.start_ray(self.address)
        try:
            # A trial no node can ever run is refused before anything is created.
            why = scheduler.unschedulable(self.spec.resources, scheduler.live_nodes())
            if why:
                raise ConfigError(f"{self.spec.source}: {why}; nothing was created")
            self.dir.bind(self.spec)
            with driver_lock(self.dir.path):
                return self._run_locked(scheduler, t0)
        finally:
            if started:
                scheduler.stop_ray()

    def _refuse_a_study_without_its_folder(self) -> None:
        """A new sweep folder over a declared storage that already holds the study is refused:
        the study's trials would point at results, checkpoints and (with the default tracking)
        MLflow runs that live in the folder of the run that made them."""
        if not self.spec.storage or self.dir.snapshot.exists():
            return
        n = st.stored_trial_count(self.spec.name, self.spec.storage)
        if n:
            raise ConfigError(
                f"{self.spec.source}: the Optuna storage {redact(self.spec.storage)} already holds a study named "
                f"{self.spec.name!r} with {n} trial(s), but {self.dir.path} holds no sweep of that name (its "
                "snapshot, results and default MLflow store are in the folder of the run that made it). Point "
                "--root at that folder to resume, or give this sweep another name; nothing was created.")

    def _run_locked(self, scheduler, t0: float) -> SweepSummary:
        self._open()
        status = "KILLED"
        try:
            self.executor = scheduler.RayExecutor(self.spec.resources, self.spec.pruner,
                                                  self.spec.objectives, self.spec.sampler.seed,
                                                  journal=self.dir.broker_journal)
            self._recover()
            self._preload()
            st.plan_remaining(self.study, self.spec)
            loop_start = time.monotonic()
            for cb in self.callbacks:
                cb.on_sweep_start(self)
            self._loop(t0)
            self.loop_s = time.monotonic() - loop_start
            status = "FINISHED"
        finally:
            if getattr(self, "parent", None):
                for cb in self.callbacks:
                    cb.on_sweep_end(self)
            self.tracker.set_tags(self.parent, {f"carvelab.count.{k}": v for k, v in self.counts.items()})
            self.tracker.finish(self.parent, status)
        return SweepSummary(self.spec.name, str(self.dir.path), redact(self.storage), redact(self.tracking_uri),
                            self.parent, dict(self.counts), self.counts["front"], time.monotonic() - t0,
                            getattr(self, "loop_s", 0.0))

    # ------------------------------------------------------------------ the loop
    def _loop(self, t0: float) -> None:
        inflight: dict[int, _Inflight] = {}
        deadline = t0 + self.spec.budget.seconds if self.spec.budget.seconds else math.inf
        skipped = {"infeasible": 0, "duplicate": 0}
        exhausted = False
        while True:
            while not exhausted and not self.stop_launching and len(inflight) < self.spec.resources.concurrency \
                    and time.monotonic() < deadline and self._may_start():
                launched = self._launch(inflight)
                if isinstance(launched, str):
                    skipped[launched] += 1
                    if skipped["infeasible"] >= MAX_CONSECUTIVE_INFEASIBLE:
                        raise ConfigError(f"{self.spec.source}: {skipped['infeasible']} consecutive sampled points "
                                          "were infeasible; the space is (almost) entirely infeasible")
                    if sum(skipped.values()) >= MAX_CONSECUTIVE_INFEASIBLE:
                        logger.warning("the sampler proposed %d points in a row that were already trained: "
                                       "the space looks exhausted; no new trials are started", sum(skipped.values()))
                        exhausted = True
                    continue
                skipped = {"infeasible": 0, "duplicate": 0}
                inflight[launched.trial.number] = launched
            self.counts["running"] = len(inflight)
            self.on_update(dict(self.counts))
            if not inflight:
                return
            done = self.executor.wait([i.handle for i in inflight.values()], timeout=0.5)
            self._log_reports()
            for handle, result, exc in done:
                self._finish(inflight.pop(handle.trial), result, exc)
            self._cancel_overdue(inflight)
            self._check_pending(inflight)
            for cb in self.callbacks:
                cb.on_tick(self)

    def _may_start(self) -> bool:
        trials = self.study.get_trials(deepcopy=False)  # one read of the storage per decision
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if self.spec.mode != "search" and not waiting:
            return False
        if self.spec.budget.trials is not None:
            used = sum(st.consumed_training(t) for t in trials)
            if used >= self.spec.budget.trials:
                return False
        size = st.space_size(self.dists)
        if self.spec.mode == "search" and size is not None and not waiting:
            # A finite space: stop once every (point, seed) has been trained.
            return len(self.study.sampler.trained(self.study, trials=trials)) < size * len(st.runs_of_point(self.spec))
        return True

    def _launch(self, inflight: dict) -> _Inflight | str:
        """Ask for a point and start training it, or record why not ("infeasible", "duplicate")."""
        trial = self.study.ask(self.dists)
        point = dict(trial.params)
        sampled = "seed" not in trial.user_attrs
        (seed, tune), *others = st.runs_of_point(self.spec)
        if not sampled:
            seed, tune = int(trial.user_attrs["seed"]), st.tune_of(trial)
        if sampled and trial.number in self.study.sampler.repeats:
            # The sampler proposes a trained point only where it found no untrained one
            # (trials/sweep/sampling.py): training it again would only repeat the first run.
            trial.set_user_attr("seed", seed)
            trial.set_user_attr("reason", "duplicate")
            self.study.tell(trial, state=TrialState.FAIL)
            logger.debug("trial %d repeats a trained point; not trained", trial.number)
            return "duplicate"
        if sampled:
            trial.set_user_attr("seed", seed)
            if tune:
                trial.set_user_attr("tune", tune)
            # The point's other runs: every other seed, at every tune value (st.runs_of_point).
            for other_seed, other_tune in others:
                st.enqueue(self.study, point, other_seed, tune=other_tune, replicate_of=trial.number)
        try:
            config = point_config(self.spec, point, seed, tune)
        except ConfigError as exc:
            detail = str(exc).split(": ", 1)[-1]
            trial.set_user_attr("reason", "infeasible")
            trial.set_user_attr("detail", detail[:2000])
            self.study.tell(trial, state=TrialState.FAIL)
            self.counts["infeasible"] += 1
            logger.info("trial %d infeasible: %s", trial.number, detail)
            return "infeasible"
        ckpt = self.dir.checkpoint_dir(st.point_key(point, seed, tune))
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, checkpoint_dir=str(ckpt)))
        config_dict = dataclasses.asdict(config)
        tags = {"seed": str(seed), "state": "running", "label": trial.user_attrs.get("label", ""),
                "optuna_study": self.spec.name, **point_tags(point, tune)}
        run_id = self.recorder.start(trial, flatten(config_dict), tags)
        handle = self.executor.submit(config_dict, trial.number)
        return _Inflight(handle, trial, run_id)

    # ------------------------------------------------------------------ results
    def _log_reports(self) -> None:
        for trial_number, step, metrics, _decision in self.executor.drain():
            self.recorder.report(trial_number, step, metrics)

    def _finish(self, item: _Inflight, result: Optional[dict], exc: Optional[BaseException]) -> None:
        from carvelab.trials.sweep.scheduler import failure_reason

        if exc is not None:
            payload = {"status": "failed", "reason": failure_reason(exc), "steps": 0, "metrics": {},
                       "history": [], "traceback": str(exc)}
        else:
            payload = result
        self._record(item.trial.number, payload)

    def _record(self, number: int, payload: dict, saved: bool = False) -> None:
        """Record a trial's end (``Recorder.finish``), then tell the pruner and the callbacks."""
        status, reason = self.recorder.finish(number, payload, saved)
        self._recorded(number, status, payload)
        logger.info("trial %d %s%s", number, status, f" ({reason})" if reason else "")

    def _recorded(self, number: int, status: str, payload: dict) -> None:
        self.counts[status] += 1
        for cb in self.callbacks:
            cb.on_trial_recorded(self, number, status)
        self.executor.complete(number, status, self._pruned_value(payload))

    def _pruned_value(self, payload: dict) -> Optional[float]:
        quality = payload.get("metrics", {}).get(self.spec.pruner.metric)
        return None if quality is None else float(quality)

    def _cancel_overdue(self, inflight: dict) -> None:
        limit = self.spec.resources.trial_timeout_s
        if not limit:
            return
        now = time.monotonic()
        for item in list(inflight.values()):
            if now - item.handle.started > limit:
                logger.warning("trial %d exceeded %.0fs; cancelling", item.trial.number, limit)
                self.executor.cancel(item.handle)
                payload = {"status": "failed", "reason": "timeout", "steps": 0, "metrics": {}, "history": [],
                           "traceback": f"trial exceeded resources.trial_timeout_s={limit}"}
                inflight.pop(item.trial.number)
                self._record(item.trial.number, payload)

    def _check_pending(self, inflight: dict) -> None:
        """Trials waiting in Ray's queue for resources no live node has (the cluster shrank): a
        warning; past ``resources.pending_timeout_s`` they fail as ``unschedulable`` and no new
        trial starts (the running ones finish, then the sweep ends)."""
        from carvelab.trials.sweep import scheduler

        waiting = [item for number, item in inflight.items() if number not in self.executor.started]
        self.counts["pending"] = len(waiting)
        now = time.monotonic()
        if not waiting:
            self.unschedulable_since = None
            return
        if now - self._nodes_checked >= NODE_CHECK_EVERY_S:
            self._why, self._nodes_checked = scheduler.unschedulable(self.spec.resources, scheduler.live_nodes()), now
        if self._why is None:
            self.unschedulable_since = None
            return
        if self.unschedulable_since is None:
            self.unschedulable_since = now
            logger.warning("%d trial(s) are waiting for resources no live node of the cluster has (%s); "
                           "they start if such a node joins%s", len(waiting), self._why,
                           f", else fail after resources.pending_timeout_s={self.spec.resources.pending_timeout_s}"
                           if self.spec.resources.pending_timeout_s else "")
        limit = self.spec.resources.pending_timeout_s
        if limit and now - self.unschedulable_since > limit:
            for item in waiting:
                self.executor.cancel(item.handle)
                inflight.pop(item.trial.number)
                payload = {"status": "failed", "reason": "unschedulable", "steps": 0, "metrics": {}, "history": [],
                           "traceback": f"waited {now - self.unschedulable_since:.0f}s (resources.pending_timeout_s="
                                        f"{limit}) for resources no live node has: {self._why}"}
                self._record(item.trial.number, payload)
            self.counts["pending"] = 0
            self.stop_launching = True
            logger.warning("no new trials start: the cluster cannot run them (%s)", self._why)

    # ------------------------------------------------------------------ resume
    def _recover(self) -> None:
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            outcome, status = self.recorder.recover(t)
            if outcome == "finished":
                logger.info("trial %d finished from its saved result as %s", t.number, status)
                self._recorded(t.number, status, self.dir.load_result(t.number))
            else:
                logger.info("trial %d was running when the driver stopped; re-queued", t.number)

    def _preload(self) -> None:
        # Every ended trial's reports and its end, so a resumed sweep prunes as an uninterrupted one.
        told = {t.number: t.user_attrs.get("state") for t in self.study.get_trials(deepcopy=False)}
        finished = [(number, payload.get("history", []), told.get(number) or payload["status"],
                     self._pruned_value(payload)) for number, payload in sorted(self.dir.all_results().items())]
        self.executor.rebuild(finished)
        for t in self.study.get_trials(deepcopy=False):
            state = t.user_attrs.get("state")
            if state in self.counts and t.state != TrialState.RUNNING:
                self.counts[state] += 1
            elif t.state == TrialState.FAIL and st.reason(t) == "infeasible":
                self.counts["infeasible"] += 1


def point_tags(point: dict, tune: dict) -> dict[str, str]:
    """MLflow tags grouping a point's runs: ``point`` (its JSON, as the dashboards key it), ``point_id``
    (a short hash, to filter the UI with ``tags.point_id = '...'``), ``tune`` (the run's tune values) and,
    in a sweep with ``suite:``, ``suite`` (the task setting's label: ``tags.suite = 'mqar:seq_len=256,...'``)."""
    import hashlib

    text = json.dumps(point, sort_keys=True, default=str)
    tags = {"point": text[:5000], "point_id": hashlib.sha256(text.encode()).hexdigest()[:10]}
    if tune:
        tags["tune"] = ",".join(f"{k}={v}" for k, v in tune.items())
    if SUITE_PARAM in point:
        tags["suite"] = str(point[SUITE_PARAM])
    return tags


def run_sweep(spec: SweepSpec, root: str | Path = "carvelab_sweeps", address: Optional[str] = None,
              on_update: Optional[Callable[[dict], None]] = None, callbacks: Optional[list] = None) -> SweepSummary:
    return SweepDriver(spec, root, address, on_update, callbacks).run()
