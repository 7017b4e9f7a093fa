"""Named configurations: the paper's settings, and a quick one for a first run.

A preset is a partial config tree; ``dd distill --preset NAME`` merges it over the
defaults, then ``--config`` and command-line flags override it.
"""

from __future__ import annotations

import copy
from typing import Any

from ddcli.errors import ConfigError

_PAPER_MNIST = {
    "data": {"dataset": "mnist", "batch_size": 1024},
    "model": {"name": "lenet", "init_scheme": "xavier"},
    "synth": {"steps": 10, "epochs": 3, "images_per_class": 1, "step_lr": 0.02},
    "optim": {"meta_lr": 0.01, "decay_every": 40.0, "decay_factor": 0.5, "real_epochs": 400.0,
              "iterations": None},
}

# The reference's CIFAR-10 command: AlexCifarNet, distill_lr (our step_lr) 0.001, augmented real batches.
_PAPER_CIFAR10 = {
    "data": {"dataset": "cifar10", "batch_size": 1024, "augment": "crop-flip"},
    "model": {"name": "alexcifarnet", "init_scheme": "xavier"},
    "synth": {"steps": 10, "epochs": 3, "images_per_class": 1, "step_lr": 0.001},
    "optim": {"meta_lr": 0.01, "decay_every": 40.0, "decay_factor": 0.5, "real_epochs": 400.0,
              "iterations": None},
}


def _with(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for name, values in sections.items():
        out.setdefault(name, {}).update(values)
    return out


# Fashion-MNIST (not in the paper): the settings behind docs/results.md, sized for a
# 2-core CPU. LeNet keeps the paper's MNIST recipe on a shorter budget; ConvNet (the
# DC/DSA/MTT default, far heavier) uses real batches of 256 and a few hundred iterations.
_FASHION_LENET = _with(_PAPER_MNIST, data={"dataset": "fashion-mnist"},
                       optim={"decay_every": 15.0, "real_epochs": 50.0})
_FASHION_CONVNET = _with(_PAPER_MNIST, data={"dataset": "fashion-mnist", "batch_size": 256},
                         model={"name": "convnet", "init_scheme": "default"},
                         optim={"decay_every": 0.9, "iterations": 420})


PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "paper-mnist-fixed": (
        "Paper Table 1: MNIST, LeNet, 10 steps x 3 epochs, 1 image/class/step, fixed init "
        "(paper: 96.6%).",
        _with(_PAPER_MNIST, init={"mode": "fixed"}),
    ),
    "paper-mnist-random": (
        "Paper Table 1: as paper-mnist-fixed with fresh random inits (paper: 79.5 +- 8.1%).",
        _with(_PAPER_MNIST, init={"mode": "random", "n_nets": 1, "sample_n_nets": 1}),
    ),
    "paper-cifar10-fixed": (
        "Paper Table 1: CIFAR-10, AlexCifarNet, 10 x 3, fixed init, augmented real batches "
        "(paper: 54.0%).",
        _with(_PAPER_CIFAR10, init={"mode": "fixed"}),
    ),
    "paper-cifar10-random": (
        "Paper Table 1: as paper-cifar10-fixed with fresh random inits (paper: 36.8 +- 1.2%).",
        _with(_PAPER_CIFAR10, init={"mode": "random", "n_nets": 1, "sample_n_nets": 1}),
    ),
    "fashion-lenet-fixed": (
        "Fashion-MNIST, LeNet, 10 x 3, fixed init, 50 real epochs (docs/results.md).",
        _with(_FASHION_LENET, init={"mode": "fixed"}),
    ),
    "fashion-lenet-random": (
        "Fashion-MNIST, LeNet, 10 x 3, random init, 4 nets per iteration, 50 real epochs "
        "(docs/results.md).",
        _with(_FASHION_LENET, init={"mode": "random", "n_nets": 4, "sample_n_nets": 4}),
    ),
    "fashion-convnet-fixed": (
        "Fashion-MNIST, ConvNet, 10 x 3, fixed init, real batch 256, 420 iterations "
        "(docs/results.md).",
        _with(_FASHION_CONVNET, init={"mode": "fixed"}),
    ),
    "fashion-convnet-random": (
        "Fashion-MNIST, ConvNet, 10 x 3, random init, real batch 256, 400 iterations "
        "(docs/results.md).",
        _with(_FASHION_CONVNET, init={"mode": "random", "n_nets": 1, "sample_n_nets": 1},
              optim={"iterations": 400}),
    ),
    "quick-mnist": (
        "A first run in about two minutes on 2 CPU cores: MNIST, LeNet, 10 x 3, fixed init, "
        "tuned for speed (see docs/results.md).",
        _with(_PAPER_MNIST, init={"mode": "fixed"},
              optim={"meta_lr": 0.01, "iterations": 500, "decay_every": 40.0},
              run={"eval_every": 100}),
    ),
}

