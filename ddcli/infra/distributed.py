"""Several processes, one run: the sampled networks split across ranks (torch.distributed).

Launched by ``torchrun --nproc-per-node N -m ddcli distill ...`` or by
``dd distill --nproc N``, which runs torchrun for the user. The protocol:

- Every rank builds the same run (same config, same seeds): the same real batch, the
  same list of networks for the iteration. Network j of an iteration is seeded by its
  global index j, so the union over ranks is the set a single process would use.
- Rank r takes a contiguous share of that list (``Dist.share``).
- At the start (fresh or resumed) rank 0 broadcasts the synthetic images and raw rates,
  so all ranks begin from bit-identical state.
- Each iteration, every rank sums (loss, d/d images, d/d raw rates) over its networks;
  one all-reduce adds the sums (and a stop flag: Ctrl-C, SIGTERM or SIGHUP), and every
  rank divides by the GLOBAL number of networks and takes the same Adam step.
- Only rank 0 writes the run folder (config, checkpoints, metrics) and the bundle, and
  only its callbacks draw progress. The run folder must be visible to every rank for a
  resume (one machine, or a shared filesystem).
- gloo on CPU, nccl on CUDA (each rank on cuda:LOCAL_RANK).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ddcli.errors import ConfigError
from ddcli.infra import signals
from ddcli.init_modes import is_fixed


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def inside_launcher() -> bool:
    """True in a process started by torchrun (so ``--nproc`` must not launch again)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or env_world()[1] > 1


def check_config(cfg, world: int) -> None:
    """Refuse a configuration that can't be split over ``world`` processes."""
    n = cfg.run.nproc
    if world == 1 and n > 1:
        raise ConfigError(
            f"run.nproc is {n} but this is a single process: use `dd distill --nproc {n}`, or "
            f"`torchrun --nproc-per-node {n} -m ddcli distill ...`")
    if world > 1 and n > 1 and n != world:
        raise ConfigError(f"run.nproc is {n} but torchrun started {world} processes; "
                          f"pass --nproc {world}")
    if world == 1:
        return
    mode = cfg.init.mode
    if is_fixed(mode):
        raise ConfigError(
            f"--init-mode {mode} trains one network, which can't be split over {world} "
            "processes: run it in one process, or use --init-mode random / pretrained-random")
    if cfg.init.sample_n_nets < world:
        raise ConfigError(
            f"{world} processes share --sample-n-nets {cfg.init.sample_n_nets} networks; "
            f"each needs at least one: use --sample-n-nets >= {world} or fewer processes")


@dataclass
class Dist:
    """This process's place in the run: rank, world size, and the collectives used."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence) -> list:
        """This rank's contiguous share of ``items`` (sizes differ by at most one)."""
        base, extra = divmod(len(items), self.world)
        start = self.rank * base + min(self.rank, extra)
        return list(items[start : start + base + (self.rank < extra)])

    def all_reduce_sum_(self, flat: Tensor) -> Tensor:
        if self.world > 1:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return flat

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values."""
        if self.world > 1:
            for t in tensors:
                dist.broadcast(t.detach(), src=0)

    def barrier(self) -> None:
        """Wait for every rank (e.g. for rank 0's writes before anyone exits)."""
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup(device: torch.device) -> Dist:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA), or a 1-process Dist."""
    rank, world, local_rank = env_world()
    if world == 1:
        return Dist()
    # A worker must not outlive torchrun, even one killed with SIGKILL (which can't pass
    # anything on): the kernel sends SIGTERM, and the run stops as if signalled.
    signals.die_with_parent(signal.SIGTERM)
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"several processes need --device cpu or cuda, not {device.type}")
    owns = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        owns = True
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                owns_group=owns)


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """The command that runs ``dd <args>`` in ``nproc`` processes on this machine."""
    # ddcli.infra.torchrun is torchrun with one-line errors (no traceback, one report)
    return [sys.executable, "-m", "ddcli.infra.torchrun", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "ddcli", *args]


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``dd <args>`` under torchrun with ``nproc`` processes; return its exit code.

    Each process gets an equal share of the CPU cores (OMP_NUM_THREADS) unless the
    caller set it. SIGINT, SIGTERM and SIGHUP sent here are passed to torchrun, which
    passes them to every process; they agree on the iteration to stop after, rank 0
    writes a checkpoint, and all exit with 128 + N (130, 143, 129). A second signal
    stops them at once. torchrun and the workers die with their parent, so none of them
    outlives this process, however it ends.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env[signals.PARENT_PID_ENV] = str(os.getpid())  # torchrun checks it's still alive
    with signals.forward_signals() as forwarded:
        # A session of its own: a terminal's Ctrl-C or hangup reaches this process only,
        # which passes it on once, so each worker is signalled exactly once (by torchrun).
        proc = forwarded.attach(subprocess.Popen(torchrun_command(nproc, args), env=env,
                                                 start_new_session=True))
        try:
            code = proc.wait()
        finally:
            if proc.poll() is None:  # leaving on an error of our own: take the run along
                proc.kill()  # the workers get their parent-death SIGTERM
                proc.wait()
    code = 128 - code if code < 0 else code  # killed by signal N: as a shell reports it
    return forwarded.exit_code if forwarded.requested and code != 0 else code
