"""What a run writes: its folder (config, metrics, snapshots, checkpoints) and the bundle."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddcli.bundle import Bundle
from ddcli.config import DistillConfig
from ddcli.engine.records import read_metrics, trim_metrics
from ddcli.engine.events import EvalInfo
from ddcli.engine.state import RunState, save_checkpoint
from ddcli.errors import ConfigError
from ddcli.infra import io as _io
from ddcli.models import model_label


def default_out(cfg: DistillConfig) -> Path:
    dataset = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.data.dataset.split(":")[-1]).strip("_.")
    model = model_label(cfg.model_name())  # your own model: its factory's name
    s = cfg.synth
    return Path(
        f"{dataset or 'folder'}-{model}-{cfg.init.mode}"
        f"-s{s.steps}e{s.epochs}k{s.images_per_class}.safetensors"
    )


def default_run_dir(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".safetensors") + ".run")


class RunFolder:
    """``config.json``, ``metrics.jsonl``, ``snapshots/`` and ``checkpoint.pt`` of a run.

    Only rank 0 writes (``enabled``); every write of a whole file is atomic.
    """

    def __init__(self, path: Path, *, enabled: bool) -> None:
        self.path, self.enabled = Path(path), enabled

    def start(self, cfg: DistillConfig, *, iteration: int,
              provenance: dict[str, Any] | None = None) -> None:
        """A fresh run empties the metrics log; a resumed one drops lines past its
        checkpoint, so nothing is logged twice. config.json gets this process's
        provenance beside the settings (it still reads as a config)."""
        if not self.enabled:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if iteration == 0:
            (self.path / "metrics.jsonl").unlink(missing_ok=True)
        else:
            trim_metrics(self.path / "metrics.jsonl", iteration)
        _io.write_json(self.path / "config.json", {**cfg.to_dict(), "provenance": provenance})

    def log(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def snapshot(self, iteration: int, learned: dict[str, Tensor]) -> None:
        """Small (images + rates) files that `dd visualize --run` draws as an evolution."""
        if self.enabled:
            _io.torch_save(self.path / "snapshots" / f"iter_{iteration:06d}.pt", {
                "iteration": iteration, **{k: v.detach().cpu() for k, v in learned.items()}})

    def checkpoint(self, state: RunState) -> Path:
        return save_checkpoint(self.path, state) if self.enabled else self.path / "checkpoint.pt"


def rewind_to_snapshot(state: RunState, run_dir: Path, path: Path) -> None:
    """``state`` with a snapshot's learned tensors (``RunFolder.snapshot`` wrote them),
    iteration, and the time and loss the metrics log recorded there."""
    try:
        snap = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ConfigError(f"can't read the snapshot {path}: {exc.strerror or exc}") from None
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"can't read the snapshot {path}: not a whole torch file "
                          f"({type(exc).__name__})") from None
    if not isinstance(snap, dict) or "iteration" not in snap or "images" not in snap:
        raise ConfigError(f"{path} is not a ddcli snapshot (no iteration and images)")
    if "soft_labels" not in snap and "labels" in snap and snap["labels"].is_floating_point():
        snap = {**snap, "soft_labels": snap["labels"]}  # written before the rename
    for name, current in state.learned.items():
        value = snap.get(name)
        if not isinstance(value, torch.Tensor) or value.shape != current.shape:
            raise ConfigError(f"{path} does not hold this run's {name} "
                              f"{tuple(current.shape)}: a snapshot of another run?")
        setattr(state, name, value.to(dtype=current.dtype, device=current.device))
    it = int(snap["iteration"])
    upto = [r for r in read_metrics(run_dir / "metrics.jsonl")
            if "loss" in r and r.get("iteration", 0) <= it]
    if upto:
        last = upto[-1]
        state.elapsed = float(last.get("elapsed", 0.0))
        state.cpu_s = float(last.get("cpu_s", 0.0))
        state.last_loss = float(last["loss"])
    state.iteration = it
    state.evals = [e for e in state.evals if e.get("iteration", 0) <= it]
    state.best = None


def make_bundle(rt, state: RunState, source) -> Bundle:
    """The bundle of a run's current state (``rt`` is the run's ``Runtime``)."""
    d, cfg = rt.data, rt.cfg
    summary = {
        "iterations": state.iteration,
        "final_loss": state.last_loss,
        "elapsed_s": round(state.elapsed, 2),
        "cpu_s": round(state.cpu_s, 2),
        "device": str(rt.device),
        "processes": rt.dist.world,
        "nets_batched": rt.nets.batched,
    }
    if state.evals:
        last = EvalInfo(**{"split": rt.eval_split, **state.evals[-1]})
        summary["last_eval"] = {"iteration": last.iteration, last.key: last.mean}
    chosen = {k: v.detach().cpu() for k, v in state.learned.items()}
    if cfg.run.keep_best and state.best is not None:
        # The set of the best validation accuracy, never the test set's choice.
        chosen = {k: state.best[k] for k in chosen}
        summary["selected"] = {"iteration": state.best["iteration"],
                               "validation_acc": state.best["score"],
                               "by": f"replay accuracy on {cfg.data.validation} held-out "
                                     "training images"}
    if cfg.data.validation:
        summary["validation"] = {"images": cfg.data.validation,
                                 "split": "derive_seed('validation', n_train) permutation"}
    described = source.describe()
    return Bundle(
        images=chosen["images"], labels=rt.labels.cpu(), raw_lrs=chosen["raw_lrs"],
        soft_labels=chosen.get("soft_labels"), dataset=d.name, classes=list(d.classes),
        mean=tuple(d.mean), std=tuple(d.std), model=dict(rt.model.ddcli_spec),
        init_scheme=cfg.model.init_scheme, init_mode=source.eval_mode, seed=cfg.init.seed,
        epochs=cfg.passes, config=_portable(cfg), summary=summary,
        pixel_space=d.pixel_space,
        # how it was made: the last process that ran it, and those before (resumes)
        provenance={**state.provenance[-1], "earlier": state.provenance[:-1]},
        extra={"init": described, "objective": rt.objective.describe(),
               # adapt: nets pretrained on the source, distilled and tested on the target
               "datasets": {"source": described.get("pool_dataset", d.name), "target": d.name}},
        init_params=({k: v.cpu() for k, v in source.fixed_params.items()}
                     if source.fixed_params is not None else None),
    )


def _portable(cfg: DistillConfig) -> dict[str, Any]:
    """The config a bundle records: where the data was on this machine is left out (the
    run folder keeps it for resuming; provenance hashes the data)."""
    out = cfg.to_dict()
    out["data"]["data_root"] = None
    return out