# Past the paper (docs/methods.md), sized for a 2-core CPU; docs/results.md has the runs.
# Soft-label dataset distillation (Sucholutsky & Schonlau 2019): 10 images in all.
_SOFT_MNIST_10 = _with(_PAPER_MNIST, init={"mode": "fixed"},
                       synth={"steps": 1, "epochs": 10, "learn_labels": True},
                       optim={"iterations": 8000, "decay_every": 30.0},
                       run={"eval_every": 500})
# The paper's random-init setting with learned labels, two nets per iteration.
_SOFT_MNIST_RANDOM = _with(_PAPER_MNIST, synth={"learn_labels": True},
                           init={"mode": "random", "n_nets": 2, "sample_n_nets": 2},
                           optim={"iterations": 4000, "decay_every": 20.0},
                           run={"eval_every": 500, "eval_nets": 4})
# RaT-BPTT's set-structured loop (Feng et al. 2024) shaped like the train protocol it is
# evaluated by: fresh random ConvNets, SGD with momentum and weight decay, 150 inner
# steps over the whole pool, the last 40 of a random N differentiated; learned labels.
# A ConvNet of width 32 distils (the CPU budget); the standard width 128 evaluates.
_RATBPTT = {
    "data": {"batch_size": 256},
    "model": {"name": "convnet", "init_scheme": "default", "kwargs": {"width": 32}},
    "synth": {"steps": 1, "images_per_class": 1, "unroll_steps": 150, "window": 40,
              "window_sampling": "random", "inner_optimizer": "sgd", "step_lr": 0.01,
              "learn_labels": True},
    "init": {"mode": "random", "n_nets": 1, "sample_n_nets": 1},
    "optim": {"meta_lr": 0.01, "iterations": 1500, "decay_every": 2.0},
    "run": {"eval_every": 250, "eval_nets": 2},
}
_RATBPTT_MNIST_1 = _with(_RATBPTT, data={"dataset": "mnist"})
_RATBPTT_MNIST_10 = _with(_RATBPTT, data={"dataset": "mnist"},
                          synth={"images_per_class": 10, "inner_batch": 20})
_RATBPTT_FASHION_10 = _with(_RATBPTT_MNIST_10, data={"dataset": "fashion-mnist"})

# RaT-BPTT's published recipe (fengyzpku/RaT-BPTT: the README's CIFAR-10 ipc-10 command,
# main.py's defaults): fresh ConvNets (default init), 10 images per class, every inner
# step 10 of each class (the whole pool), Adam 1e-3 inside (200 steps, random windows of
# the last 60 of N in [60, 200]), outer Adam 1e-3 with betas (0.9, 0.999) and no decay,
# the meta-gradient clipped to 2 x its moving average (decay 0.9), hard labels, DSA's
# flip and rotate on real and synthetic images, ZCA for CIFAR-10.
# Departures, for a 2-core CPU (one iteration of the MNIST preset took about a minute on
# one thread of a shared 2-core machine): ConvNet width 32 distils (the standard width 128
# evaluates, `dd eval --model convnet`), real batches of 1,024 (5,000), and a budget of
# 1,000 iterations to resume from (tens of thousands). And by design: ddcli learns one
# rate per inner step (here Adam's step size, from 1e-3; the published code fixes it),
# initialises the images N(0, 1) (the published code: class clusters scaled to unit
# norm), redraws the window every iteration (the published default: every real-data
# epoch) and clips the norm over images and rates (the published code: images only).
_RATBPTT_PAPER = {
    "data": {"batch_size": 1024, "augment": "dsa:flip_rotate"},
    "model": {"name": "convnet", "init_scheme": "default", "kwargs": {"width": 32}},
    "synth": {"steps": 1, "images_per_class": 10, "unroll_steps": 200, "window": 60,
              "window_sampling": "random", "inner_batch_per_class": 10,
              "inner_optimizer": "adam", "step_lr": 0.001, "learn_labels": False},
    "init": {"mode": "random", "n_nets": 1, "sample_n_nets": 1},
    "optim": {"meta_lr": 0.001, "beta1": 0.9, "beta2": 0.999, "decay_factor": 1.0,
              "clip_ema_factor": 2.0, "clip_ema_decay": 0.9, "iterations": 1000},
    "run": {"eval_every": 100, "eval_nets": 2},
}
_RATBPTT_PAPER_DEPARTS = (
    "Departs for a 2-core CPU: distils with ConvNet width 32 (evaluate at 128), real "
    "batches of 1,024 (5,000), 1,000 iterations; learns Adam's per-step rates (fixed "
    "there), N(0, 1) init, a window drawn every iteration, clips images and rates "
    "(images only); docs/methods.md.")

