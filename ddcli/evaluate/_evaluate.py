"""Entry points: ``evaluate_bundle``, ``evaluate_set`` and ``evaluate`` (either, by path)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch

from ddcli.infra import provenance
from ddcli.infra.device import resolve_device, retain_freed_memory
from ddcli.bundle import Bundle
from ddcli.data import RealData, held_out, load_dataset, resumed_data_root, zca_dataset
from ddcli.errors import ConfigError
from ddcli.init_modes import is_seeded_fixed
from ddcli.evaluate._many_nets import supports_vmap
from ddcli.evaluate._job import Job, count_stages
from ddcli.evaluate._replay_protocol import checkpoints, inner_loop_of, run_replay
from ddcli.evaluate._report import BATCHING, NAMED, EvalConfig, EvalReport
from ddcli.evaluate.ddranking import FullDataProtocol, ddranking_scores, full_data_accuracy
from ddcli.evaluate.initial_nets import RANDOM
from ddcli.evaluate.pool_eval import PoolEvalReport, evaluate_pool_bundle, is_pool_bundle
from ddcli.evaluate._sets import ImageSet, load_image_set, set_kind
from ddcli.evaluate._fitting import (build_model, match_dataset, rates_learned, set_provenance,
                                      soft_labels_of, validation_seen)
from ddcli.evaluate._train_protocol import run_train, score_epochs
from ddcli.evaluate import protocols
from ddcli.evaluate.protocols import DEFAULT_TRAIN_LR

#: A row whose mean is within this many accuracy points of chance gets a warning line.
CHANCE_MARGIN = 0.02


def evaluate(source: str | os.PathLike, cfg: EvalConfig | None = None,
             **kwargs: Any) -> EvalReport | PoolEvalReport:
    """Evaluate a bundle, ``.pt``, ``.npz`` or ImageFolder path (see ``evaluate_bundle``
    and ``evaluate_set``), or a run folder: the bundle of its last checkpoint
    (``ddcli.engine.reader.run_bundle``), while the run goes on or after it stopped."""
    kind = set_kind(source)
    if kind in ("run", "snapshot"):
        from ddcli.engine.reader import run_bundle  # the engine imports the evaluator

        cfg, options = _settings(cfg, kwargs)  # usage errors before the run is read
        run_dir, snapshot = (Path(source).parent.parent, source) if kind == "snapshot" else (
            source, None)
        bundle, data = run_bundle(run_dir, data=options.pop("data", None),
                                  data_root=options.get("data_root"), snapshot=snapshot)
        if options.get("dataset") not in (None, data.name):
            data = None  # another test set: loaded as for any bundle
        where = f"{source} ({kind if kind == 'snapshot' else 'checkpoint'} at iteration " \
                f"{bundle.summary['iterations']})"
        return evaluate_bundle(bundle, cfg, data=data, source=where, **options)
    if kind == "bundle":
        return evaluate_bundle(source, cfg, **kwargs)
    return evaluate_set(source, cfg, **kwargs)


def evaluate_bundle(
    bundle: Bundle | str | os.PathLike, cfg: EvalConfig | None = None, **kwargs: Any
) -> EvalReport | PoolEvalReport:
    """Train fresh networks on a distilled bundle and measure full-test-set accuracy.

    Bundles made from a pretrained pool, and adapt and attack bundles, are replayed on
    the pool's held-out nets, before and after the distilled steps, against the same
    steps on random real images (``evaluate_pool_bundle``); ``protocol="train"`` trains
    fresh nets on any bundle instead.

    Args:
        bundle: a ``Bundle`` or the path of one.
        cfg: protocol and settings; keyword arguments named like ``EvalConfig`` fields
            override it (``evaluate_bundle(b, n_nets=5)``).
        **kwargs: also ``source`` (how reports name a ``Bundle`` given as an object),
            ``dataset`` (test set; default the bundle's), ``data`` (a
            preloaded ``RealData``), ``data_root``, ``pool`` (pool bundles: the pool
            folder, default the recorded one) and ``callbacks`` (an object with
            ``on_stage(StageInfo)``).

    Returns:
        An ``EvalReport`` (distilled rows, then baseline and knn rows), or a
        ``PoolEvalReport`` for pool bundles.

    Example:
        >>> from ddcli.evaluate import evaluate_bundle
        >>> report = evaluate_bundle("m.safetensors", baselines=["random-real"])  # doctest: +SKIP
        >>> report.primary.mean, report.margin_over_random_real  # doctest: +SKIP
        (0.93, 0.21)
    """
    cfg, options = _settings(cfg, kwargs)  # usage errors before any file is read
    source = options.pop("source", None) or "<bundle>"
    if not isinstance(bundle, Bundle):
        source, bundle = str(bundle), Bundle.load(bundle)
    if options.get("data_root") is None and options.get("dataset") in (None, bundle.dataset):
        # As a resume does: the root the bundle's run read, if that folder is here.
        recorded = ((bundle.config or {}).get("data") or {}).get("data_root")
        options["data_root"] = resumed_data_root(recorded)
    pool = options.pop("pool", None)
    if is_pool_bundle(bundle) and cfg.protocol != "train":
        _fp32_replay(cfg.precision)
        if cfg.validation:
            raise ConfigError("--validation applies to fresh nets; a pool bundle replays on "
                              "the pool's held-out nets (use --protocol train to select)")
        device = resolve_device(cfg.device)
        with retain_freed_memory(device):  # see _evaluate
            report = evaluate_pool_bundle(
                bundle, data_root=options.get("data_root"), pool=pool, n_nets=cfg.n_nets,
                seed=cfg.seed, data=options.get("data"), device=str(device))
        report.bundle = report.bundle or (source if source != "<bundle>" else "")
        return report
    return _evaluate(ImageSet.from_bundle(bundle, source), cfg, **options)


def evaluate_set(
    image_set: ImageSet | str | os.PathLike, cfg: EvalConfig | None = None, **kwargs: Any
) -> EvalReport:
    """Evaluate any image set (bundle, ``.pt``, ``.npz``, ImageFolder) under one protocol.

    Sets other than bundles carry no init or model, so they use the train protocol, and
    need ``dataset`` (or ``data``) for the test set and normalisation unless the file
    names its dataset. Images normalised differently from the dataset are re-normalised
    (and the report says so).

    Args and returns as ``evaluate_bundle``.
    """
    cfg, options = _settings(cfg, kwargs)
    options.pop("pool", None)  # only pool bundles use one
    if not isinstance(image_set, ImageSet):
        image_set = load_image_set(image_set)
    return _evaluate(image_set, cfg, **options)


def _settings(cfg: EvalConfig | None, kwargs: dict[str, Any]) -> tuple[EvalConfig, dict[str, Any]]:
    fields = {f.name for f in dataclasses.fields(EvalConfig)}
    overrides = {k: v for k, v in kwargs.items() if k in fields}
    options = {k: v for k, v in kwargs.items() if k not in fields}
    return dataclasses.replace(cfg or EvalConfig(), **overrides).validate(), options


def _evaluate(s: ImageSet, cfg: EvalConfig, **options: Any) -> EvalReport:
    # Training and testing nets allocate and free the same large blocks over and over:
    # kept in the heap, as in the distillation loop (ddcli.infra.device).
    with retain_freed_memory(resolve_device(cfg.device)):
        return _evaluate_in_heap(s, cfg, **options)


def _evaluate_in_heap(s: ImageSet, cfg: EvalConfig, *, dataset: str | None = None,
                      data: RealData | None = None,
                      data_root: str | os.PathLike | None = None,
                      callbacks: Any = None) -> EvalReport:
    t0 = time.perf_counter()
    # A set whose rates were not learned (distribution matching) has no inner loop to replay.
    protocol = cfg.protocol or ("replay" if s.kind == "bundle" and rates_learned(s) else "train")
    cfg = dataclasses.replace(cfg, protocol=protocol)
    if protocol == "replay":
        _fp32_replay(cfg.precision)
    if protocol == "replay" and s.bundle is None:
        raise ConfigError(f"a {s.kind} set carries no init or model to replay; "
                          "evaluate it with --protocol train")
    if data is None:
        name = dataset or s.dataset
        if not name:
            raise ConfigError(f"{s.source} is a {s.kind} set: give --dataset NAME for its test "
                              "set and normalisation")
        data = load_dataset(name, root=data_root)
    notes: list[str] = [f"warning: {w}" for w in getattr(s, "warnings", [])]
    space = s.pixel_space or {}
    if space.get("kind") == "zca" and data.pixel_space_record["kind"] != "zca":
        # The set lives in ZCA space: whiten the evaluation data the same way (cached fit).
        data = zca_dataset(data, eps=float(space.get("eps", 0.1)))
        notes.append(f"ZCA-whitened {data.name} (eps {space.get('eps', 0.1)}) to match the set")
    images, labels = match_dataset(s, data, notes)
    device = resolve_device(cfg.device)
    made = set_provenance(s)
    notes += [f"warning: {d}" for d in provenance.differences(made, data)]
    if cfg.validation:
        # Selection never sees the test set: fresh nets score on held-out training images,
        # and baselines draw from the rest.
        data = held_out(data, cfg.validation)
        notes.append(f"scored on {cfg.validation:,} held-out training images (validation "
                     "split), not the test set; baselines drew from the other training images")
        seen = validation_seen(s, cfg.validation, data.name)
        if seen:
            notes.append(f"warning: {seen}")
    train_settings = None
    if protocol != "replay":
        train_settings = protocols.resolve(cfg, data.name, s.lrs)
        cfg = protocols.replace_resolved(cfg, train_settings)
        if train_settings.departures:
            notes.append(f"departs from the {protocol} protocol: "
                         + "; ".join(train_settings.departures))
    model = build_model(s, cfg, protocol, data).to(device)
    spec = dict(model.ddcli_spec)
    scheme = cfg.init_scheme or s.init_scheme or "xavier"
    batched = BATCHING[cfg.batching]
    if batched is not False and not supports_vmap(model, images.shape[2:]):
        notes.append(f"model {spec['name']} doesn't run under vmap; nets ran one at a time")
    job = Job(cfg=cfg, model=model, images=images.to(device), labels=labels.to(device),
              lrs=None if s.lrs is None else s.lrs.to(device), real=data,
              test_x=data.test_x.to(device), test_y=data.test_y.to(device), device=device,
              scheme=scheme, batched=batched, emit=lambda n, p: _emit(callbacks, n, p),
              notes=notes)
    soft = soft_labels_of(s, data)
    if soft is not None:
        job.soft_labels = soft.to(device)
        notes.append("the set's learned soft labels are the nets' targets")
        if cfg.baselines or cfg.ddranking:
            notes.append("baselines train on their real images' classes" if
                         cfg.baseline_labels == "hard" else
                         "baselines train on the set's soft labels, slot by slot")
    if s.bundle is not None:
        job.inner = inner_loop_of(s.bundle, notes)
    resolved: dict[str, Any] = {"protocol": protocol, "model": spec["name"],
                                "init_scheme": scheme, "steps": int(images.shape[0]),
                                "images_per_step": int(images.shape[1])}
    if protocol == "replay":
        assert s.bundle is not None
        groups = 2 if is_seeded_fixed(s.bundle.init_mode) else 1
        job.stages = count_stages(cfg, groups)
        total = int(s.lrs.shape[0])
        resolved |= {"epochs": s.bundle.epochs, "gd_steps": total, "init_mode": s.bundle.init_mode,
                     "measured_at_step": checkpoints(images.shape[0], total, cfg.per_step)}
        rows = run_replay(job, s.bundle)
        if is_seeded_fixed(s.bundle.init_mode):
            notes.append(f"'{RANDOM}' rows replay the same steps and rates from unseen inits: "
                         "the gap to the stored init is the paper's generalisation result")
    else:
        assert train_settings is not None
        lr, lr_source = train_settings.train_lr, train_settings.lr_source
        if lr_source != "--train-lr":
            notes.append(f"lr {lr:.4g}: {lr_source}")
        job.stages = count_stages(cfg, 1)
        resolved |= {"train_lr": lr, "lr_source": lr_source,
                     "lr_decay": cfg.lr_decay,
                     "lr_decayed_at_epoch": cfg.decay_epoch,
                     "score_epochs": score_epochs(cfg.train_epochs)}
        if cfg.ddranking and "random-real" not in cfg.baselines:  # IOR needs it
            job.cfg = cfg = dataclasses.replace(cfg, baselines=("random-real", *cfg.baselines))
            job.stages = count_stages(cfg, 1)
        if cfg.precision != "fp32":
            notes.append(f"{cfg.precision} autocast for the nets' convolutions and matmuls"
                         + (f" (the {protocol} protocol's code runs fp32)"
                            if protocol in NAMED else ""))
        if cfg.compile:
            notes.append("each net's training step ran through torch.compile")
        with precision_context(cfg.precision, device):
            rows = run_train(job, lr)
    scores = _ddranking(cfg, rows, data, spec, scheme, device) if cfg.ddranking else None
    rate = (f"lr {resolved['train_lr']:.4g} ({resolved['lr_source']}); try another --train-lr"
            if protocol != "replay" else "the set's learned rates")
    return EvalReport(
        source=s.source, kind=s.kind, dataset=data.name, test_size=int(data.test_y.shape[0]),
        protocol=protocol, model=spec, settings={**cfg.to_dict(), **resolved}, rows=rows,
        notes=notes, warnings=chance_warnings(rows, data.num_classes, rate),
        split="validation" if cfg.validation else "test",
        elapsed_s=time.perf_counter() - t0,
        provenance={"set": made, "eval": provenance.collect(device=str(device))},
        ddranking=scores,
    )


def _fp32_replay(precision: str) -> None:
    if precision != "fp32":
        raise ConfigError(f"--precision {precision} is for the train protocols (train, dc, "
                          "dsa, mtt); a replay runs the set's own steps in fp32")


def precision_context(precision: str, device: torch.device):
    """The train protocols' autocast: bf16 convolutions and matmuls, fp32 weights.

    Without autocast's cast cache: every SGD step has new weight tensors, so the cache
    only grows (one bf16 copy of every weight per step, kept until the context ends),
    and on a CPU those small survivors pin the freed activations' heap: RSS grew by
    about 20 MB per step for a ConvNet on 100 CIFAR-10 images, past 24 GB in one
    300-epoch evaluation. Nothing reuses a cached cast, so nothing is lost."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=precision == "bf16", cache_enabled=False)


