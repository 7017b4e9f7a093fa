"""Where each outer iteration's initial weights theta_0 come from (the four init modes),
and, for trajectory matching, the expert segments: a start and a target per net."""

from __future__ import annotations

import abc

import torch
from torch import nn

from ddcli.bundle import Bundle
from ddcli.errors import BundleFormatError, ConfigError, PoolError
from ddcli.core.params import Params, init_params
from ddcli.core.seeds import derive_seed
from ddcli.init_modes import InitMode, is_fixed, is_pretrained


def initial_images(shape: tuple[int, ...] | torch.Size, seed: int) -> torch.Tensor:
    """The synthetic images a run starts from: N(0, 1) in normalised space, like the
    reference, drawn from a generator seeded by ``seed`` (the config's ``init.seed``).

    The engine starts every fresh run here, so a bundle's starting images can be
    rebuilt from its recorded seed and shape (``dd visualize --change`` does).
    """
    gen = torch.Generator().manual_seed(derive_seed(seed, "images"))
    return torch.randn(tuple(shape), generator=gen)


def real_initial_images(train_x: torch.Tensor, train_y: torch.Tensor, labels: torch.Tensor,
                        seed: int) -> torch.Tensor:
    """``--init-images real``: every slot gets a distinct random training image of its
    class, drawn from a generator seeded by ``seed``; (S, n, C, H, W) on the CPU.

    ``labels`` (S, n) are the slots' classes; ``train_x`` excludes any validation split.
    """
    g = torch.Generator().manual_seed(derive_seed(seed, "real-images"))
    flat_labels, ys = labels.flatten().cpu(), train_y.cpu()
    out = torch.empty(flat_labels.numel(), *train_x.shape[1:], dtype=train_x.dtype)
    for c in flat_labels.unique().tolist():
        slots = torch.nonzero(flat_labels == c).flatten()
        members = torch.nonzero(ys == c).flatten()
        if members.numel() < slots.numel():
            raise ConfigError(f"--init-images real needs {slots.numel()} training images of "
                              f"class {c}; there are {members.numel()}")
        pick = members[torch.randperm(members.numel(), generator=g)[: slots.numel()]]
        out[slots] = train_x[pick.to(train_x.device)].cpu()
    return out.view(*labels.shape, *train_x.shape[1:])


def bundle_initial_images(path: str, data, labels: torch.Tensor) -> torch.Tensor:
    """``--init-from BUNDLE``: the run starts from another bundle's images (a DM set as
    MTT's start, say), class by class in the bundle's class-major order; (S, n, C, H, W)
    on the CPU. The bundle must be of ``data``'s dataset, pixel space and image shape,
    with as many images of each class as the run has slots; its labels, rates and soft
    labels are not used.
    """
    try:
        bundle = Bundle.load(path)
    except BundleFormatError as exc:
        raise ConfigError(f"--init-from: {exc}") from None
    here = f"--init-from {path}"
    if bundle.dataset != data.name:
        raise ConfigError(f"{here} is a {bundle.dataset} set; this run distils {data.name}")
    if bundle.pixel_space_record != data.pixel_space_record:
        raise ConfigError(f"{here} is in another pixel space ({bundle.pixel_space_record['kind']}) "
                          f"than this run's ({data.pixel_space_record['kind']}); "
                          "pass --zca as that run did, or leave it off")
    shape = (data.in_channels, data.image_size, data.image_size)
    if tuple(bundle.input_shape) != shape:
        raise ConfigError(f"{here} has images of shape {tuple(bundle.input_shape)}; this run's "
                          f"are {shape}")
    images, bundle_labels = bundle.flat()
    flat_labels = labels.flatten().cpu()
    out = torch.empty(flat_labels.numel(), *shape, dtype=torch.float32)
    for c in range(data.num_classes):
        slots = torch.nonzero(flat_labels == c).flatten()
        # stable: the bundle's step-major order within a class, as class_major_order
        members = torch.nonzero(bundle_labels == c).flatten()
        if members.numel() != slots.numel():
            raise ConfigError(f"{here} has {members.numel()} images of class {c}; this run "
                              f"has {slots.numel()} (pass --ipc {members.numel()}, or "
                              "distil that many per class)")
        out[slots] = images[members].float()
    return out.view(*labels.shape, *shape)


