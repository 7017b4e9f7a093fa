"""The distillation loop: outer iterations, checkpoints, resume, events.

The engine never draws anything. It reports through callbacks (``on_start``,
``on_iteration``, ``on_eval``, ``on_checkpoint``); the CLI renders them.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import _io
from ._checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from ._inits import FixedInit, derive_seed, init_params, make_init_source
from ._objectives import make_objective
from ._batches import BatchSampler, augment_batch
from ._replay import accuracy, replay
from .bundle import Bundle
from .config import DistillConfig
from .data import RealData, load_dataset
from .errors import ConfigError, DivergedError, Interrupted
from .models import check_functional, create_model
from .unroll import meta_gradient, softplus_inverse

# Settings a resumed run may change; everything else must stay as the run began.
RESUMABLE_OVERRIDES = {
    ("optim", "lr"), ("optim", "iterations"), ("optim", "real_epochs"),
    ("run", "checkpoint_every"), ("run", "eval_every"), ("run", "eval_nets"),
    ("run", "log_every"), ("run", "device"), ("data", "data_root"),
}


@dataclass
class StartInfo:
    config: DistillConfig
    run_dir: Path
    out: Path
    start_iteration: int
    total_iterations: int
    iterations_per_epoch: int
    device: str
    model: str
    num_params: int


@dataclass
class IterationInfo:
    iteration: int  # completed outer iterations, 1-based
    total: int
    loss: float
    lr_min: float
    lr_mean: float
    lr_max: float
    meta_lr: float  # Adam's current (decayed) step size
    elapsed: float  # seconds in this process


@dataclass
class EvalInfo:
    iteration: int
    accuracies: list[float]

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)


@dataclass
class DistillResult:
    """What ``distill`` returns: the bundle (also saved at ``bundle_path``) and run facts."""

    bundle: Bundle
    bundle_path: Path
    run_dir: Path
    iterations: int
    final_loss: float
    elapsed: float
    evals: list[EvalInfo] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is available here")
    return device


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

    Example:
        >>> from ddcli import DistillConfig, distill
        >>> cfg = DistillConfig.from_dict({"optim": {"iterations": 10}})
        >>> result = distill(cfg, out="m.safetensors")  # doctest: +SKIP
    """
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
) -> DistillResult:
    """Continue an interrupted run from its last checkpoint.

    ``overrides`` may change only the budget, the meta learning rate, logging, the data
    root and the device, e.g. ``{"optim": {"lr": 0.005}}`` after a divergence.
    """
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir)
    cfg_dict = state["config"]
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
    run = _Run(cfg, Path(state["out"]), run_dir, data, callbacks)
    run.restore(state)
    return run.loop()


