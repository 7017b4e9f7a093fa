"""Reading a run folder without running it: the bundle of its last checkpoint, or of one
of its snapshots, as the run would write it there. ``dd eval RUN`` and ``dd export RUN``
read runs through this, also while they are going."""

from __future__ import annotations

from pathlib import Path

from ddcli.bundle import Bundle
from ddcli.data import RealData
from ddcli.engine.outputs import make_bundle, rewind_to_snapshot
from ddcli.engine.runtime import Runtime
from ddcli.engine.state import load_checkpoint
from ddcli.layering import resumed_config


def run_bundle(run_dir: str | Path, *, data: RealData | None = None,
               data_root: str | Path | None = None,
               snapshot: str | Path | None = None) -> tuple[Bundle, RealData]:
    """The bundle of a run folder's last checkpoint, as the run would write it if it
    finished there, and the data it was made on. The run is only read: it may still be
    going (checkpoints are written by rename, so a reader sees the last whole one).

    ``snapshot`` (a file of ``RUN_DIR/snapshots/``, written by ``--snapshot-every``):
    the set of that iteration instead, with the time and loss the run's metrics log
    recorded there; its summary's ``snapshot`` says so. For a set chosen on a validation
    split (``dd eval SNAPSHOT --validation N``), and for curves.

    ``data_root`` is the machine's, as for ``resume``. ``dd eval RUN_DIR`` and
    ``dd eval RUN_DIR/snapshots/iter_K.pt`` use this, and ``dd export`` of either.

    Example:
        >>> from ddcli.engine.reader import run_bundle
        >>> bundle, data = run_bundle("runs/dm-mnist-ipc1")  # doctest: +SKIP
        >>> bundle.summary["iterations"]  # doctest: +SKIP
        1200
    """
    state = load_checkpoint(run_dir)
    overrides = {"data": {"data_root": str(data_root)}} if data_root is not None else None
    rt = Runtime(resumed_config(state.config, overrides), data)
    rt.restore(state)
    checkpointed = state.iteration
    if snapshot is not None:
        rewind_to_snapshot(state, Path(run_dir), Path(snapshot))
    bundle = make_bundle(rt, state, rt.init_source(state))
    if snapshot is not None:
        bundle.summary["snapshot"] = {"file": f"snapshots/{Path(snapshot).name}",
                                      "iteration": state.iteration,
                                      "run_checkpointed_at": checkpointed}
    return bundle, rt.data
