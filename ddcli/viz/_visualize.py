"""Pictures of a bundle: a grid per step, an overview, the lr schedule, the evolution."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from ddcli.engine.inits import initial_images
from ddcli.bundle import Bundle
from ddcli.errors import CheckpointError, ConfigError, ExportError
from ddcli.viz._canvas import CAPTION_SEP, labelled_grid, save_gif, save_png
from ddcli.viz._chart import line_chart
from ddcli.viz._pixels import denormalize
from ddcli.viz._snapshots import Snapshot, load_snapshots
from ddcli.infra.text import count

LAYOUTS = ("auto", "rows", "columns")
MAX_SCALE = 32
STRIP_ROWS = 12  # the evolution strip shows at most this many snapshots, evenly spread
GIF_FRAMES = 60


def visualize(
    bundle: Bundle | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    scale: int = 4,
    layout: str = "auto",
    run_dir: str | os.PathLike | None = None,
    evolution_step: int = 0,
    change: bool = False,
    data_root: str | os.PathLike | None = None,
) -> list[Path]:
    """Draw a bundle as PNGs in ``out_dir``; return the paths written, in order.

    Writes ``step_<s>.png`` (one grid per step, titled with that step's rate in every
    pass), ``overview.png`` (steps x classes) and ``lr_schedule.png``. With ``run_dir``
    it also writes ``evolution.png`` (step ``evolution_step`` at the run's checkpoints and
    snapshots, a row each, at most 12 spread evenly) and ``evolution.gif`` (the overview
    at half the scale for each, at most 60 frames). With ``change`` it also writes
    ``change.png``: what distillation added to each image, ``images - starting noise``
    (see ``change_overview``).
    Pixels are de-normalised with the bundle's mean/std (ZCA bundles: un-whitened with
    the ZCA re-fitted on the dataset under ``data_root``, a cached fit) and clipped to
    [0, 1]. Soft-label bundles caption every image with its top labels ("3:.71  5:.20", class:probability).
    Equal inputs give byte-identical files.

    Args:
        bundle: a ``Bundle`` or the path of one.
        out_dir: folder for the pictures; created if missing.
        scale: nearest-neighbour upscaling factor, 1 to 32.
        layout: ``rows`` (a row per class), ``columns`` (a column per class) or ``auto``
            (columns unless there are more than 20 classes or more images per class
            than classes).
        run_dir: a run folder to read ``checkpoint*.pt`` and ``snapshots/*.pt`` from.
        evolution_step: which step the evolution strip follows.
        change: also draw the learned change from the starting noise.
        data_root: where a ZCA bundle's dataset is (``load_dataset``'s root).

    Raises:
        ConfigError: a bad ``scale``, ``layout`` or ``evolution_step``, or ``change`` for
            a bundle that doesn't record the seed its images started from.
        BundleFormatError: ``bundle`` is a path to a missing or corrupt file.
        CheckpointError: ``run_dir`` has no readable snapshots matching the bundle.
        ExportError: ``out_dir`` can't be written.
        ZCAError: a ZCA bundle's training data is missing or differs from the fitted data.

    Example:
        >>> from ddcli.viz import visualize
        >>> paths = visualize("m.safetensors", "m.viz", scale=4)  # doctest: +SKIP
        >>> [p.name for p in paths][-2:]  # doctest: +SKIP
        ['overview.png', 'lr_schedule.png']
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= MAX_SCALE:
        raise ConfigError(f"--scale must be an integer from 1 to {MAX_SCALE}, got {scale!r}")
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    if not 0 <= evolution_step < bundle.steps:
        raise ConfigError(f"--step must be from 0 to {bundle.steps - 1}, got {evolution_step}")
    start = starting_images(bundle) if change else None
    snapshots = _matching(load_snapshots(run_dir), bundle) if run_dir is not None else []
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; give a folder for the pictures")
    learned = bundle  # change.png compares the bundle's own values with their start
    if bundle.pixel_space_record["kind"] != "normalized":
        bundle, snapshots = _as_pixels(bundle, snapshots, data_root)

    digits = len(str(bundle.steps - 1))
    written = [save_png(step_grid(bundle, s, scale=scale, layout=layout),
                        out / f"step_{s:0{digits}d}.png") for s in range(bundle.steps)]
    written.append(save_png(overview(bundle, scale=scale), out / "overview.png"))
    written.append(save_png(lr_chart(bundle), out / "lr_schedule.png"))
    if start is not None:
        written.append(save_png(change_overview(learned, start, scale=scale),
                                out / "change.png"))
    if snapshots:
        strip = evolution_strip(bundle, _spread(snapshots, STRIP_ROWS), step=evolution_step,
                                scale=scale)
        written.append(save_png(strip, out / "evolution.png"))
        # GIF frames are whole overviews: at half the scale, or the file grows by megabytes
        frames = [_overview_image(bundle, snap.images, scale=max(1, scale // 2),
                                  title=f"iteration {snap.iteration} · lr "
                                  f"{snap.lrs.min().item():.2g} to {snap.lrs.max().item():.2g}")
                  for snap in _spread(snapshots, GIF_FRAMES)]
        written.append(save_gif(frames, out / "evolution.gif"))
    return written


def step_grid(bundle: Bundle, step: int, *, scale: int = 4, layout: str = "auto") -> Image.Image:
    """The images of one step, a row or column per class, titled with its learned rates."""
    groups = _by_class(bundle, bundle.images[step], bundle.labels[step])  # (K, k, C, H, W)
    classes, k = groups.shape[:2]
    if layout == "auto":
        layout = "columns" if k <= classes and classes <= 20 else "rows"
    title = _step_title(bundle, step)
    captions = _captions_by_class(bundle, step) if bundle.has_soft_labels else None  # (K, k)
    if layout == "columns":
        return labelled_grid(groups.transpose(0, 1), scale=scale, title=title,
                             col_labels=bundle.classes,
                             cell_captions=captions and [list(r) for r in zip(*captions)])
    return labelled_grid(groups, scale=scale, title=title, row_labels=bundle.classes,
                         cell_captions=captions)


def overview(bundle: Bundle, *, scale: int = 4) -> Image.Image:
    """Every image of the bundle: a row per step, a column per image, grouped by class."""
    lrs = bundle.lrs
    title = (f"{bundle.dataset} · {count(bundle.steps, 'step')} x "
             f"{count(bundle.images.shape[1], 'image')} · {count(bundle.epochs, 'pass')} · lr {lrs.min().item():.2g} to {lrs.max().item():.2g}")
    if bundle.has_soft_labels:
        title += " · captions: top soft labels, class:probability"
    return _overview_image(bundle, bundle.images, scale=scale, title=title,
                           captions=bundle.has_soft_labels)


def starting_images(bundle: Bundle) -> Tensor:
    """The images ``bundle``'s run started from, rebuilt from its recorded seed.

    Raises:
        ConfigError: the bundle wasn't made by ``dd distill`` (no recorded init seed), or
            its run started from real images.
    """
    init = bundle.config.get("init") if isinstance(bundle.config, dict) else None
    if not isinstance(init, dict) or "seed" not in init:
        raise ConfigError("--change needs a bundle made by `dd distill`: this one doesn't "
                          "record the seed its images started from")
    synth = bundle.config.get("synth", {})
    if synth.get("init_from"):
        raise ConfigError("--change subtracts the starting noise; this bundle's run started "
                          f"from another bundle's images (--init-from {synth['init_from']})")
    if synth.get("init_images", "noise") != "noise":
        raise ConfigError("--change subtracts the starting noise; this bundle's run started "
                          "from real images (--init-images real)")
    return initial_images(bundle.images.shape, int(init["seed"]))


def change_overview(bundle: Bundle, start: Tensor, *, scale: int = 4) -> Image.Image:
    """What distillation added to every image: ``images - start``, laid out as ``overview``.

    Mid-gray is no change; lighter is brighter than the starting noise, darker is darker.
    One scale for the whole picture (the 99.5th percentile of |change|, printed in the
    title maps to white/black), so cells compare with each other. This removes the
    starting noise, which the bundle's own pixels keep: early in a run (a few hundred
    iterations) the change shows class structure well before the images themselves do.
    """
    delta = bundle.images.detach().float().cpu() - start  # normalised units
    limit = max(float(delta.abs().flatten().quantile(0.995)), 1e-12)
    pixels = (delta / (2 * limit) + 0.5).clamp(0, 1)
    title = (f"learned change: images - starting noise (seed {bundle.config['init']['seed']}) "
             f"· gray 0, white/black +/-{limit:.2g} std")
    return _overview_image(bundle, pixels, scale=scale, title=title, pixels=True)


def lr_chart(bundle: Bundle, *, size: tuple[int, int] = (640, 360)) -> Image.Image:
    """The learned rate of each of the T GD steps, with the passes marked."""
    s, e = bundle.steps, bundle.epochs
    marks = [(p * s - 0.5, f"pass {p + 1}") for p in range(1, e)]
    return line_chart(
        {"lr": bundle.lrs.tolist()}, size=size, marks=marks, y_min=0.0,
        title=f"learned lr per GD step · {count(e, 'pass')} x {count(s, 'step')}",
        x_label=f"GD step t (uses the images of step t mod {s})", y_label="lr",
    )


def evolution_strip(bundle: Bundle, snapshots: list[Snapshot], *, step: int = 0,
                    scale: int = 4) -> Image.Image:
    """One step's images at every snapshot, a row per snapshot, oldest first."""
    rows = torch.stack([
        _by_class(bundle, snap.images[step], bundle.labels[step]).flatten(0, 1)
        for snap in snapshots
    ])  # (R, K * k, C, H, W)
    return labelled_grid(rows, scale=scale, title=f"step {step} over {len(snapshots)} snapshots",
                         row_labels=[f"it {snap.iteration}" for snap in snapshots],
                         col_labels=bundle.classes, col_span=bundle.images_per_class)


def _step_title(bundle: Bundle, step: int) -> str:
    # GD step t uses the images of step t % S, so step s has rates t = s, s + S, s + 2S, ...
    lrs = bundle.lrs
    rates = " / ".join(f"{lrs[e * bundle.steps + step].item():.2g}" for e in range(bundle.epochs))
    # Labelled apart from the progress display's "lr min/mean/max": one rate per pass.
    return f"step {step} · lr per pass {rates}"


def _overview_image(bundle: Bundle, images: Tensor, *, scale: int, title: str,
                    pixels: bool = False, captions: bool = False) -> Image.Image:
    rows = torch.stack([
        _by_class(bundle, images[s], bundle.labels[s], pixels=pixels).flatten(0, 1)
        for s in range(bundle.steps)
    ])  # (S, K * k, C, H, W)
    cell_captions = ([[c for group in _captions_by_class(bundle, s) for c in group]
                      for s in range(bundle.steps)] if captions else None)
    return labelled_grid(rows, scale=scale, title=title,
                         row_labels=[f"step {s}" for s in range(bundle.steps)],
                         col_labels=bundle.classes, col_span=rows.shape[1] // bundle.num_classes,
                         cell_captions=cell_captions)


def top_labels(probs: Tensor, k: int = 2, min_prob: float = 0.01) -> str:
    """A label distribution (C,) as its top classes, e.g. ``"3:.71 5:.20"``.

    Classes are label indices, each joined to its probability by a colon, so that a
    caption can't read as decimals ("3 .71 / 5 .20" looked like 3.71 and 5.20);
    probabilities below ``min_prob`` are left out (the top one always shows).
    """
    p, idx = probs.float().topk(min(k, probs.numel()))
    parts = [f"{int(i)}:{_prob(float(v))}" for j, (v, i) in enumerate(zip(p, idx))
             if j == 0 or float(v) >= min_prob]
    return CAPTION_SEP.join(parts)


def _prob(p: float) -> str:
    text = f"{p:.2f}"
    return text[1:] if text.startswith("0.") else text  # ".71", like a probability table


def _captions_by_class(bundle: Bundle, step: int) -> list[list[str]]:
    """Top soft labels of one step's images, grouped as ``_by_class``: (K, k) strings."""
    probs, labels = bundle.label_probs()[step], bundle.labels[step]  # (n, C), (n,)
    members = [(labels == c).nonzero().flatten() for c in range(bundle.num_classes)]
    k = max(len(m) for m in members)
    return [[top_labels(probs[i]) for i in idx] + [""] * (k - len(idx)) for idx in members]


def _by_class(bundle: Bundle, images: Tensor, labels: Tensor, *,
              pixels: bool = False) -> Tensor:
    """Pixels of one step grouped by class: (K, k, C, H, W); blank cells pad short classes.

    ``images`` are normalised, or already [0, 1] display values with ``pixels``.
    """
    x01 = images if pixels else denormalize(images, bundle.mean, bundle.std).clamp(0, 1)
    members = [(labels == c).nonzero().flatten() for c in range(bundle.num_classes)]
    k = max(len(m) for m in members)
    out = torch.ones(bundle.num_classes, k, *x01.shape[1:])
    for c, idx in enumerate(members):
        out[c, : len(idx)] = x01[idx]
    return out


def _as_pixels(bundle: Bundle, snapshots: list[Snapshot],
               data_root) -> tuple[Bundle, list[Snapshot]]:
    """A ZCA bundle (and its snapshots) as [0, 1] pixels with an identity normalisation."""
    from ddcli.data.zca import zca_from_record  # imports kornia: only for ZCA bundles

    zca = zca_from_record(bundle.pixel_space_record, data_root=data_root)
    c = bundle.input_shape[0]
    shown = dataclasses.replace(bundle, images=zca.invert(bundle.images.detach().float()),
                                mean=(0.0,) * c, std=(1.0,) * c, pixel_space=None)
    return shown, [dataclasses.replace(snap, images=zca.invert(snap.images.float()))
                   for snap in snapshots]


def _spread(snapshots: list[Snapshot], most: int) -> list[Snapshot]:
    """At most ``most`` snapshots, evenly spread, always the first and the last."""
    if len(snapshots) <= most:
        return snapshots
    picks = sorted({round(i * (len(snapshots) - 1) / (most - 1)) for i in range(most)})
    return [snapshots[i] for i in picks]


def _matching(snapshots: list[Snapshot], bundle: Bundle) -> list[Snapshot]:
    for snap in snapshots:
        if snap.images.shape != bundle.images.shape:
            raise CheckpointError(
                f"{snap.path} holds images {tuple(snap.images.shape)} but the bundle has "
                f"{tuple(bundle.images.shape)}; pass the run folder this bundle came from"
            )
    return snapshots
