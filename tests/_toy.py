"""A tiny, learnable, seeded stand-in for a real dataset (no files, no downloads)."""

import torch

from ddcli.data import RealData


def toy_data(classes=3, hw=8, n_train=96, n_test=48, channels=1, seed=0) -> RealData:
    """Classes differ by a bright square in a class-specific place, plus noise."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.arange(n) % classes
        x = 0.3 * torch.randn(n, channels, hw, hw, generator=g)
        for c in range(classes):
            r = (2 * c) % (hw - 2)
            x[y == c, :, r : r + 2, r : r + 2] += 2.0
        return x, y

    train_x, train_y = split(n_train)
    test_x, test_y = split(n_test)
    return RealData(
        name="toy", train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        classes=[f"class{c}" for c in range(classes)],
        mean=(0.5,) * channels, std=(0.25,) * channels,
    )


TOY_CONFIG = {
    "data": {"dataset": "toy", "batch_size": 32},
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "synth": {"steps": 2, "epochs": 2, "step_lr": 0.05},
    "optim": {"iterations": 8, "meta_lr": 0.05, "decay_every": 1.0},
    "run": {"checkpoint_every": 3, "log_every": 1, "device": "cpu"},
}


def toy_config(*layers: dict, **sections: dict):
    """A DistillConfig for ``toy_data``: ``TOY_CONFIG`` with each layer, then ``sections``,
    merged over it section by section."""
    from ddcli import DistillConfig

    base = {name: dict(values) for name, values in TOY_CONFIG.items()}
    for layer in (*layers, sections):
        for name, values in layer.items():
            base.setdefault(name, {}).update(values)
    return DistillConfig.from_dict(base)


def distill_until_ctrl_c(cfg, out, data, at: int) -> None:
    """Run ``distill`` and press Ctrl-C (a real SIGINT) after iteration ``at``; the run
    must stop with ``Interrupted``, leaving its run folder to resume."""
    import os
    import signal

    import pytest

    from ddcli import distill
    from ddcli.errors import Interrupted

    class CtrlC:
        def on_iteration(self, info):
            if info.iteration == at:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        distill(cfg, out=out, data=data, callbacks=CtrlC())


def straight_and_resumed(cfg, tmp_path, data, at: int = 3):
    """The same run twice: straight through, and stopped by Ctrl-C after iteration ``at``
    then resumed; returns both results (a bit-exact resume makes them equal)."""
    from ddcli import distill, resume

    full = distill(cfg, out=tmp_path / "full.safetensors", data=data)
    distill_until_ctrl_c(cfg, tmp_path / "part.safetensors", data, at=at)
    return full, resume(tmp_path / "part.run", data=data)


def tiny_mlp():
    """A 16 -> 8 -> 3 MLP for 1x4x4 inputs (the SGD reference tests' model)."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3))


def torch_sgd_reference(p0, x, y, *, lr, epochs, batch, seed, decay, decay_epoch,
                        fresh_optimizer=False):
    """Train ``tiny_mlp()`` from ``p0`` with torch.optim.SGD (momentum 0.9, wd 5e-4), net
    order from ``manual_seed(seed)``; after ``decay_epoch`` epochs the lr is multiplied by
    ``decay``, in the same optimiser (StepLR's way) or a new one (DC's code:
    ``if ep in lr_schedule: lr *= 0.1; optimizer = SGD(...)``). Returns the module."""
    ref = tiny_mlp()
    ref.load_state_dict(p0)
    opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    order = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        perm = torch.randperm(x.shape[0], generator=order)
        for i in range(0, x.shape[0], batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
        if ep + 1 == decay_epoch:
            lr = lr * decay
            if fresh_optimizer:
                opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
            else:
                for group in opt.param_groups:
                    group["lr"] = lr
    return ref


class Tiny(torch.nn.Module):
    """A 2-layer net on c x hw x hw images: small enough for finite differences in float64."""

    def __init__(self, classes=3, *, c=1, hw=4):
        super().__init__()
        self.fc1 = torch.nn.Linear(c * hw * hw, 5)
        self.fc2 = torch.nn.Linear(5, classes)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))
