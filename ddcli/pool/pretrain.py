"""Training a pool of networks on real data, many at once with ``torch.func.vmap``.

The networks of a group are stacked parameter by parameter, so one vmapped forward and
one backward train all of them. The loss is the sum of the nets' own mean losses, so
each net's gradient is exactly its own; Adam and SGD with momentum act elementwise, so
one optimizer over the stacked tensors is one independent optimizer per net. Every net
has its own init seed and its own shuffle of the training set in every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddcli.core.augment import parse_augment
from ddcli.core.metrics import correct_counts
from ddcli.core.params import Params, init_params, num_nets, stack_params
from ddcli.core.seeds import derive_seed
from ddcli.core.steps import SGD, Adam, StepFn
from ddcli.infra.device import resolve_device
from ddcli.infra.io import check_writable
from ddcli.pool.recipe import PretrainRecipe
from ddcli.pool.folder import (MANIFEST, TRAJECTORY_FORMAT_NAME, Pool, PoolNet, net_file,
                               read_net_record, trajectory_file)
from ddcli.data import RealData, default_model, held_out, load_dataset
from ddcli.errors import ConfigError, DivergedError, PoolError
from ddcli.models import check_functional, create_model

@dataclass
class PretrainStartInfo:
    pool: Path
    dataset: str
    model: str
    num_params: int
    n_nets: int  # the pool's size when done
    to_train: list[int]  # indices trained now; the rest were kept
    steps_per_net: int
    nets_per_batch: int
    device: str


@dataclass
class PretrainStepInfo:
    nets: list[int]  # the group being trained
    step: int  # 1-based, within the group
    total: int  # steps per net
    loss: float  # mean over the group's nets
    elapsed: float


@dataclass
class PretrainNetInfo:
    index: int
    seed: int
    test_acc: float


@dataclass
class PretrainResult:
    """What ``pretrain`` returns: the pool and what this call trained."""

    pool: Pool
    trained: list[int]
    kept: list[int]
    elapsed: float  # seconds, this call, training and test evaluation
    train_seconds: float  # seconds spent in training steps only
    net_epochs: float  # nets trained x real epochs
    recipe: PretrainRecipe = field(default_factory=PretrainRecipe)

    @property
    def cpu_seconds(self) -> float:
        """Process CPU seconds of this call's training and test passes (its nets' records)."""
        trained = set(self.trained)
        return float(sum(n.cpu_s or 0.0 for n in self.pool.nets if n.index in trained))

    @property
    def pool_cpu_seconds(self) -> float | None:
        """CPU seconds every net of the pool took, this call's and earlier calls'; None
        when a kept net predates the record."""
        spent = [n.cpu_s for n in self.pool.nets]
        return None if any(c is None for c in spent) else float(sum(spent))

    @property
    def seconds_per_net_epoch(self) -> float:
        return self.train_seconds / self.net_epochs if self.net_epochs else float("nan")


def pretrain(
    dataset: str | RealData,
    *,
    out: str | Path,
    n_nets: int,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    recipe: PretrainRecipe | None = None,
    init_scheme: str = "xavier",
    seed: int = 0,
    nets_per_batch: int | None = None,
    data_root: str | Path | None = None,
    device: str = "cpu",
    callbacks: Any = None,
    progress: bool = False,
) -> PretrainResult:
    """Train a pool of ``n_nets`` networks on real data into the folder ``out``.

    Networks already in the folder (same dataset, model, seed and recipe) are kept, so an
    interrupted call resumes, and a larger ``n_nets`` grows the pool.

    Args:
        dataset: a dataset name for ``load_dataset``, or preloaded ``RealData``.
        out: the pool folder.
        n_nets: networks the pool should hold (indices 0..n_nets-1).
        model: a registered model name; default the paper's model for the dataset.
        model_kwargs: model options, e.g. ``{"hidden": [64]}`` for ``mlp``.
        recipe: optimizer, rate, batch size and epochs (``PretrainRecipe`` defaults).
        init_scheme: weight init of every net; net i uses ``derive_seed(seed, "pool-net", i)``.
        seed: base seed for inits and shuffles.
        nets_per_batch: networks trained together in one vmapped group; default 1 on
            CPU (where a loop over conv nets measured faster than vmap) and 16 elsewhere.
        data_root: data root for named datasets.
        device: auto, cpu, cuda or mps.
        callbacks: an object with some of ``on_start``, ``on_step``, ``on_net``.
        progress: without ``callbacks``, show the CLI's progress display on stderr
            (``ddcli.progress.PretrainProgress``).

    Example:
        >>> from ddcli.pool.pretrain import pretrain
        >>> result = pretrain("mnist", out="mnist-pool", n_nets=10)  # doctest: +SKIP
        >>> [n.test_acc for n in result.pool.nets]  # doctest: +SKIP
    """
    if progress and callbacks is None:
        from ddcli.progress import PretrainProgress

        with PretrainProgress() as display:
            return pretrain(dataset, out=out, n_nets=n_nets, model=model,
                            model_kwargs=model_kwargs, recipe=recipe, init_scheme=init_scheme,
                            seed=seed, nets_per_batch=nets_per_batch, data_root=data_root,
                            device=device, callbacks=display)
    if n_nets < 1:
        raise ConfigError(f"--n-nets must be a positive integer, got {n_nets}")
    recipe = (recipe or PretrainRecipe()).resolved()
    check_writable(out, "the pool", folder=True)  # before any training
    t0 = time.perf_counter()
    dev = resolve_device(device)
    if nets_per_batch is None:
        nets_per_batch = 1 if dev.type == "cpu" else 16
    if nets_per_batch < 1:
        raise ConfigError(f"--nets-per-batch must be a positive integer, got {nets_per_batch}")
    data = dataset if isinstance(dataset, RealData) else load_dataset(dataset, root=data_root)
    if recipe.validation:  # train on the rest; test accuracy stays on the test set
        held = held_out(data, recipe.validation)
        data = dataclasses.replace(held, test_x=data.test_x, test_y=data.test_y)
    name = model or default_model(data.name)
    net = create_model(name, in_channels=data.in_channels, num_classes=data.num_classes,
                       image_size=data.image_size, **(model_kwargs or {}))
    check_functional(net)
    pool = _open_pool(Path(out), data, net.ddcli_spec, init_scheme, seed, recipe)
    todo = [i for i in range(n_nets) if i not in set(pool.indices)]
    kept = [i for i in pool.indices]
    steps_per_epoch = max(1, data.train_x.shape[0] // min(recipe.batch_size, data.train_x.shape[0]))
    total_steps = max(1, round(recipe.real_epochs * steps_per_epoch))
    _emit(callbacks, "on_start", PretrainStartInfo(
        pool=pool.path, dataset=data.name, model=name,
        num_params=sum(p.numel() for p in net.parameters()), n_nets=len(set(kept) | set(todo)),
        to_train=todo, steps_per_net=total_steps, nets_per_batch=nets_per_batch, device=str(dev)))
    pool.save_manifest()
    net.to(dev)
    train_x, train_y = data.train_x.to(dev), data.train_y.to(dev)
    test_x, test_y = data.test_x.to(dev), data.test_y.to(dev)
    train_seconds = 0.0
    for start in range(0, len(todo), nets_per_batch):
        group = todo[start : start + nets_per_batch]
        seeds = [derive_seed(seed, "pool-net", i) for i in group]
        t_group, c_group = time.perf_counter(), time.process_time()
        stacked, trajectory = _train_group(net, group, seeds, init_scheme, seed, recipe,
                                           total_steps, train_x, train_y, callbacks)
        train_seconds += time.perf_counter() - t_group
        accs = stacked_accuracy(net, stacked, test_x, test_y)
        spent = time.process_time() - c_group
        for j, (i, s) in enumerate(zip(group, seeds)):
            own = None if trajectory is None else {k: v[:, j] for k, v in trajectory.items()}
            pool.write_net(i, {k: v[j] for k, v in stacked.items()}, seed=s, test_acc=accs[j],
                           trajectory=own, cpu_s=spent / len(group))
            _emit(callbacks, "on_net", PretrainNetInfo(index=i, seed=s, test_acc=accs[j]))
        pool.save_manifest()  # after the group's files: a crash never lists a missing net
    return PretrainResult(
        pool=pool, trained=todo, kept=kept, elapsed=time.perf_counter() - t0,
        train_seconds=train_seconds, net_epochs=len(todo) * recipe.real_epochs, recipe=recipe)


def _open_pool(path: Path, data: RealData, spec: dict, init_scheme: str, seed: int,
               recipe: PretrainRecipe) -> Pool:
    """The pool in ``path``: a new one, or the existing one if it was made the same way."""
    fresh = Pool(path=path, dataset=data.name, classes=list(data.classes), mean=data.mean,
                 std=data.std, input_shape=tuple(data.train_x.shape[1:]), model=dict(spec),
                 init_scheme=init_scheme, seed=seed, recipe=recipe.record())
    if path.exists() and not path.is_dir():
        raise PoolError(f"{path} is a file; -o must name a pool folder")
    if (path / MANIFEST).exists():
        try:
            old = Pool.load(path)
        except PoolError as exc:
            if "empty" not in str(exc):
                raise
        else:
            theirs, ours = old.to_manifest(), fresh.to_manifest()
            for key in ("dataset", "input_shape", "model", "init_scheme", "seed", "recipe"):
                if theirs[key] != ours[key]:
                    raise PoolError(
                        f"{path} holds a pool made with a different {key} "
                        f"({theirs[key]} vs {ours[key]} now); pass the same settings to grow "
                        "it, or choose another -o folder")
    # Keep every net whose file is intact and was made by this recipe, listed or not:
    # a crash between writing a net file and the manifest loses nothing.
    expected = {"recipe": _json(fresh.recipe), "model": _json(fresh.model)}
    for file in sorted(path.glob("net-*.safetensors")) if path.is_dir() else []:
        rec = read_net_record(file)
        if rec is None or any(rec.get(k) != v for k, v in expected.items()):
            continue
        index = int(rec["index"])
        if file.name != net_file(index) or (
                int(rec["seed"]) != derive_seed(seed, "pool-net", index)):
            continue
        traj = {}
        if recipe.trajectories:  # a net whose trajectory is missing or damaged is retrained
            t = read_net_record(path / trajectory_file(index), TRAJECTORY_FORMAT_NAME)
            if t is None or any(t.get(k) != v for k, v in expected.items()) or (
                    t.get("epochs") != str(int(recipe.real_epochs))):
                continue
            traj = {"trajectory": trajectory_file(index), "trajectory_sha256": t["sha256"]}
        fresh.nets.append(PoolNet(index=index, file=file.name, seed=int(rec["seed"]),
                                  test_acc=float(rec["test_acc"]), sha256=rec["sha256"],
                                  cpu_s=_seconds(rec.get("cpu_s")),
                                  **traj))
    path.mkdir(parents=True, exist_ok=True)
    return fresh


def _seconds(text: str | None) -> float | None:
    """A net file's recorded CPU seconds; None if it has none (made before ddcli kept it)."""
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def _train_group(model: nn.Module, group: list[int], seeds: list[int], scheme: str, seed: int,
                 recipe: PretrainRecipe, total_steps: int, train_x: Tensor, train_y: Tensor,
                 callbacks: Any) -> tuple[Params, Params | None]:
    """Train the nets of ``group`` together through the step map; returns their stacked
    params (G, ...) and, with ``recipe.trajectories``, their weights after every epoch
    (E + 1, G, ...), on the CPU. Each net gets exactly its own gradient and its own
    optimiser state (rules act elementwise on the stacked tensors)."""
    params = stack_params([init_params(model, scheme, s) for s in seeds], train_x.device)
    rule = (Adam(weight_decay=recipe.weight_decay) if recipe.optimizer == "adam" else
            SGD(momentum=recipe.momentum, weight_decay=recipe.weight_decay))
    # One net alone runs plainly, without vmap: the one-at-a-time baseline.
    single = len(group) == 1
    step = StepFn(model, rule) if single else StepFn(model, rule, batched=True, per_net_data=True)
    state = step.init({k: v[0] for k, v in params.items()} if single else params)
    if single:
        params = {k: v[0] for k, v in params.items()}
    augment = parse_augment(recipe.augment)
    n = train_x.shape[0]
    b = min(recipe.batch_size, n)
    per_epoch = max(1, n // b)
    perms: Tensor | None = None
    snapshots: list[Params] | None = [] if recipe.trajectories else None

    def snapshot() -> None:  # (G, ...) per parameter, whatever the group's size
        if snapshots is not None:
            snapshots.append({k: (v[None] if single else v).detach().cpu().clone()
                              for k, v in params.items()})

    t0 = time.perf_counter()
    snapshot()  # epoch 0: the init
    for t in range(total_steps):
        epoch, i = divmod(t, per_epoch)
        if i == 0:
            # Each net's own shuffle of this epoch, a pure function of (seed, net, epoch).
            perms = torch.stack([
                torch.randperm(n, generator=torch.Generator().manual_seed(
                    derive_seed(seed, "pool-shuffle", j, epoch)))
                for j in group
            ]).to(train_x.device)  # (G, N)
        idx = perms[:, i * b : (i + 1) * b]  # (G, B)
        x, y = train_x[idx], train_y[idx]  # (G, B, C, H, W), (G, B)
        if augment is not None:  # each net its own draw: (seed, net, step), not the group
            with torch.no_grad():
                x = torch.stack([augment(x[k], derive_seed(seed, "pool-augment", j, t))
                                 for k, j in enumerate(group)])
        if single:
            x, y = x[0], y[0]
        params, state, loss = step.with_loss(params, state, x, y, float(recipe.lr))
        mean_loss = float(loss.mean())
        if mean_loss != mean_loss or mean_loss == float("inf"):
            raise DivergedError(f"pretraining loss became {mean_loss} at step {t + 1} of "
                                f"nets {group}; use a lower --lr")
        if (t + 1) % per_epoch == 0:
            snapshot()
        _emit(callbacks, "on_step", PretrainStepInfo(
            nets=group, step=t + 1, total=total_steps, loss=mean_loss,
            elapsed=time.perf_counter() - t0))
    final = {k: v[None] for k, v in params.items()} if single else params
    if snapshots is None:
        return final, None
    return final, {k: torch.stack([s[k] for s in snapshots]) for k in snapshots[0]}


def stacked_accuracy(model: nn.Module, stacked: Params, x: Tensor, y: Tensor,
                     batch_size: int = 1000) -> list[float]:
    """Test accuracy of each of G stacked nets on (x, y)."""
    vmapped = num_nets(stacked) > 1
    counts = correct_counts(model, stacked, x, y, vmapped=vmapped, chunk=batch_size)
    return (counts.double() / max(1, x.shape[0])).tolist()


def _emit(callbacks: Any, name: str, payload: Any) -> None:
    fn = getattr(callbacks, name, None)
    if fn is not None:
        fn(payload)