class InitSource(abc.ABC):
    """Yields the list of theta_0 used at one outer iteration."""

    mode: str = ""
    #: weights stored in bundles and checkpoints when the init is fixed
    fixed_params: Params | None = None

    @property
    def eval_mode(self) -> str:
        """The init mode a bundle records: which nets ``dd eval`` starts from."""
        return self.mode

    @abc.abstractmethod
    def sample(self, iteration: int) -> list[Params]:
        """The inits for outer iteration ``iteration`` (0-based)."""

    def segments(self, iteration: int) -> tuple[list[Params], list[Params] | None]:
        """The inits of ``iteration`` and, where the source has them, a target for each
        (an expert's later weights, ``ExpertSegments``); None otherwise."""
        return self.sample(iteration), None

    def describe(self) -> dict:
        return {"mode": self.mode}

    def eval_inits(self, n: int) -> list[Params] | None:
        """Nets for periodic evaluation, or None for fresh random ones."""
        return None


class FixedInit(InitSource):
    """One known init from ``seed``, used at every iteration."""

    mode = InitMode.FIXED.value

    def __init__(self, params: Params) -> None:
        self.fixed_params = params

    def sample(self, iteration: int) -> list[Params]:
        return [self.fixed_params]


class RandomInit(InitSource):
    """Fresh inits each iteration: ``n_nets`` are drawn, ``sample_n_nets`` of them used.

    Seeds derive from (seed, iteration, j), so a resumed run draws the same nets.
    """

    mode = InitMode.RANDOM.value

    def __init__(self, model: nn.Module, scheme: str, seed: int, n_nets: int, sample_n_nets: int,
                 device: torch.device) -> None:
        self.model, self.scheme, self.seed = model, scheme, seed
        self.n_nets, self.sample_n_nets, self.device = n_nets, sample_n_nets, device

    def sample(self, iteration: int) -> list[Params]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, "pick", iteration))
        picks = torch.randperm(self.n_nets, generator=g)[: self.sample_n_nets].tolist()
        return [
            {k: v.to(self.device) for k, v in init_params(
                self.model, self.scheme, derive_seed(self.seed, "net", iteration, j)).items()}
            for j in sorted(picks)
        ]

    def describe(self) -> dict:
        return {"mode": self.mode, "n_nets": self.n_nets, "sample_n_nets": self.sample_n_nets}


class PretrainedFixedInit(InitSource):
    """One network of a pretrained pool, used at every iteration.

    Its weights go into the bundle (so a replay needs no pool), with its index and hash.
    """

    mode = InitMode.PRETRAINED_FIXED.value

    def __init__(self, pool, index: int, holdout: float, device: torch.device,
                 names: list[str]) -> None:
        self.train, self.held_out = pool.split(holdout)
        if index in self.held_out:
            raise ConfigError(
                f"--pool-index {index} is one of the held-out nets {self.held_out} of pool "
                f"{pool.path}; pick a training net ({_span(self.train)}) or --pool-holdout 0")
        self.fixed_params = _model_order(pool.load_net(index, device), names)
        self.info = {**pool.describe(), "pool_index": index, "net_sha256": pool.net(index).sha256,
                     "pool_holdout": holdout, "train_indices": self.train,
                     "holdout_indices": self.held_out}

    def sample(self, iteration: int) -> list[Params]:
        return [self.fixed_params]

    def describe(self) -> dict:
        return {"mode": self.mode, **self.info}