class _Run:
    """State of one run in this process. Built fresh or from a checkpoint."""

    def __init__(self, cfg: DistillConfig, out: Path, run_dir: Path, data, callbacks) -> None:
        self.cfg, self.out, self.run_dir, self.callbacks = cfg, out, run_dir, callbacks
        self.device = resolve_device(cfg.run.device)
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
            [self.images, self.raw_lrs], lr=o.lr, betas=(o.beta1, o.beta2)
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=self.decay_iters, gamma=o.decay_factor
        )

    def start_fresh(self) -> None:
        cfg, d = self.cfg, self.data
        s, k = cfg.synth, cfg.synth.images_per_class
        n = d.num_classes * k
        gen = torch.Generator().manual_seed(derive_seed(cfg.init.seed, "images"))
        # Images start as N(0, 1) in normalised space, like the reference.
        images = torch.randn(s.steps, n, d.in_channels, d.image_size, d.image_size, generator=gen)
        self.images = images.to(self.device).requires_grad_(True)  # (S, n, C, H, W)
        # Class-major labels inside each step: [0]*k + [1]*k + ...
        labels = torch.arange(d.num_classes).repeat_interleave(k)
        self.labels = labels.expand(s.steps, n).contiguous().to(self.device)  # (S, n)
        # Rates are stored raw and used through softplus; the raw init is the inverse
        # softplus of distill_lr, so every step starts at exactly distill_lr.
        raw = softplus_inverse(s.distill_lr).repeat(cfg.total_steps)
        self.raw_lrs = raw.to(self.device).requires_grad_(True)  # (T,)
        self._build_optim()
        self.source = make_init_source(cfg, self.model, self.device)
        self.aug_gen = torch.Generator().manual_seed(derive_seed(cfg.init.seed, "augment"))
        self.iteration = 0
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        _io.write_json(self.run_dir / "config.json", cfg.to_dict())

    def restore(self, state: dict[str, Any]) -> None:
        self.images = state["images"].to(self.device).requires_grad_(True)
        self.raw_lrs = state["raw_lrs"].to(self.device).requires_grad_(True)
        self.labels = state["labels"].to(self.device)
        self._build_optim()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        new_lr = self.cfg.optim.lr
        if state["config"]["optim"]["lr"] != new_lr or self.scheduler.base_lrs[0] != new_lr:
            # A resumed run with a new --lr keeps the decay schedule's position.
            self.scheduler.base_lrs = [new_lr for _ in self.scheduler.base_lrs]
            for group in self.optimizer.param_groups:
                group["initial_lr"] = new_lr
                group["lr"] = new_lr * self.cfg.optim.decay_factor ** (
                    state["iteration"] // self.decay_iters)
        self.scheduler.step_size = self.decay_iters
        if state.get("fixed_params") is not None:
            self.source = FixedInit({k: v.to(self.device) for k, v in state["fixed_params"].items()})
        else:
            self.source = make_init_source(self.cfg, self.model, self.device)
        self.aug_gen = torch.Generator()
        self.aug_gen.set_state(state["aug_rng"])
        self.iteration = state["iteration"]
        self.elapsed_before = state.get("elapsed", 0.0)
        self.last_loss = state.get("last_loss", float("nan"))
        self.evals = [EvalInfo(**e) for e in state.get("evals", [])]
        _trim_metrics(self.run_dir / "metrics.jsonl", self.iteration)
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
        with _stop_on_sigint() as stop:
            while self.iteration < self.total:
                it = self.iteration
                loss = self._outer_step(it)
                self.iteration = it + 1
                self.last_loss = loss
                elapsed = self.elapsed_before + time.perf_counter() - t0
                self.elapsed_now = elapsed
                self._after_iteration(loss, elapsed)
                if stop.requested and self.iteration < self.total:
                    path = self.save_checkpoint()
                    raise Interrupted(
                        f"interrupted at iteration {self.iteration}/{self.total}; checkpoint "
                        f"saved to {path}; continue with `dd distill --resume {self.run_dir}`"
                    )
        self.elapsed_now = self.elapsed_before + time.perf_counter() - t0
        self.save_checkpoint()
        bundle = self.make_bundle()
        bundle.save(self.out)
        return DistillResult(
            bundle=bundle, bundle_path=self.out, run_dir=self.run_dir, iterations=self.iteration,
            final_loss=self.last_loss, elapsed=self.elapsed_now, evals=self.evals,
        )

    def _outer_step(self, it: int) -> float:
        cfg = self.cfg
        idx = self.sampler.indices(it).to(self.device)
        x, y = self.train_x[idx], self.objective.relabel(self.train_y[idx])
        if cfg.data.augment:
            x = augment_batch(x, self.aug_gen)
        inits = self.source.sample(it)
        total_loss = torch.zeros((), device=self.device)
        g_img = torch.zeros_like(self.images)
        g_lr = torch.zeros_like(self.raw_lrs)
        for params0 in inits:
            loss, gi, gl = meta_gradient(
                self.model, params0, self.images, self.labels, self.raw_lrs, x, y,
                mode=cfg.run.unroll_memory,
            )
            total_loss += loss
            g_img += gi
            g_lr += gl
        n = len(inits)
        loss = (total_loss / n).item()
        if not (math.isfinite(loss) and torch.isfinite(g_img).all() and torch.isfinite(g_lr).all()):
            raise DivergedError(self._diverged_message(it, loss))
        self.images.grad = g_img / n
        self.raw_lrs.grad = g_lr / n
        self.optimizer.step()
        self.scheduler.step()
        return loss

    def _diverged_message(self, it: int, loss: float) -> str:
        ckpt = self.run_dir / CHECKPOINT_NAME
        where = (
            f"the last good checkpoint {ckpt} is intact; continue with a lower meta lr: "
            f"`dd distill --resume {self.run_dir} --lr {self.cfg.optim.lr / 2:g}`"
            if ckpt.exists()
            else f"no checkpoint was written yet; rerun with a lower --lr (e.g. {self.cfg.optim.lr / 2:g})"
        )
        return f"outer loss became {loss} at iteration {it + 1}; {where}"

    def _after_iteration(self, loss: float, elapsed: float) -> None:
        r, it = self.cfg.run, self.iteration
        lrs = F.softplus(self.raw_lrs.detach())
        info = IterationInfo(
            iteration=it, total=self.total, loss=loss, lr_min=lrs.min().item(),
            lr_mean=lrs.mean().item(), lr_max=lrs.max().item(),
            meta_lr=self.optimizer.param_groups[0]["lr"], elapsed=elapsed,
        )
        self._emit("on_iteration", info)
        if r.log_every and (it % r.log_every == 0 or it == self.total):
            self._log_metrics({"iteration": it, "loss": loss, "lr_min": info.lr_min,
                               "lr_mean": info.lr_mean, "lr_max": info.lr_max,
                               "meta_lr": info.meta_lr, "elapsed": round(elapsed, 3)})
        if r.eval_every and (it % r.eval_every == 0 or it == self.total):
            ev = EvalInfo(iteration=it, accuracies=self.quick_eval())
            self.evals.append(ev)
            self._log_metrics({"iteration": it, "test_acc": ev.mean, "test_accs": ev.accuracies,
                               "elapsed": round(elapsed, 3)})
            self._emit("on_eval", ev)
        if r.checkpoint_every and it % r.checkpoint_every == 0 and it < self.total:
            self.save_checkpoint()

    def quick_eval(self) -> list[float]:
        """Replay accuracy on the full test set: the fixed init, or a few fixed random nets."""
        lrs = F.softplus(self.raw_lrs.detach())
        images = self.images.detach()
        if self.source.fixed_params is not None:
            inits = [self.source.fixed_params]
        else:
            inits = [
                {k: v.to(self.device) for k, v in init_params(
                    self.model, self.cfg.model.init_scheme, derive_seed(self.cfg.init.seed, "eval", j)
                ).items()}
                for j in range(self.cfg.run.eval_nets)
            ]
        accs = []
        for p0 in inits:
            final, _ = replay(self.model, p0, images, self.labels, lrs)
            accs.append(accuracy(self.model, final, self.test_x, self.test_y))
        return accs

    # --- outputs ----------------------------------------------------------------------------
    def _log_metrics(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def save_checkpoint(self) -> Path:
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
            "out": str(self.out),
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
            extra={"init": self.source.describe(), "objective": self.objective.describe()},
            init_params=(
                {k: v.cpu() for k, v in self.source.fixed_params.items()}
                if self.source.fixed_params is not None else None
            ),
        )

    def _emit(self, name: str, payload: Any) -> None:
        fn = getattr(self.callbacks, name, None)
        if fn is not None:
            fn(payload)


def _trim_metrics(path: Path, iteration: int) -> None:
    """Drop log lines past the checkpoint, so a resumed run doesn't log them twice."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
    _io.write_text(path, "".join(line + "\n" for line in keep))


class _StopFlag:
    requested = False


@contextlib.contextmanager
def _stop_on_sigint():
    """First Ctrl-C asks the loop to stop after the current iteration; a second one kills."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
