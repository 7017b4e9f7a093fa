"""The distillation outer loop: one iteration top to bottom, checkpoints, resume, events.

The engine never draws anything. It reports through callbacks (``on_start``,
``on_iteration``, ``on_eval``, ``on_snapshot``, ``on_checkpoint``); the CLI renders them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ddcli.config import DistillConfig
from ddcli.core.rates import lrs_from_raw
from ddcli.data import RealData
from ddcli.engine.records import (FINITE, LOSS, LR_MAX, LR_MEAN, LR_MIN, MASS_MAX, MASS_MEAN,
                                MASS_MIN, STOP, Pending)
from ddcli.engine.clipping import clip_to_average_
from ddcli.engine.events import DistillResult, EvalInfo, IterationInfo, SnapshotInfo, StartInfo
from ddcli.engine.outputs import RunFolder, default_out, default_run_dir, make_bundle
from ddcli.engine.runtime import Runtime
from ddcli.engine.state import CHECKPOINT_NAME, RunState, load_checkpoint
from ddcli.progress import DistillProgress
from ddcli.errors import ConfigError, DivergedError, Interrupted, OutputError
from ddcli.infra import device as _device
from ddcli.infra import io as _io
from ddcli.infra import provenance
from ddcli.infra.signals import stop_on_signals
from ddcli.layering import resumed_config

__all__ = ["default_out", "default_run_dir", "distill", "resume"]


def distill(
    cfg: DistillConfig,
    *,
    out: str | Path | None = None,
    run_dir: str | Path | None = None,
    callbacks: Any = None,
    data: RealData | None = None,
    force: bool = False,
    preset: str | None = None,
    progress: bool = False,
) -> DistillResult:
    """Learn a synthetic dataset and its learning rates; save and return the bundle.

    Args:
        cfg: the run's configuration (validated here).
        out: bundle path; default a descriptive name in the current folder.
        run_dir: folder for config.json, checkpoint.pt and metrics.jsonl; default
            ``<out stem>.run`` beside the bundle.
        callbacks: any object with some of ``on_start``, ``on_iteration``, ``on_eval``,
            ``on_snapshot``, ``on_checkpoint`` (several: ``Callbacks(a, b)``), such as
            ``ddcli.progress.DistillProgress`` or ``ddcli.tensorboard.TensorBoardLogger``.
        data: preloaded real data (skips ``load_dataset``), mainly for tests.
        force: start afresh even if ``run_dir`` holds a checkpoint.
        preset: the preset the config came from, for the provenance record.
        progress: without ``callbacks``, show the CLI's progress display on stderr
            (``ddcli.progress.DistillProgress``).

    Example:
        >>> from ddcli import DistillConfig, distill
        >>> cfg = DistillConfig.from_dict({"optim": {"iterations": 10}})
        >>> result = distill(cfg, out="m.safetensors")  # doctest: +SKIP
    """
    if progress and callbacks is None:  # the CLI's display, for the Python API
        with DistillProgress() as display:
            return distill(cfg, out=out, run_dir=run_dir, callbacks=display, data=data,
                           force=force, preset=preset)
    cfg.validate()
    out = Path(out) if out else default_out(cfg)
    run_dir = Path(run_dir) if run_dir else default_run_dir(out)
    if (run_dir / CHECKPOINT_NAME).exists() and not force:
        raise ConfigError(
            f"{run_dir} already holds a checkpoint; continue it with "
            f"`dd distill --resume {run_dir}`, or pass --force to start over"
        )
    _check_outputs(out, run_dir)
    return _Run(cfg, out, run_dir, data, callbacks, state=None, preset=preset).loop()


def resume(
    run_dir: str | Path,
    *,
    overrides: dict[str, dict[str, Any]] | None = None,
    callbacks: Any = None,
    data: RealData | None = None,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool = False,
) -> DistillResult:
    """Continue an interrupted run from its last checkpoint.

    ``overrides`` may change only the budget, the meta step size, logging, the data
    root and the device, e.g. ``{"optim": {"meta_lr": 0.005}}`` after a divergence.
    The bundle goes to ``out`` if given, else where the run put it; an existing file
    there (a finished run being extended) is only overwritten with ``force``. A finished
    run resumed with a new ``out`` just writes its bundle there. ``progress`` is as for
    ``distill``.
    """
    if progress and callbacks is None:
        with DistillProgress() as display:
            return resume(run_dir, overrides=overrides, callbacks=display, data=data, out=out,
                          force=force)
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir)
    cfg = resumed_config(state.config, overrides)
    out = Path(out) if out is not None else _resumed_out(Path(state.out), run_dir)
    if out.exists() and not force:
        raise ConfigError(f"{out} exists (the bundle of this run's last finish, or another "
                          "file); pass --force to overwrite it, or -o to write elsewhere")
    _check_outputs(out, run_dir)
    state.out = str(out.absolute())
    return _Run(cfg, out, run_dir, data, callbacks, state=state).loop()


def _check_outputs(out: Path, run_dir: Path) -> None:
    """Refuse unwritable places before any training (not after hours of it)."""
    _io.check_writable(out, "the bundle")
    _io.check_writable(run_dir, "the run folder", folder=True)


def _resumed_out(out: Path, run_dir: Path) -> Path:
    """Where a resumed run writes its bundle: where the run started it (checkpoints store
    an absolute path), or beside the run folder if that place is gone (the run folder was
    moved) or the path is relative (checkpoints from before ddcli 0.1 stored it as given).
    """
    if out.is_absolute() and out.parent.is_dir():
        return out
    return run_dir.parent / out.name


class _Run:
    """One run in this process: its ``Runtime`` (fixed at start) and its ``RunState``
    (live: the learned tensors, optimiser, scheduler and generator are its fields)."""

    def __init__(self, cfg: DistillConfig, out: Path, run_dir: Path, data, callbacks,
                 state: RunState | None, preset: str | None = None) -> None:
        self.rt = rt = Runtime(cfg, data)
        self.cfg, self.out = cfg, out
        self.callbacks = callbacks if rt.dist.is_main else None  # only rank 0 reports
        self.folder = RunFolder(run_dir, enabled=rt.dist.is_main)
        self.state = state if state is not None else rt.fresh_state(out)
        self.state.provenance.append(rt.provenance(preset=preset))
        if state is None and cfg.synth.init_from is not None:  # which file the images came from
            self.state.provenance[-1]["init_from_sha256"] = provenance.file_sha256(
                cfg.synth.init_from)[:16]  # short, as the data's hash
        rt.restore(self.state)
        self.source = rt.init_source(self.state)
        described = self.source.describe()
        if described.get("pool_hash"):  # the pool's content, so a resume can tell if it changed
            self.state.provenance[-1]["pool_hash"] = described["pool_hash"]
        self.warnings = provenance.resume_differences(
            self.state.provenance[0] if len(self.state.provenance) > 1 else None,
            self.state.provenance[-1])
        pool_data = described.get("pool_dataset")
        if pool_data and pool_data != rt.data.name and cfg.objective.kind != "adapt":
            self.warnings.append(
                f"the pool's nets were pretrained on {pool_data}, not {rt.data.name}: this run "
                f"starts from another dataset's weights (--objective adapt --source-dataset "
                f"{pool_data} is the run that means to)")
        # config.json: this process's provenance and the earlier ones (a resumed run's
        # first command stays readable in a committed run folder)
        self.folder.start(cfg, iteration=self.state.iteration,
                          provenance={**self.state.provenance[-1],
                                      "earlier": self.state.provenance[:-1]})

    # --- one outer iteration ----------------------------------------------------------------
    def outer_step(self, it: int, stop: bool) -> torch.Tensor:
        """One meta step on the synthetic set; returns the iteration's record (on device)."""
        rt, st = self.rt, self.state
        learned = st.learned
        # 1. What the objective needs from the real data: a batch (augmented if asked),
        #    a batch of every class, or nothing.
        batch = rt.outer_batch(it, st.aug_rng)
        batch.memory = st.objective_state  # the objective's, across iterations
        # 2. This iteration's initial weights: every rank draws all, each uses its share.
        #    Trajectory matching's source also gives each net its target.
        inits, targets = self.source.segments(it)
        mine = [_device.to_device(p, rt.device) for p in rt.dist.share(inits)]
        if targets is not None:
            batch.targets = [_device.to_device(p, rt.device) for p in rt.dist.share(targets)]
        # 3. The inner loop of this iteration: its schedule (minibatches of the pool,
        #    augmentation seeds) and the window of steps to differentiate.
        schedule, window = rt.inner_plan(it)
        # 4. The objective's loss and its gradient for the learned tensors it trains,
        #    summed over this rank's nets (through the unroll, for the unrolled family).
        mg = rt.objective.meta_gradient(rt.nets, mine, learned, batch, labels=rt.labels,
                                        schedule=schedule, window=window)
        # 5. One buffer, one all-reduce: [loss, stop flag, every gradient], summed over
        #    ranks, then divided by the number of nets of the iteration.
        names = [k for k, v in learned.items() if v.requires_grad]
        stop_flag = torch.full((1,), float(stop), dtype=mg.loss.dtype, device=rt.device)
        flat = rt.dist.all_reduce_sum_(torch.cat(
            [mg.loss.reshape(1), stop_flag, *(mg.grads[k].flatten() for k in names)]))
        n = len(inits)
        finite = torch.isfinite(flat).all()
        if rt.sync_every == 1 and not finite:  # CPU: stop before stepping on a NaN
            raise DivergedError(self._diverged_message(it, flat[0].item() / n))
        offset = 2
        for k in names:
            size = learned[k].numel()
            learned[k].grad = flat[offset:offset + size].view_as(learned[k]) / n
            offset += size
        # 6. RaT-BPTT's clipping: the meta-gradient's norm capped at k x its moving average
        #    (every rank holds the same sum, so every rank clips alike).
        o = self.cfg.optim
        if o.clip_ema_factor is not None:
            _, st.clip_average = clip_to_average_(
                [learned[k].grad for k in names], st.clip_average,
                factor=o.clip_ema_factor, decay=o.clip_ema_decay)
        # 7. The meta-optimiser on the synthetic set, then its step size's decay; learned labels
        #    are projected back onto >= 0 (a label's mass weighs its image's gradient).
        st.optimizer.step()
        st.scheduler.step()
        record = [flat[0] / n, finite.to(flat.dtype), flat[1]]
        lrs = lrs_from_raw(st.raw_lrs.detach())
        record += [lrs.min(), lrs.mean(), lrs.max()]
        if st.soft_labels is not None:
            with torch.no_grad():
                st.soft_labels.clamp_(min=0)
                mass = st.soft_labels.sum(-1)  # (S, n)
            record += [mass.min(), mass.mean(), mass.max()]
        return torch.stack([v.to(flat.dtype) for v in record])

    # --- the loop -----------------------------------------------------------------------------
    def loop(self) -> DistillResult:
        rt, st = self.rt, self.state
        self._emit("on_start", StartInfo(
            config=self.cfg, run_dir=self.folder.path, out=self.out,
            start_iteration=st.iteration, total_iterations=rt.total,
            iterations_per_epoch=rt.sampler.iterations_per_epoch, device=str(rt.device),
            model=self.cfg.model_name(rt.data.name),
            num_params=sum(p.numel() for p in rt.model.parameters()),
            warnings=list(self.warnings),
        ))
        t0, elapsed_before = time.perf_counter(), st.elapsed
        c0, cpu_before = time.process_time(), st.cpu_s
        pending = Pending()
        alone = rt.dist.world == 1
        try:
            # Ctrl-C, SIGTERM and SIGHUP all stop after this iteration (exit 128 + N).
            with stop_on_signals() as stop, _device.retain_freed_memory(rt.device):
                while st.iteration < rt.total:
                    record = self.outer_step(st.iteration, stop.requested)
                    st.iteration += 1
                    st.elapsed = elapsed_before + time.perf_counter() - t0
                    st.cpu_s = cpu_before + time.process_time() - c0
                    pending.add(st.iteration, record, st.elapsed,
                                st.optimizer.param_groups[0]["lr"], st.cpu_s)
                    # Ranks must agree on where to stop, so with several processes a
                    # Ctrl-C travels in the all-reduce and is acted on at a sync point.
                    if not self._sync_due(stop.requested and alone):
                        continue
                    stopping = self._flush(pending) or (stop.requested and alone)
                    if stopping and st.iteration < rt.total:
                        path = self.save_checkpoint()
                        raise Interrupted(
                            f"interrupted at iteration {st.iteration}/{rt.total}; checkpoint "
                            f"saved to {path}; continue with "
                            f"`dd distill --resume {self.folder.path}`", exit_code=stop.exit_code)
            st.elapsed = elapsed_before + time.perf_counter() - t0
            st.cpu_s = cpu_before + time.process_time() - c0
            self.save_checkpoint()
            bundle = make_bundle(self.rt, self.state, self.source)
            if rt.dist.is_main:
                self._write_bundle(bundle)
            # Leaving one by one can abort a gloo process mid-teardown: leave together
            # (these ends are reached by every rank at the same iteration).
            rt.dist.barrier()
        except (DivergedError, Interrupted):
            rt.dist.barrier()
            raise
        finally:
            rt.dist.close()
        return DistillResult(
            bundle=bundle, bundle_path=self.out, run_dir=self.folder.path,
            iterations=st.iteration, final_loss=st.last_loss, elapsed=st.elapsed,
            evals=[EvalInfo(**{"split": rt.eval_split, **e}) for e in st.evals],
        )

    def _sync_due(self, local_stop: bool) -> bool:
        r, it = self.cfg.run, self.state.iteration
        return local_stop or it % self.rt.sync_every == 0 or it == self.rt.total or any(
            every and it % every == 0
            for every in (r.log_every, r.eval_every, r.checkpoint_every, r.snapshot_every))

    def _flush(self, pending: Pending) -> bool:
        """Read the pending iterations (one host sync), report them; True if asked to stop.

        A non-finite loss or gradient raises here, before any checkpoint can hold it.
        """
        stop = False
        for it, v, elapsed, meta_lr, cpu_s in pending.drain():
            if v[FINITE] != 1.0:
                raise DivergedError(self._diverged_message(it - 1, v[LOSS]))
            self.state.last_loss = v[LOSS]
            stop = stop or v[STOP] > 0
            mass = (v[MASS_MIN], v[MASS_MEAN], v[MASS_MAX]) if len(v) > MASS_MAX else (None,) * 3
            self._after_iteration(IterationInfo(
                iteration=it, total=self.rt.total, loss=v[LOSS], lr_min=v[LR_MIN],
                lr_mean=v[LR_MEAN], lr_max=v[LR_MAX], meta_lr=meta_lr, elapsed=elapsed,
                cpu_s=cpu_s,
                label_mass_min=mass[0], label_mass_mean=mass[1], label_mass_max=mass[2]))
        return stop

    def _diverged_message(self, it: int, loss: float) -> str:
        ckpt, meta_lr = self.folder.path / CHECKPOINT_NAME, self.cfg.optim.meta_lr
        where = (
            f"the last good checkpoint {ckpt} is intact; continue with a lower meta lr: "
            f"`dd distill --resume {self.folder.path} --meta-lr {meta_lr / 2:g}`"
            if ckpt.exists()
            else f"no checkpoint was written yet; rerun with a lower --meta-lr (e.g. {meta_lr / 2:g})"
        )
        return f"outer loss became {loss} at iteration {it + 1}; {where}"

    def _after_iteration(self, info: IterationInfo) -> None:
        r, it = self.cfg.run, info.iteration
        self._emit("on_iteration", info)
        if r.log_every and (it % r.log_every == 0 or it == self.rt.total):
            mass = ({"label_mass_mean": info.label_mass_mean}
                    if info.label_mass_mean is not None else {})
            self.folder.log({"iteration": it, "loss": info.loss, "lr_min": info.lr_min,
                             "lr_mean": info.lr_mean, "lr_max": info.lr_max, **mass,
                             "meta_lr": info.meta_lr, "elapsed": round(info.elapsed, 3),
                             "cpu_s": round(info.cpu_s, 3)})
        if not self.rt.dist.is_main or it != self.state.iteration:
            return  # evaluate and checkpoint the state the sync point left, on rank 0
        if r.eval_every and (it % r.eval_every == 0 or it == self.rt.total):
            ev = EvalInfo(iteration=it, accuracies=self.rt.quick_eval(self.state.learned,
                                                                      self.source),
                          split=self.rt.eval_split)
            self.state.evals.append({"iteration": ev.iteration, "accuracies": ev.accuracies,
                                     "split": ev.split})
            if r.keep_best and (self.state.best is None or ev.mean > self.state.best["score"]):
                self.state.best = {"iteration": it, "score": ev.mean,
                                   **{k: v.detach().cpu().clone()
                                      for k, v in self.state.learned.items()}}
            self.folder.log({"iteration": it, ev.key: ev.mean, f"{ev.key}s": ev.accuracies,
                             "elapsed": round(info.elapsed, 3), "cpu_s": round(info.cpu_s, 3)})
            self._emit("on_eval", ev)
        if r.snapshot_every and (it % r.snapshot_every == 0 or it == self.rt.total):
            self.folder.snapshot(it, self.state.learned)
        if (r.snapshot_every and it % r.snapshot_every == 0) or it == self.rt.total:
            self._emit("on_snapshot", self._snapshot_info(it))
        if r.checkpoint_every and it % r.checkpoint_every == 0 and it < self.rt.total:
            self.save_checkpoint()

    # --- outputs --------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        path = self.folder.checkpoint(self.state)
        self._emit("on_checkpoint", path)
        return path

    def _write_bundle(self, bundle) -> None:
        try:
            bundle.save(self.out)
        except OSError as exc:  # a full disk, a folder gone: the checkpoint has it all
            raise OutputError(
                f"couldn't write the bundle to {self.out} ({exc.strerror or exc}); the run's "
                f"checkpoint in {self.folder.path} is intact: write the bundle elsewhere with "
                f"`dd distill --resume {self.folder.path} -o OTHER.safetensors`") from None

    def _snapshot_info(self, it: int) -> SnapshotInfo | None:
        if self.callbacks is None or not hasattr(self.callbacks, "on_snapshot"):
            return None  # copying the set to the host costs a sync; nobody listens
        d, cpu = self.rt.data, {k: v.detach().cpu() for k, v in self.state.learned.items()}
        return SnapshotInfo(
            iteration=it, images=cpu["images"], pixels=d.denormalize(cpu["images"]),
            lrs=lrs_from_raw(cpu["raw_lrs"]), labels=self.rt.labels.cpu(),
            soft_labels=cpu.get("soft_labels"), classes=list(d.classes))

    def _emit(self, name: str, payload: Any) -> None:
        fn = getattr(self.callbacks, name, None)
        if fn is not None:
            fn(payload)
