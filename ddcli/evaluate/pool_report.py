"""A PoolEvalReport (pretrained, adapt and attack bundles) as text tables."""

from __future__ import annotations

from ddcli.evaluate.initial_nets import HELD_OUT, RANDOM, STORED
from ddcli.evaluate.pool_eval import PHASES, PoolEvalReport
from ddcli.infra.text import count

_HEAD = {"before": "before", "after": "after (distilled)", "baseline": "random real"}
_GROUP = {HELD_OUT: "held-out pool nets", STORED: "stored init net", RANDOM: "fresh random nets"}


def pool_report_lines(r: PoolEvalReport) -> list[str]:
    """The report as lines of text: a header, a table per group of nets, per-class accuracy.

    Example:
        >>> print("\n".join(pool_report_lines(report)))  # doctest: +SKIP
    """
    what = {"attack": f"attack {r.attack_class} -> {r.target_class}",
            "adapt": f"adapt {r.source_dataset} -> {r.dataset}"}.get(r.objective, "distill")
    where = "" if r.objective == "adapt" else f" on {r.dataset}"
    out = [f"{r.bundle or 'bundle'}: {what}{where}, {r.init_mode} init"
           + (f" from pool {r.pool}" if r.pool else "")
           + f", {count(r.steps, 'step')} x {count(r.epochs, 'epoch')}, {count(r.images, 'image')}"]
    out += [f"note: {n}" for n in r.notes]
    groups = [g for g in (HELD_OUT, RANDOM, STORED) if r.values("before", "accuracy", g)]
    names = {"accuracy": "accuracy", "other_accuracy": f"accuracy, classes != {r.attack_class}",
             "success_rate": f"attack success {r.attack_class} -> {r.target_class}"}
    for group in groups:
        n = len(r.values("before", "accuracy", group))
        out.append("")
        out.append(f"{_GROUP[group]} ({n}), test set of {r.dataset}; mean ± std over nets")
        out.append(_row("", [_HEAD[p] for p in PHASES]))
        for m in r.metrics():
            out.append(_row(names[m], [_pm(*r.stat(p, m, group)) for p in PHASES]))
    group = r.group
    out.append("")
    out.append(f"per-class accuracy, {_GROUP[group]} (mean)")
    out.append(_row("class", [_HEAD[p] for p in PHASES]))
    cols = [r.per_class(p, group) for p in PHASES]
    for c, name in enumerate(r.classes):
        label = str(c) if name == str(c) else f"{c} {name}"
        out.append(_row(label[:30], [f"{100 * col[c]:.1f}%" for col in cols]))
    return out


def _row(label: str, cells: list[str]) -> str:
    return f"{label:32s}" + "".join(f"{cell:>20s}" for cell in cells)


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}%"
