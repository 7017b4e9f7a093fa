"""Pools of pretrained networks: the folder format, loading, the train/held-out split.

A pool is a folder made by ``dd pretrain``:

    POOL_DIR/pool.json              the manifest (format below)
    POOL_DIR/net-00000.safetensors  one file per network: its parameters by name,
    POOL_DIR/net-00001.safetensors  plus text metadata (index, seed, test accuracy)
    ...

``pool.json`` holds ``format`` ("ddcli-pool"), ``format_version``, ``ddcli_version``,
``dataset``, ``classes``, ``mean``, ``std``, ``input_shape`` (C, H, W), ``model`` (a
``create_model`` spec), ``init_scheme``, ``seed`` (the base seed; net ``i`` starts from
``derive_seed(seed, "pool-net", i)``), ``recipe`` (how each net was trained) and
``nets``: one record per network with ``index``, ``file``, ``seed``, ``test_acc`` and
``sha256`` (of the file's bytes). Each net file carries its own record too, so a
manifest lost in a crash is rebuilt from the files.

A pool pretrained with ``--trajectories`` (recipe ``"trajectories": true``) also keeps
each net's expert trajectory, the buffers trajectory matching (MTT) starts from and
aims at:

    POOL_DIR/traj-00000.safetensors  the net's weights after every epoch 0..E (epoch 0:
                                     its init), each parameter stacked as (E + 1, *shape),
                                     plus the net file's metadata and ``epochs`` (E)

and the net's record names it (``trajectory``, ``trajectory_sha256``). A pool without
trajectories has neither key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ddcli.infra import io as _io
from ddcli.core.seeds import derive_seed
from ddcli._version import __version__
from ddcli.errors import ConfigError, PoolError
from ddcli.core.params import Params

MANIFEST = "pool.json"
FORMAT_NAME = "ddcli-pool"
NET_FORMAT_NAME = "ddcli-pool-net"
TRAJECTORY_FORMAT_NAME = "ddcli-pool-trajectory"
FORMAT_VERSION = 1


def net_file(index: int) -> str:
    return f"net-{index:05d}.safetensors"


def trajectory_file(index: int) -> str:
    return f"traj-{index:05d}.safetensors"


@dataclass
class PoolNet:
    """One pretrained network's record in ``pool.json``."""

    index: int
    file: str
    seed: int
    test_acc: float
    sha256: str
    trajectory: str | None = None  # traj-NNNNN.safetensors, if the pool keeps trajectories
    trajectory_sha256: str | None = None
    # Process CPU seconds its training and test pass took (its group's, shared equally
    # when nets train together); None in pools made before ddcli recorded it.
    cpu_s: float | None = None

    def record(self) -> dict[str, Any]:
        """The manifest's record: the trajectory keys only where there is one."""
        out = asdict(self)
        if self.trajectory is None:
            del out["trajectory"], out["trajectory_sha256"]
        if self.cpu_s is None:
            del out["cpu_s"]
        return out