PRESETS.update({
    "ratbptt-paper-mnist-ipc10": (
        "RaT-BPTT's published recipe on MNIST, 10 images/class: fresh ConvNets, inner Adam "
        "1e-3 over 200 steps of 10 images per class, windows of 60, outer Adam 1e-3, "
        "meta-gradient clipped to 2 x its moving average, hard labels, DSA flip/rotate. "
        + _RATBPTT_PAPER_DEPARTS,
        _with(_RATBPTT_PAPER, data={"dataset": "mnist"})),
    "ratbptt-paper-cifar10-ipc10": (
        "As ratbptt-paper-mnist-ipc10 on CIFAR-10 with ZCA (the published README's "
        "command). " + _RATBPTT_PAPER_DEPARTS,
        _with(_RATBPTT_PAPER, data={"dataset": "cifar10", "zca": True})),
    "soft-mnist-10": (
        "Soft labels: MNIST, LeNet, 10 images in all (1 step x 10 GD steps), fixed init, "
        "replay (the soft-label paper: 96%).", _SOFT_MNIST_10),
    "soft-mnist-random": (
        "Soft labels on paper-mnist-random, 2 nets per iteration (target: 85% replay).",
        _SOFT_MNIST_RANDOM),
    "ratbptt-mnist-ipc1": (
        "RaT-BPTT-style: MNIST, 10 images, fresh ConvNets (width 32), SGD+momentum inner "
        "loop of 150 steps, random windows of 40, soft labels; for the train protocol.",
        _RATBPTT_MNIST_1),
    "ratbptt-mnist-ipc10": (
        "As ratbptt-mnist-ipc1 with 100 images, inner minibatches of 20.", _RATBPTT_MNIST_10),
    "ratbptt-fashion-ipc10": (
        "As ratbptt-mnist-ipc10 on Fashion-MNIST.", _RATBPTT_FASHION_10),
    "soft-cifar10-fixed": (
        "Soft labels on paper-cifar10-fixed (the soft-label paper: 60%).",
        _with(_PAPER_CIFAR10, init={"mode": "fixed"}, synth={"learn_labels": True})),
})

# Distribution matching (DM; Zhao & Bilen 2023), as its main_DM.py runs it: a fresh
# ConvNet-128 (PyTorch's default init) every iteration, a real batch of 256 per class,
# DSA applied Siamese, SGD with lr 1 and momentum 0.5 on the images, 20,000 iterations,
# no decay, images initialised from random real ones. The rates are not learned:
# --step-lr 0.01 (DM's lr_net) is stored as every rate; dd eval trains fresh nets on the
# set (--protocol dsa is DM's evaluation). Departure: the class batches are epoch-wise
# shuffles seeded by (seed, class), and DSA seeds derive from the run's, so a run
# resumes exactly.
_DM = {
    "data": {"batch_size": 256, "augment": "dsa"},
    "model": {"name": "convnet", "init_scheme": "default"},
    "synth": {"steps": 1, "epochs": 1, "images_per_class": 10, "step_lr": 0.01,
              "init_images": "real"},
    "init": {"mode": "random", "n_nets": 1, "sample_n_nets": 1},
    "objective": {"kind": "distribution"},
    "optim": {"meta_optimizer": "sgd", "meta_lr": 1.0, "meta_momentum": 0.5,
              "iterations": 20000, "decay_factor": 1.0},
    "run": {"checkpoint_every": 500},
}

PRESETS.update({
    "dm-mnist-ipc10": (
        "Distribution matching (DM): MNIST, 100 images, fresh ConvNets, Siamese DSA, SGD "
        "lr 1 on the images, 20,000 iterations; for the train protocol (DM: 97.5%).",
        _with(_DM, data={"dataset": "mnist"})),
    "dm-cifar10-ipc10": (
        "As dm-mnist-ipc10 on CIFAR-10 (DM: 48.9%).", _with(_DM, data={"dataset": "cifar10"})),
})

# Gradient matching (DC, Zhao et al. 2021; DSA, Zhao & Bilen 2021) as their main.py runs
# it: a fresh ConvNet-128 (PyTorch's default init) for each of DC's 1,000 iterations,
# matched for outer_loop rounds (one ddcli iteration each, so 1,000 x outer_loop
# iterations) and trained on the set for inner_loop epochs between rounds (DC's
# get_loops: 1 and 1 at 1 image per class, 10 and 50 at 10), a real batch of 256 per
# class, DC's per-output-unit cosine distance, SGD with lr 0.1 and momentum 0.5 on the
# images, no decay (otherwise _DM's settings, above). DC matches without augmentation
# and is evaluated with --protocol dc; DSA applies its augmentation Siamese and is evaluated
# with --protocol dsa. Departures: images start from random real ones (DSA's README
# uses --init real; DC's code defaults to noise), the class batches are epoch-wise
# shuffles seeded by (seed, class) where DC draws a fresh permutation per call, and the
# DSA seeds derive from the run's, so a run resumes exactly.
_GM = _with(_DM, data={"augment": "none"}, synth={"images_per_class": 1},
            objective={"kind": "gradient"}, optim={"meta_lr": 0.1, "iterations": 1000},
            run={"checkpoint_every": 50})