class PretrainedRandomInit(InitSource):
    """``sample_n_nets`` nets drawn from the pool's training part at every iteration.

    Draws are seeded by (seed, iteration), so a resumed run draws the same nets; the
    held-out nets are never drawn (they are what evaluation measures).
    """

    mode = InitMode.PRETRAINED_RANDOM.value

    def __init__(self, pool, sample_n_nets: int, seed: int, holdout: float,
                 device: torch.device, names: list[str]) -> None:
        self.pool, self.seed, self.device, self.names = pool, seed, device, names
        self.train, self.held_out = pool.split(holdout)
        if sample_n_nets > len(self.train):
            raise ConfigError(
                f"--sample-n-nets {sample_n_nets} exceeds the {len(self.train)} training nets of "
                f"pool {pool.path} ({len(pool.nets)} nets, {len(self.held_out)} held out)")
        self.sample_n_nets = sample_n_nets
        self.info = {**pool.describe(), "pool_holdout": holdout, "train_indices": self.train,
                     "holdout_indices": self.held_out, "sample_n_nets": sample_n_nets}
        self._cache: dict[int, Params] = {}

    def picks(self, iteration: int) -> list[int]:
        """The pool indices used at ``iteration``: always training nets."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, "pool-pick", iteration))
        order = torch.randperm(len(self.train), generator=g)[: self.sample_n_nets]
        return [self.train[j] for j in sorted(order.tolist())]

    def _load(self, index: int) -> Params:
        if index not in self._cache:
            self._cache[index] = _model_order(self.pool.load_net(index, self.device),
                                              self.names)
        return self._cache[index]

    def sample(self, iteration: int) -> list[Params]:
        return [self._load(i) for i in self.picks(iteration)]

    def describe(self) -> dict:
        return {"mode": self.mode, **self.info}

    def eval_inits(self, n: int) -> list[Params] | None:
        return [self._load(i) for i in (self.held_out or self.train)[:n]]


class ExpertSegments(PretrainedRandomInit):
    """Trajectory matching's source: at every iteration ``sample_n_nets`` experts of the
    pool's training part, each with a start epoch t in 0..``max_start_epoch``; the start
    is the expert's weights after epoch t, the target its weights after t + ``span``.

    Draws are seeded by (seed, iteration), so a resumed run draws the same segments.
    Trajectories are read once and kept (the ``cache`` most recently used).
    """

    def __init__(self, pool, sample_n_nets: int, seed: int, holdout: float, span: int,
                 max_start: int, device: torch.device, names: list[str],
                 cache: int = 16) -> None:
        if not pool.has_trajectories:
            raise PoolError(f"pool {pool.path} keeps no expert trajectories; make one with "
                            f"`dd pretrain {pool.dataset} --trajectories -o DIR`")
        epochs = pool.trajectory_epochs
        if max_start + span > epochs:
            raise PoolError(
                f"--max-start-epoch {max_start} + --expert-epochs {span} exceeds the "
                f"{epochs} epochs of the trajectories in pool {pool.path}")
        super().__init__(pool, sample_n_nets, seed, holdout, device, names)
        self.span, self.max_start, self.cache = span, max_start, cache
        self.info.update(expert_epochs=span, max_start_epoch=max_start,
                         trajectory_epochs=epochs)
        self._trajectories: dict[int, Params] = {}

    def draws(self, iteration: int) -> list[tuple[int, int]]:
        """(pool index, start epoch) of every segment of ``iteration``."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, "expert", iteration))
        order = torch.randperm(len(self.train), generator=g)[: self.sample_n_nets].tolist()
        starts = torch.randint(0, self.max_start + 1, (len(order),), generator=g).tolist()
        return sorted((self.train[j], t) for j, t in zip(order, starts))

    def _trajectory(self, index: int) -> Params:
        traj = self._trajectories.pop(index, None)
        if traj is None:
            traj = _model_order(self.pool.load_trajectory(index, self.device), self.names)
            moved = [t for t in range(self.max_start + 1) if not any(
                (v[t] != v[t + self.span]).any() for v in traj.values())]
            if moved:  # L would be 0 / 0
                raise PoolError(f"pool {self.pool.path}: net {index}'s weights do not change "
                                f"from epoch {moved[0]} to {moved[0] + self.span}")
            if len(self._trajectories) >= self.cache:
                self._trajectories.pop(next(iter(self._trajectories)))
        self._trajectories[index] = traj  # most recently used last
        return traj

    def segments(self, iteration: int) -> tuple[list[Params], list[Params]]:
        starts, targets = [], []
        for index, t in self.draws(iteration):
            traj = self._trajectory(index)
            starts.append({k: v[t] for k, v in traj.items()})
            targets.append({k: v[t + self.span] for k, v in traj.items()})
        return starts, targets

    def sample(self, iteration: int) -> list[Params]:
        return self.segments(iteration)[0]

    def eval_inits(self, n: int) -> list[Params] | None:
        return None  # the set is for training fresh nets (MTT's evaluation)

    @property
    def eval_mode(self) -> str:
        # The experts only shaped the set; it is meant for fresh nets, so dd eval replays
        # it from (or trains) random ones. The bundle's extra["init"] records the pool.
        return InitMode.RANDOM.value


