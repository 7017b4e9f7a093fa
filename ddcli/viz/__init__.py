"""Pictures of distilled data: image grids, the lr schedule, and a reusable line chart.

Example:
    >>> from ddcli.viz import visualize, line_chart, save_png
    >>> visualize("m.safetensors", "m.viz")  # doctest: +SKIP
    >>> save_png(line_chart({"acc": [0.1, 0.5, 0.9]}), "acc.png")  # doctest: +SKIP
"""

from ddcli.viz._canvas import labelled_grid, save_gif, save_png
from ddcli.viz._chart import line_chart
from ddcli.viz._pixels import denormalize, to_uint8
from ddcli.viz._snapshots import SNAPSHOT_DIR, Snapshot, load_snapshots
from ddcli.viz._visualize import (
    LAYOUTS,
    change_overview,
    evolution_strip,
    lr_chart,
    overview,
    starting_images,
    step_grid,
    top_labels,
    visualize,
)

__all__ = [
    "LAYOUTS",
    "SNAPSHOT_DIR",
    "Snapshot",
    "change_overview",
    "denormalize",
    "evolution_strip",
    "labelled_grid",
    "line_chart",
    "load_snapshots",
    "lr_chart",
    "overview",
    "save_gif",
    "save_png",
    "starting_images",
    "step_grid",
    "to_uint8",
    "top_labels",
    "visualize",
]
