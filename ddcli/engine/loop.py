"""The distillation loop: outer iterations, checkpoints, resume, events.

The engine never draws anything. It reports through callbacks (``on_start``,
``on_iteration``, ``on_eval``, ``on_checkpoint``); the CLI renders them.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ddcli.infra import device as _device
from ddcli.infra import distributed as _distributed
from ddcli.infra import io as _io
from ddcli.core.nets import NetsMetaGradient
from ddcli.infra.device import resolve_device
from ddcli.engine.events import DistillResult, EvalInfo, IterationInfo, StartInfo
from ddcli.engine._loop import FINITE, LOSS, LR_MAX, LR_MEAN, LR_MIN, STOP, Pending, trim_metrics
from ddcli.infra.signals import stop_on_signals  # h3: SIGINT, SIGTERM, SIGHUP alike
from ddcli.engine.state import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from ddcli.engine.inits import FixedInit, derive_seed, init_params, initial_images, make_init_source
from ddcli.core.objectives import make_objective
from ddcli.engine.batches import BatchSampler, augment_batch
from ddcli.core._replay import accuracy, replay
from ddcli.bundle import Bundle
from ddcli.config import DistillConfig
from ddcli.data import RealData, load_dataset
from ddcli.errors import ConfigError, DivergedError, Interrupted
from ddcli.models import check_functional, create_model
from ddcli.core.unroll import softplus_inverse

# Settings a resumed run may change; everything else must stay as the run began.
RESUMABLE_OVERRIDES = {
    ("optim", "meta_lr"), ("optim", "iterations"), ("optim", "real_epochs"),
    ("run", "checkpoint_every"), ("run", "snapshot_every"), ("run", "eval_every"),
    ("run", "eval_nets"),
    ("run", "log_every"), ("run", "device"), ("data", "data_root"),
    # These change speed and memory, not the result (beyond float rounding).
    ("run", "nproc"), ("run", "unroll_memory"), ("run", "batch_nets"),
}


def default_out(cfg: DistillConfig) -> Path:
    dataset = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.data.dataset.split(":")[-1]).strip("_.")
    s = cfg.synth
    return Path(
        f"{dataset or 'folder'}-{cfg.model_name()}-{cfg.init.mode}"
        f"-s{s.steps}e{s.epochs}k{s.images_per_class}.safetensors"
    )


def default_run_dir(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".safetensors") + ".run")


def distill(
    cfg: DistillConfig,
    *,
    out: str | Path | None = None,
    run_dir: str | Path | None = None,
    callbacks: Any = None,
    data: RealData | None = None,
    force: bool = False,
    progress: bool = False,
) -> DistillResult:
    """Learn a synthetic dataset and its learning rates; save and return the bundle.

    Args:
        cfg: the run's configuration (validated here).
        out: bundle path; default a descriptive name in the current folder.
        run_dir: folder for config.json, checkpoint.pt and metrics.jsonl; default
            ``<out stem>.run`` beside the bundle.
        callbacks: any object with some of ``on_start``, ``on_iteration``, ``on_eval``,
            ``on_checkpoint``.
        data: preloaded real data (skips ``load_dataset``), mainly for tests.
        force: start afresh even if ``run_dir`` holds a checkpoint.
        progress: without ``callbacks``, show the CLI's progress display on stderr
            (``ddcli.progress.DistillProgress``).

    Example:
        >>> from ddcli import DistillConfig, distill
        >>> cfg = DistillConfig.from_dict({"optim": {"iterations": 10}})
        >>> result = distill(cfg, out="m.safetensors")  # doctest: +SKIP
    """
    if progress and callbacks is None:  # h3: the CLI's display, for the Python API
        from ddcli.progress import DistillProgress

        with DistillProgress() as display:
            return distill(cfg, out=out, run_dir=run_dir, callbacks=display, data=data, force=force)
    cfg.validate()
    out = Path(out) if out else default_out(cfg)
    run_dir = Path(run_dir) if run_dir else default_run_dir(out)
    ckpt = run_dir / CHECKPOINT_NAME
    if ckpt.exists() and not force:
        raise ConfigError(
            f"{run_dir} already holds a checkpoint; continue it with "
            f"`dd distill --resume {run_dir}`, or pass --force to start over"
        )
    run = _Run(cfg, out, run_dir, data, callbacks)
    run.start_fresh()
    return run.loop()


def resume(
    run_dir: str | Path,
    *,
    overrides: dict[str, dict[str, Any]] | None = None,
    callbacks: Any = None,
    data: RealData | None = None,
    progress: bool = False,
) -> DistillResult:
    """Continue an interrupted run from its last checkpoint.

    ``overrides`` may change only the budget, the meta learning rate, logging, the data
    root and the device, e.g. ``{"optim": {"meta_lr": 0.005}}`` after a divergence.
    ``progress`` is as for ``distill``.
    """
    if progress and callbacks is None:  # h3: the CLI's display, for the Python API
        from ddcli.progress import DistillProgress

        with DistillProgress() as display:
            return resume(run_dir, overrides=overrides, callbacks=display, data=data)
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir)
    # Through from_dict and back: run folders from earlier versions use older key names.
    cfg_dict = DistillConfig.from_dict(state["config"]).to_dict()
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if (section, key) not in RESUMABLE_OVERRIDES:
                if cfg_dict.get(section, {}).get(key) != value:
                    raise ConfigError(
                        f"--{key.replace('_', '-')} can't change when resuming; the run was "
                        f"made with {cfg_dict.get(section, {}).get(key)!r}"
                    )
                continue
            cfg_dict.setdefault(section, {})[key] = value
    if overrides and "optim" in overrides and "iterations" not in overrides["optim"] and (
        "real_epochs" in overrides["optim"]
    ):
        cfg_dict["optim"]["iterations"] = None
    cfg = DistillConfig.from_dict(cfg_dict).validate()
    run = _Run(cfg, _resumed_out(Path(state["out"]), run_dir), run_dir, data, callbacks)
    run.restore(state)
    return run.loop()


def _resumed_out(out: Path, run_dir: Path) -> Path:
    """Where a resumed run writes its bundle: where the run started it (checkpoints store
    an absolute path), or beside the run folder if that place is gone (the run folder was
    moved) or the path is relative (checkpoints from before ddcli 0.1 stored it as given).
    """
    if out.is_absolute() and out.parent.is_dir():
        return out
    return run_dir.parent / out.name


class _Run:
    """State of one run in this process. Built fresh or from a checkpoint."""

    def __init__(self, cfg: DistillConfig, out: Path, run_dir: Path, data, callbacks) -> None:
        self.cfg, self.out, self.run_dir, self.callbacks = cfg, out, run_dir, callbacks
        _, world, local_rank = _distributed.env_world()
        _distributed.check_config(cfg, world)
        self.device = resolve_device(cfg.run.device, local_rank=local_rank if world > 1 else None)
        self.dist = _distributed.setup(self.device)
        if not self.dist.is_main:
            self.callbacks = None  # only rank 0 reports and writes
        self.sync_every = _device.sync_interval(self.device, cfg.run.log_every)
        # Random nets are drawn on the CPU and copied over without a host sync.
        self.init_device = torch.device("cpu") if cfg.init.mode == "random" else self.device
        self.data = data if data is not None else load_dataset(
            cfg.data.dataset, root=cfg.data.data_root
        )
        d = self.data
        self.model = create_model(
            cfg.model_name(d.name), in_channels=d.in_channels, num_classes=d.num_classes,
            image_size=d.image_size, **cfg.model.kwargs,
        )
        check_functional(self.model)
        self.model.to(self.device)
        self.nets = NetsMetaGradient(self.model, mode=cfg.run.unroll_memory,
                                     batch=cfg.run.batch_nets,
                                     inner_threads=_device.inner_threads(self.device))
        self.train_x, self.train_y = d.train_x.to(self.device), d.train_y.to(self.device)
        self.test_x, self.test_y = d.test_x.to(self.device), d.test_y.to(self.device)
        b = cfg.data.batch_size
        self.sampler = BatchSampler(self.train_x.shape[0], b, derive_seed(cfg.init.seed, "batches"))
        o = cfg.optim
        ipe = self.sampler.iterations_per_epoch
        self.total = o.iterations if o.iterations is not None else max(1, round(o.real_epochs * ipe))
        self.decay_iters = max(1, round(o.decay_every * ipe))
        self.objective = make_objective(cfg, d.num_classes)
        self.evals: list[EvalInfo] = []
        self.elapsed_before = 0.0
        self.last_loss = float("nan")

    # --- construction -------------------------------------------------------------------
    def _build_optim(self) -> None:
        o = self.cfg.optim
        self.optimizer = torch.optim.Adam(
            [self.images, self.raw_lrs], lr=o.meta_lr, betas=(o.beta1, o.beta2)
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=self.decay_iters, gamma=o.decay_factor
        )

    def start_fresh(self) -> None:
        cfg, d = self.cfg, self.data
        s, k = cfg.synth, cfg.synth.images_per_class
        n = d.num_classes * k
        images = initial_images((s.steps, n, d.in_channels, d.image_size, d.image_size),
                                cfg.init.seed)
        self.images = images.to(self.device).requires_grad_(True)  # (S, n, C, H, W)
        # Class-major labels inside each step: [0]*k + [1]*k + ...
        labels = torch.arange(d.num_classes).repeat_interleave(k)
        self.labels = labels.expand(s.steps, n).contiguous().to(self.device)  # (S, n)
        # Rates are stored raw and used through softplus; the raw init is the inverse
        # softplus of step_lr, so every step starts at exactly step_lr.
        raw = softplus_inverse(s.step_lr).repeat(cfg.total_steps)
        self.raw_lrs = raw.to(self.device).requires_grad_(True)  # (T,)
        self.dist.broadcast_([self.images, self.raw_lrs])
        self._build_optim()
        self.source = make_init_source(cfg, self.model, self.init_device)
        self.aug_gen = torch.Generator().manual_seed(derive_seed(cfg.init.seed, "augment"))
        self.iteration = 0
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            _io.write_json(self.run_dir / "config.json", cfg.to_dict())

    def restore(self, state: dict[str, Any]) -> None:
        self.images = state["images"].to(self.device).requires_grad_(True)
        self.raw_lrs = state["raw_lrs"].to(self.device).requires_grad_(True)
        self.labels = state["labels"].to(self.device)
        self.dist.broadcast_([self.images, self.raw_lrs])
        self._build_optim()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        new_lr = self.cfg.optim.meta_lr
        old_lr = DistillConfig.from_dict(state["config"]).optim.meta_lr
        if old_lr != new_lr or self.scheduler.base_lrs[0] != new_lr:
            # A resumed run with a new --meta-lr keeps the decay schedule's position.
            self.scheduler.base_lrs = [new_lr for _ in self.scheduler.base_lrs]
            for group in self.optimizer.param_groups:
                group["initial_lr"] = new_lr
                group["lr"] = new_lr * self.cfg.optim.decay_factor ** (
                    state["iteration"] // self.decay_iters)
        self.scheduler.step_size = self.decay_iters
        # A pretrained-fixed run reloads its pool net, so its bundle keeps the pool's record.
        if state.get("fixed_params") is not None and self.cfg.init.mode == "fixed":
            self.source = FixedInit({k: v.to(self.device) for k, v in state["fixed_params"].items()})
        else:
            self.source = make_init_source(self.cfg, self.model, self.init_device)
        self.aug_gen = torch.Generator()
        self.aug_gen.set_state(state["aug_rng"])
        self.iteration = state["iteration"]
        self.elapsed_before = state.get("elapsed", 0.0)
        self.last_loss = state.get("last_loss", float("nan"))
        self.evals = [EvalInfo(**e) for e in state.get("evals", [])]
        if self.dist.is_main:
            trim_metrics(self.run_dir / "metrics.jsonl", self.iteration)
            _io.write_json(self.run_dir / "config.json", self.cfg.to_dict())

    # --- the loop -------------------------------------------------------------------------
    def loop(self) -> DistillResult:
        cfg = self.cfg
        self._emit("on_start", StartInfo(
            config=cfg, run_dir=self.run_dir, out=self.out, start_iteration=self.iteration,
            total_iterations=self.total, iterations_per_epoch=self.sampler.iterations_per_epoch,
            device=str(self.device), model=cfg.model_name(self.data.name),
            num_params=sum(p.numel() for p in self.model.parameters()),
        ))
        t0 = time.perf_counter()
        pending = Pending()
        try:
            # h3: Ctrl-C, SIGTERM and SIGHUP all stop after this iteration (exit 128 + N)
            with stop_on_signals() as stop, _device.retain_freed_memory(self.device):
                while self.iteration < self.total:
                    record = self._outer_step(self.iteration, stop.requested)
                    self.iteration += 1
                    self.elapsed_now = self.elapsed_before + time.perf_counter() - t0
                    pending.add(self.iteration, record, self.elapsed_now,
                                self.optimizer.param_groups[0]["lr"])
                    # Ranks must agree on where to stop, so with several processes a
                    # Ctrl-C travels in the all-reduce and is acted on at a sync point.
                    alone = self.dist.world == 1
                    if not self._sync_due(stop.requested and alone):
                        continue
                    stopping = self._flush(pending) or (stop.requested and alone)
                    if stopping and self.iteration < self.total:
                        path = self.save_checkpoint()
                        raise Interrupted(
                            f"interrupted at iteration {self.iteration}/{self.total}; checkpoint "
                            f"saved to {path}; continue with `dd distill --resume {self.run_dir}`",
                            exit_code=stop.exit_code,  # h3: 130, 143 or 129
                        )
            self.elapsed_now = self.elapsed_before + time.perf_counter() - t0
            self.save_checkpoint()
            bundle = self.make_bundle()
            if self.dist.is_main:
                bundle.save(self.out)
            # Leaving one by one can abort a gloo process mid-teardown: leave together
            # (these ends are reached by every rank at the same iteration).
            self.dist.barrier()
        except (DivergedError, Interrupted):
            self.dist.barrier()
            raise
        finally:
            self.dist.close()
        return DistillResult(
            bundle=bundle, bundle_path=self.out, run_dir=self.run_dir, iterations=self.iteration,
            final_loss=self.last_loss, elapsed=self.elapsed_now, evals=self.evals,
        )

    def _outer_step(self, it: int, stop: bool) -> torch.Tensor:
        """One Adam step on the images and rates; returns the iteration's record (on device)."""
        cfg = self.cfg
        idx = _device.to_device(self.sampler.indices(it), self.device)
        x, y = self.train_x[idx], self.objective.relabel(self.train_y[idx])
        if cfg.data.augment:
            x = augment_batch(x, self.aug_gen)
        inits = self.source.sample(it)  # every rank draws all; each uses its share
        mine = [_device.to_device(p, self.device) for p in self.dist.share(inits)]
        loss, g_img, g_lr = self.nets(mine, self.images, self.labels, self.raw_lrs, x, y)
        # One buffer, one all-reduce: [loss, stop flag, d/d images, d/d raw rates], each
        # summed over this rank's nets, then over ranks, then divided by all the nets.
        stop_flag = torch.full((1,), float(stop), dtype=loss.dtype, device=self.device)
        flat = self.dist.all_reduce_sum_(torch.cat([loss.reshape(1), stop_flag, g_img.flatten(), g_lr]))
        n, k = len(inits), g_img.numel()
        finite = torch.isfinite(flat).all()
        if self.sync_every == 1 and not finite:  # CPU: stop before stepping on a NaN
            raise DivergedError(self._diverged_message(it, flat[0].item() / n))
        self.images.grad = flat[2 : 2 + k].view_as(self.images) / n
        self.raw_lrs.grad = flat[2 + k :] / n
        self.optimizer.step()
        self.scheduler.step()
        lrs = F.softplus(self.raw_lrs.detach())
        return torch.stack([flat[0] / n, finite.to(flat.dtype), flat[1], lrs.min(), lrs.mean(),
                            lrs.max()])

    def _sync_due(self, local_stop: bool) -> bool:
        r, it = self.cfg.run, self.iteration
        return local_stop or it % self.sync_every == 0 or it == self.total or any(
            every and it % every == 0
            for every in (r.log_every, r.eval_every, r.checkpoint_every, r.snapshot_every))

    def _flush(self, pending: Pending) -> bool:
        """Read the pending iterations (one host sync), report them; True if asked to stop.

        A non-finite loss or gradient raises here, before any checkpoint can hold it.
        """
        stop = False
        for it, v, elapsed, meta_lr in pending.drain():
            if v[FINITE] != 1.0:
                raise DivergedError(self._diverged_message(it - 1, v[LOSS]))
            self.last_loss = v[LOSS]
            stop = stop or v[STOP] > 0
            self._after_iteration(it, v, elapsed, meta_lr)
        return stop

    def _diverged_message(self, it: int, loss: float) -> str:
        ckpt = self.run_dir / CHECKPOINT_NAME
        where = (
            f"the last good checkpoint {ckpt} is intact; continue with a lower meta lr: "
            f"`dd distill --resume {self.run_dir} --meta-lr {self.cfg.optim.meta_lr / 2:g}`"
            if ckpt.exists()
            else f"no checkpoint was written yet; rerun with a lower --meta-lr (e.g. {self.cfg.optim.meta_lr / 2:g})"
        )
        return f"outer loss became {loss} at iteration {it + 1}; {where}"

    def _after_iteration(self, it: int, v: list[float], elapsed: float, meta_lr: float) -> None:
        r, loss = self.cfg.run, v[LOSS]
        info = IterationInfo(
            iteration=it, total=self.total, loss=loss, lr_min=v[LR_MIN], lr_mean=v[LR_MEAN],
            lr_max=v[LR_MAX], meta_lr=meta_lr, elapsed=elapsed,
        )
        self._emit("on_iteration", info)
        if r.log_every and (it % r.log_every == 0 or it == self.total):
            self._log_metrics({"iteration": it, "loss": loss, "lr_min": info.lr_min,
                               "lr_mean": info.lr_mean, "lr_max": info.lr_max,
                               "meta_lr": info.meta_lr, "elapsed": round(elapsed, 3)})
        if not self.dist.is_main or it != self.iteration:
            return  # evaluate and checkpoint the state the sync point left, on rank 0
        if r.eval_every and (it % r.eval_every == 0 or it == self.total):
            ev = EvalInfo(iteration=it, accuracies=self.quick_eval())
            self.evals.append(ev)
            self._log_metrics({"iteration": it, "test_acc": ev.mean, "test_accs": ev.accuracies,
                               "elapsed": round(elapsed, 3)})
            self._emit("on_eval", ev)
        if r.snapshot_every and (it % r.snapshot_every == 0 or it == self.total):
            # Small (images + rates) files that `dd visualize --run` draws as an evolution.
            _io.torch_save(self.run_dir / "snapshots" / f"iter_{it:06d}.pt", {
                "iteration": it, "images": self.images.detach().cpu(),
                "raw_lrs": self.raw_lrs.detach().cpu()})
        if r.checkpoint_every and it % r.checkpoint_every == 0 and it < self.total:
            self.save_checkpoint()

    def quick_eval(self) -> list[float]:
        """Replay accuracy on the full test set: the fixed init, or a few fixed random nets."""
        lrs = F.softplus(self.raw_lrs.detach())
        images = self.images.detach()
        if self.source.fixed_params is not None:
            inits = [self.source.fixed_params]
        elif (pool_nets := self.source.eval_inits(self.cfg.run.eval_nets)) is not None:
            inits = pool_nets  # pretrained-random: held-out pool nets
        else:
            inits = [
                {k: v.to(self.device) for k, v in init_params(
                    self.model, self.cfg.model.init_scheme, derive_seed(self.cfg.init.seed, "eval", j)
                ).items()}
                for j in range(self.cfg.run.eval_nets)
            ]
        # Lazy import: ddcli.evaluate imports this module. All nets replay at once (vmap),
        # with the code `dd eval` uses, so both report the same numbers for the same weights.
        from ddcli.evaluate import replay_accuracies

        accs = replay_accuracies(self.model, inits, images, self.labels, lrs, self.test_x, self.test_y)
        return accs[-1].tolist()

    # --- outputs ----------------------------------------------------------------------------
    def _log_metrics(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def save_checkpoint(self) -> Path:
        if not self.dist.is_main:
            return self.run_dir / CHECKPOINT_NAME
        state = {
            "iteration": self.iteration,
            "images": self.images.detach().cpu(),
            "labels": self.labels.cpu(),
            "raw_lrs": self.raw_lrs.detach().cpu(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "aug_rng": self.aug_gen.get_state(),
            "fixed_params": (
                {k: v.cpu() for k, v in self.source.fixed_params.items()}
                if self.source.fixed_params is not None else None
            ),
            "config": self.cfg.to_dict(),
            "out": str(self.out.absolute()),  # so a resume from elsewhere writes it here
            "total_iterations": self.total,
            "elapsed": getattr(self, "elapsed_now", self.elapsed_before),
            "last_loss": self.last_loss,
            "evals": [{"iteration": e.iteration, "accuracies": e.accuracies} for e in self.evals],
        }
        path = save_checkpoint(self.run_dir, state)
        self._emit("on_checkpoint", path)
        return path

    def make_bundle(self) -> Bundle:
        d, cfg = self.data, self.cfg
        summary = {
            "iterations": self.iteration,
            "final_loss": self.last_loss,
            "elapsed_s": round(getattr(self, "elapsed_now", 0.0), 2),
            "device": str(self.device),
            "processes": self.dist.world,
            "nets_batched": self.nets.batched,
        }
        if self.evals:
            summary["last_eval"] = {"iteration": self.evals[-1].iteration,
                                    "test_acc": self.evals[-1].mean}
        return Bundle(
            images=self.images.detach().cpu(), labels=self.labels.cpu(),
            raw_lrs=self.raw_lrs.detach().cpu(), dataset=d.name, classes=list(d.classes),
            mean=tuple(d.mean), std=tuple(d.std), model=dict(self.model.ddcli_spec),
            init_scheme=cfg.model.init_scheme, init_mode=cfg.init.mode, seed=cfg.init.seed,
            epochs=cfg.synth.epochs, config=cfg.to_dict(), summary=summary,
            extra={"init": self.source.describe(), "objective": self.objective.describe(),
                   # adapt: nets pretrained on the source, distilled and tested on the target
                   "datasets": {"source": self.source.describe().get("pool_dataset", d.name),
                                "target": d.name}},
            init_params=(
                {k: v.cpu() for k, v in self.source.fixed_params.items()}
                if self.source.fixed_params is not None else None
            ),
        )

    def _emit(self, name: str, payload: Any) -> None:
        fn = getattr(self.callbacks, name, None)
        if fn is not None:
            fn(payload)