PRESETS.update({
    "dc-mnist-ipc1": (
        "Gradient matching (DC): MNIST, 10 images, fresh ConvNets, no augmentation, SGD lr "
        "0.1 on the images, 1,000 iterations; for --protocol dc (DC: 91.7%).",
        _with(_GM, data={"dataset": "mnist"})),
    "dsa-cifar10-ipc1": (
        "Gradient matching with Siamese DSA (DSA): CIFAR-10, 10 images, as dc-mnist-ipc1; "
        "for --protocol dsa (DSA: 28.8%).",
        _with(_GM, data={"dataset": "cifar10", "augment": "dsa"})),
    "dsa-cifar10-ipc10": (
        "DSA at 10 images per class: 10 rounds per fresh net, 50 epochs of training on the "
        "set between them, 10,000 iterations; for --protocol dsa (DSA: 52.1%).",
        _with(_GM, data={"dataset": "cifar10", "augment": "dsa"},
              synth={"images_per_class": 10}, optim={"iterations": 10000})),
    "dsa-mnist-ipc10": (
        "As dsa-cifar10-ipc10 on MNIST (DSA: 97.8%; Fashion-MNIST: 84.6%).",
        _with(_GM, data={"dataset": "mnist", "augment": "dsa"},
              synth={"images_per_class": 10}, optim={"iterations": 10000})),
})

# Trajectory matching (MTT; Cazenavette et al. 2022), its CIFAR-10 ipc10 row: 30 synthetic
# steps (each on all 100 images, DSA on every step) from an expert's epoch t <= 20,
# matching its epoch t + 2; one learned rate starting at the experts' rate 0.01; images
# initialised from real ones; 5,000 iterations; one expert per iteration. It needs a
# --pool of ConvNets pretrained with --trajectories (MTT: 100 experts, 50 epochs of SGD
# at 0.01 with DSA; `dd pretrain DATASET --model convnet --optimizer sgd --lr 0.01
# --momentum 0 --real-epochs 50 --augment dsa --trajectories`; narrower ones, e.g. width 32 through a config file's
# model.kwargs, on a CPU). Departures: one Adam meta-optimiser (lr 0.01) for images and
# rate where MTT has SGD at 1,000 (images, momentum 0.5) and 1e-5 (rate); the rate is
# learned through softplus; MTT's experts train with DSA (dd pretrain --augment dsa)
# and, for CIFAR-10, in ZCA space (dd pretrain has no ZCA). MTT reports no MNIST row: mtt-mnist-ipc10 applies the
# CIFAR-10 settings to MNIST.
_MTT = {
    "data": {"augment": "dsa"},
    "model": {"name": "convnet", "init_scheme": "default"},
    "synth": {"steps": 1, "epochs": 1, "images_per_class": 10, "unroll_steps": 30,
              "step_lr": 0.01, "init_images": "real"},
    "init": {"mode": "pretrained-random", "sample_n_nets": 1, "pool_holdout": 0.0},
    "objective": {"kind": "trajectory", "expert_epochs": 2, "max_start_epoch": 20,
                  "trajectory_rate": "one"},
    "optim": {"meta_optimizer": "adam", "meta_lr": 0.01, "iterations": 5000,
              "decay_factor": 1.0},
    "run": {"checkpoint_every": 250, "unroll_memory": "recompute"},
}

PRESETS.update({
    "mtt-mnist-ipc10": (
        "Trajectory matching (MTT): MNIST, 100 images, 30 steps from an expert's epoch "
        "t <= 20 towards t + 2, one learned rate, 5,000 iterations; needs --pool of "
        "ConvNet experts (dd pretrain --trajectories); MTT's CIFAR-10 settings on MNIST, "
        "Adam for images and rate (docs/methods.md).",
        _with(_MTT, data={"dataset": "mnist"})),
    "mtt-cifar10-ipc10": (
        "As mtt-mnist-ipc10 on CIFAR-10, MTT's own row (MTT: 65.3%); experts without ZCA "
        "(docs/methods.md).",
        _with(_MTT, data={"dataset": "cifar10"})),
})


def list_presets() -> list[tuple[str, str]]:
    """(name, description) of every preset, sorted by name."""
    return [(name, desc) for name, (desc, _) in sorted(PRESETS.items())]


def get_preset(name: str) -> dict[str, Any]:
    """A copy of the preset's partial config tree; ConfigError for unknown names."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))} "
                          "(see `dd distill --list-presets`)")
    return copy.deepcopy(PRESETS[name][1])