@dataclass
class Pool:
    """A pool of networks pretrained on one dataset, all of one architecture.

    Example:
        >>> pool = Pool.load("mnist-pool")  # doctest: +SKIP
        >>> train, held_out = pool.split(0.2)  # doctest: +SKIP
        >>> params = pool.load_net(train[0])  # doctest: +SKIP
    """

    path: Path
    dataset: str
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]
    model: dict[str, Any]
    init_scheme: str
    seed: int
    recipe: dict[str, Any]
    nets: list[PoolNet] = field(default_factory=list)

    @property
    def indices(self) -> list[int]:
        return [n.index for n in self.nets]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def net(self, index: int) -> PoolNet:
        for n in self.nets:
            if n.index == index:
                return n
        raise ConfigError(
            f"pool {self.path} has no net {index}; it holds {_ranges(self.indices)}"
        )

    # --- reading and writing ------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Pool":
        """Read a pool's manifest; raise PoolError if it is missing, empty or unreadable."""
        path = Path(path)
        if not path.exists():
            raise PoolError(f"no pool at {path}; make one with `dd pretrain DATASET -o {path}`")
        if not path.is_dir():
            raise PoolError(f"{path} is a file, not a pool folder made by `dd pretrain`")
        manifest = path / MANIFEST
        if not manifest.exists():
            raise PoolError(f"{path} has no {MANIFEST}: not a pool made by `dd pretrain`")
        try:
            meta = json.loads(manifest.read_text())
            if meta.get("format") != FORMAT_NAME:
                raise PoolError(f"{manifest} is not a ddcli pool manifest")
            if int(meta["format_version"]) > FORMAT_VERSION:
                raise PoolError(f"{manifest} uses pool format {meta['format_version']}, newer "
                                f"than this ddcli supports ({FORMAT_VERSION}); upgrade ddcli")
            pool = cls(
                path=path, dataset=meta["dataset"], classes=list(meta["classes"]),
                mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                input_shape=tuple(meta["input_shape"]), model=dict(meta["model"]),
                init_scheme=meta["init_scheme"], seed=int(meta["seed"]),
                recipe=dict(meta["recipe"]), nets=[PoolNet(**n) for n in meta["nets"]],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise PoolError(f"{manifest} is malformed ({type(exc).__name__}: {exc}); "
                            "rerun `dd pretrain` into the folder to rebuild it") from None
        if not pool.nets:
            raise PoolError(f"pool {path} is empty (0 nets); train some with `dd pretrain`")
        return pool

    def to_manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "ddcli_version": __version__, "dataset": self.dataset, "classes": self.classes,
            "mean": list(self.mean), "std": list(self.std), "input_shape": list(self.input_shape),
            "model": self.model, "init_scheme": self.init_scheme, "seed": self.seed,
            "recipe": self.recipe,
            "nets": [n.record() for n in sorted(self.nets, key=lambda n: n.index)],
        }

    def save_manifest(self) -> None:
        _io.write_json(self.path / MANIFEST, self.to_manifest())

    def write_net(self, index: int, params: Params, *, seed: int, test_acc: float,
                  trajectory: Params | None = None, cpu_s: float | None = None) -> PoolNet:
        """Write one network's file atomically and add (or replace) its record.

        ``trajectory``: its weights after every epoch, each parameter (E + 1, *shape);
        written first, so a net file on disk always has its trajectory beside it.
        """
        record = {"format": NET_FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                  "index": str(index), "seed": str(seed), "test_acc": repr(float(test_acc)),
                  "recipe": json.dumps(self.recipe, sort_keys=True),
                  "model": json.dumps(self.model, sort_keys=True)}
        if cpu_s is not None:
            cpu_s = round(float(cpu_s), 3)
            record["cpu_s"] = repr(cpu_s)
        traj_name = traj_hash = None
        if trajectory is not None:
            epochs = next(iter(trajectory.values())).shape[0] - 1
            traj = _tensors(trajectory)
            data = st_save(traj, metadata={**record, "format": TRAJECTORY_FORMAT_NAME,
                                           "epochs": str(epochs)})
            traj_name, traj_hash = trajectory_file(index), hashlib.sha256(data).hexdigest()
            _io.write_bytes(self.path / traj_name, data)
        data = st_save(_tensors(params), metadata=record)
        _io.write_bytes(self.path / net_file(index), data)
        net = PoolNet(index=index, file=net_file(index), seed=seed, test_acc=float(test_acc),
                      sha256=hashlib.sha256(data).hexdigest(), trajectory=traj_name,
                      trajectory_sha256=traj_hash, cpu_s=cpu_s)
        self.nets = [n for n in self.nets if n.index != index] + [net]
        self.nets.sort(key=lambda n: n.index)
        return net

    def load_net(self, index: int, device: torch.device | str = "cpu") -> Params:
        """One network's parameters, checked against the manifest's hash."""
        net = self.net(index)
        return self._read(net.file, net.sha256, device)

    @property
    def has_trajectories(self) -> bool:
        """Whether every net's expert trajectory is kept (``dd pretrain --trajectories``)."""
        return bool(self.nets) and all(n.trajectory is not None for n in self.nets)

    @property
    def trajectory_epochs(self) -> int:
        """E: a trajectory holds the weights after epochs 0..E."""
        return int(round(float(self.recipe.get("real_epochs", 0))))

    def load_trajectory(self, index: int, device: torch.device | str = "cpu") -> Params:
        """One network's trajectory, each parameter (E + 1, *shape), hash-checked."""
        net = self.net(index)
        if net.trajectory is None or net.trajectory_sha256 is None:
            raise PoolError(f"pool {self.path} keeps no trajectory for net {index}; pretrain "
                            "one with `dd pretrain --trajectories`")
        return self._read(net.trajectory, net.trajectory_sha256, device)

    def _read(self, name: str, sha256: str, device: torch.device | str) -> Params:
        try:
            data = (self.path / name).read_bytes()
        except OSError as exc:
            raise PoolError(f"pool {self.path}: can't read {name} "
                            f"({exc.strerror or exc}); rerun `dd pretrain` to restore it") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise PoolError(f"pool {self.path}: {name} does not match its hash in "
                            f"{MANIFEST} (modified or truncated)")
        # Sorted by name: safetensors returns a dict in no fixed order, and the order of
        # the params changes float rounding in the unroll (resume must be bit-exact).
        # Copies: tensors viewing the file's bytes may be misaligned.
        tensors = st_load(data)
        return {k: tensors[k].to(device, copy=True) for k in sorted(tensors)}

    # --- the train / held-out split -----------------------------------------------------
    def split(self, holdout: float) -> tuple[list[int], list[int]]:
        """Deterministic (train, held-out) net indices; the held-out part is ``holdout`` of it.

        The held-out nets are picked by a permutation seeded by the pool size, so the same
        pool always splits the same way, whatever the distillation seed. With any
        ``holdout > 0`` at least one net is held out and at least one kept for training.
        """
        if not 0 <= holdout < 1:
            raise ConfigError(f"--pool-holdout must be in [0, 1), got {holdout}")
        indices = self.indices
        n = len(indices)
        n_hold = 0 if holdout == 0 or n < 2 else min(n - 1, max(1, round(holdout * n)))
        g = torch.Generator().manual_seed(derive_seed("pool-holdout", n))
        order = torch.randperm(n, generator=g).tolist()
        held = sorted(indices[j] for j in order[:n_hold])
        train = sorted(indices[j] for j in order[n_hold:])
        return train, held

    def content_hash(self, indices: list[int] | None = None) -> str:
        """A short hash of the nets' file hashes: changes if any of those nets changes."""
        nets = self.nets if indices is None else [self.net(i) for i in sorted(indices)]
        text = "\n".join(f"{n.index}:{n.sha256}" for n in nets)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # --- compatibility -------------------------------------------------------------------
    def check_fits(self, model_spec: dict[str, Any], *, dataset: str,
                   input_shape: tuple[int, ...], num_classes: int) -> None:
        """Raise PoolError unless these nets can start a run of ``model_spec`` on ``dataset``."""
        where = f"pool {self.path} ({self.model.get('name')} on {self.dataset})"
        if tuple(self.input_shape) != tuple(input_shape):
            raise PoolError(
                f"{where} was trained on {_shape(self.input_shape)} images but {dataset} has "
                f"{_shape(input_shape)}; use a pool pretrained on images of that shape")
        if self.num_classes != num_classes:
            raise PoolError(f"{where} has {self.num_classes} classes but {dataset} has "
                            f"{num_classes}; use a pool with the same number of classes")
        if self.model.get("name") != model_spec.get("name"):
            raise PoolError(f"{where} holds {self.model.get('name')} nets but this run builds "
                            f"{model_spec.get('name')}; pass --model {self.model.get('name')}")
        if dict(self.model) != dict(model_spec):
            fix = " ".join(f"--model-arg {k}={json.dumps(v)}" for k, v in self.model.items()
                           if k != "name" and model_spec.get(k) != v)
            raise PoolError(f"{where} holds nets built as {json.dumps(self.model)} but this run "
                            f"builds {json.dumps(model_spec)}; match the model options"
                            + (f" ({fix})" if fix else ""))

    def describe(self) -> dict[str, Any]:
        return {"pool": str(self.path.absolute()), "pool_dataset": self.dataset,
                "pool_model": self.model.get("name"), "pool_size": len(self.nets),
                "pool_hash": self.content_hash()}


def _tensors(params: Params) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().contiguous().cpu() for k, v in params.items()}


def read_net_record(file: Path, kind: str = NET_FORMAT_NAME) -> dict[str, str] | None:
    """The metadata of one net file (or, with ``kind=TRAJECTORY_FORMAT_NAME``, one
    trajectory file), or None if the file is not a readable one."""
    try:
        data = file.read_bytes()
        st_load(data)  # the tensors must be readable too, not just the header
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + n]).get("__metadata__", {}) or {}
    except (OSError, SafetensorError, ValueError):
        return None
    if meta.get("format") != kind:
        return None
    return {**meta, "sha256": hashlib.sha256(data).hexdigest()}


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _ranges(indices: list[int]) -> str:
    if not indices:
        return "no nets"
    return f"{len(indices)} nets, indices {min(indices)}..{max(indices)}"