def make_init_source(cfg, model: nn.Module, device: torch.device, *,
                     segments: bool = False, dataset: str | None = None) -> InitSource:
    """Build the init source named by ``cfg.init.mode``; with ``segments`` (an objective
    that matches expert trajectories) a pretrained-random one yields expert segments.
    ``dataset``: the name of the data distilled (default ``cfg.data.dataset``)."""
    i = cfg.init
    dataset = dataset or cfg.data.dataset
    if i.mode == InitMode.FIXED:
        params = init_params(model, cfg.model.init_scheme, i.seed)
        return FixedInit({k: v.to(device) for k, v in params.items()})
    if i.mode == InitMode.RANDOM:
        return RandomInit(model, cfg.model.init_scheme, i.seed, i.n_nets, i.sample_n_nets, device)
    if is_pretrained(i.mode):
        from ddcli.pool.folder import Pool

        pool = Pool.load(i.pool)
        spec = model.ddcli_spec
        pool.check_fits(spec, dataset=dataset, num_classes=spec["num_classes"],
                        input_shape=(spec["in_channels"], spec["image_size"], spec["image_size"]))
        source = cfg.objective.source_dataset
        if source and source != pool.dataset:
            raise PoolError(f"--source-dataset is {source} but pool {i.pool} was pretrained on "
                            f"{pool.dataset}")
        names = [name for name, _ in model.named_parameters()]
        if is_fixed(i.mode):
            return PretrainedFixedInit(pool, i.pool_index, i.pool_holdout, device, names)
        if segments:
            if pool.dataset != dataset:
                # Same-shaped images pass check_fits, but another dataset's experts lead
                # the set towards that dataset's weights.
                raise PoolError(
                    f"pool {i.pool} holds experts trained on {pool.dataset}, but this run "
                    f"distils {dataset}: trajectory matching follows experts trained on the "
                    f"data it distils (`dd pretrain {dataset} --trajectories -o DIR`)")
            o = cfg.objective
            return ExpertSegments(pool, i.sample_n_nets, i.seed, i.pool_holdout,
                                  o.expert_epochs, o.max_start_epoch, device, names)
        return PretrainedRandomInit(pool, i.sample_n_nets, i.seed, i.pool_holdout, device, names)
    raise ConfigError(f"--init-mode {i.mode} is not supported by this build")


def _model_order(params: Params, names: list[str]) -> Params:
    # The unroll's float rounding depends on the params' order: always the model's.
    return {name: params[name] for name in names}


def _span(indices: list[int]) -> str:
    return ", ".join(map(str, indices[:8])) + (", ..." if len(indices) > 8 else "")