def _emit(callbacks: Any, name: str, payload: Any) -> None:
    fn = getattr(callbacks, name, None)
    if fn is not None:
        fn(payload)


def _ddranking(cfg: EvalConfig, rows, data: RealData, spec: dict, scheme: str,
               device) -> dict[str, Any]:
    """IOR, HLR, LRS of the train-protocol rows, against a full-data net trained with the
    same SGD (lr 0.01, the DC protocol's: a set's learned rate is no rate for 60k images)
    for ``full_data_epochs`` epochs, cached per dataset, model and settings."""
    protocol = FullDataProtocol(model=spec, epochs=cfg.full_data_epochs, lr=DEFAULT_TRAIN_LR,
                                batch_size=cfg.batch_size, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, lr_decay=cfg.lr_decay, seed=cfg.seed,
                                init_scheme=scheme)
    full = full_data_accuracy(data, protocol, device=device)
    syn = next(r for r in rows if r.name == "distilled")
    real = next(r for r in rows if r.name == "random-real")
    scores = ddranking_scores(syn.mean, real.mean, full.mean)
    return {**dataclasses.asdict(scores), "full_data": {
        "epochs": cfg.full_data_epochs, "lr": DEFAULT_TRAIN_LR, "accuracies": full.accuracies,
        "cached": full.cached, "seconds": round(full.seconds, 1)}}


def chance_warnings(rows, num_classes: int, rate: str) -> list[str]:
    """One line per trained row whose mean is within ``CHANCE_MARGIN`` of chance."""
    chance = 1.0 / num_classes
    return [f"{row.label}: {100 * row.mean:.2f} % is within {100 * CHANCE_MARGIN:.0f} points "
            f"of chance ({100 * chance:.0f} %) at {rate}"
            for row in rows if row.name != "knn" and abs(row.mean - chance) <= CHANCE_MARGIN]
