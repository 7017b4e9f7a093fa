"""The sections of a run's settings (data, model, synthetic set, meta-optimiser, init,
objective, run), each field with its flag.

``ddcli.config.DistillConfig`` holds one of each; import them from ``ddcli.config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .infra.sections import Section, flag
from .init_modes import INIT_MODES, InitMode

UNROLL_MEMORY_MODES = ("full", "stepwise", "recompute")
PRECISIONS = ("fp32", "bf16-outer")  # ddcli.core.meta_gradient
OBJECTIVES = ("distill", "adapt", "attack", "distribution", "trajectory", "gradient")  # ddcli.core.objectives
TRAJECTORY_RATES = ("one", "per-step")  # ddcli.core.trajectory
META_OPTIMIZERS = ("adam", "sgd")
WINDOW_SAMPLING = ("last", "random")
INNER_OPTIMIZERS = ("gd", "sgd", "adam")
INIT_IMAGES = ("noise", "real")
AUGMENTS = ("none", "crop-flip", "dsa")  # and dsa:FAMILY_FAMILY... (ddcli.core.augment)

# The --help panels of the settings (the CLI adds one to start from a preset or a run).
DATA, MODEL, SYNTH = "Data", "Model and init", "Synthetic set"
INNER = "Inner loop (RaT-BPTT, momentum)"
BUDGET, SCALE, OUTPUT = "Budget and meta-optimiser", "Memory and scale", "Output"
POOLS = "Objectives and pretrained pools"


def _flag(default: Any, help: str, panel: str, **kw: Any) -> Any:
    return field(default=default, metadata=flag(help, panel=panel, **kw))


# A new setting needs nothing but a field here: with _flag(...) metadata it is also a
# `dd distill` flag (bool, int, float, str, choices, or None-able), listed in --help and
# the README, layered and resumed like the others; a plain field is set in config files
# only (as beta1 and beta2 are).
@dataclass
class DataConfig(Section):
    # {datasets} and {models} in help texts become the registries' names when shown.
    dataset: str = _flag("mnist", "{datasets} or folder:PATH.", "Arguments", argument=True,
                         metavar="DATASET")
    data_root: str | None = _flag(None, "Datasets in torchvision's layout.", DATA,
                                  metavar="DIR", resumable=True,
                                  default_text="$DDCLI_DATA_ROOT, else ~/.cache/ddcli/data")
    batch_size: int = _flag(1024, "Real images per outer iteration (DM, DC: per "
                            "class).", DATA)
    # crop-flip: reflect-pad 4, random crop and horizontal flip of the real batches, as
    # the reference does for CIFAR. dsa: DSA's ops on the real batch and on the synthetic
    # images of every inner step; dsa:flip_rotate (etc.) for some of its op families.
    augment: str = _flag("none", "none, crop-flip (real batches) or dsa (real and "
                         "synthetic, every inner step).", DATA, metavar="AUG")
    validation: int = _flag(0, "Training images held out to select on (never test).",
                            DATA, metavar="N", default_text="0 (none)")
    # kornia's ZCAWhitening(eps=0.1) fitted on the [0, 1] training images: the space
    # DD-Ranking and the MTT family evaluate in (ddcli.data.zca).
    zca: bool = _flag(False, "Distil in ZCA-whitened pixels (eps 0.1).", DATA)

    def __post_init__(self) -> None:
        # Configs before augmentations had names stored a bool: True was crop-flip.
        if isinstance(self.augment, bool):
            self.augment = "crop-flip" if self.augment else "none"


@dataclass
class ModelConfig(Section):
    name: str | None = _flag(None, "{models} or FILE.py:FACTORY.", MODEL,
                             name="--model", metavar="NAME",
                             default_text="the dataset's")
    init_scheme: str = _flag("xavier", "Weight init: xavier, xavier-uniform, kaiming, "
                             "kaiming-out, orthogonal, normal or default.", MODEL, metavar="NAME")
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Your own model's file by its absolute path, so that a resume or a bundle's
        # config finds it from any folder (imported only for such a name: it pulls in torch).
        if isinstance(self.name, str) and ":" in self.name:
            from ddcli.models._user import canonical_name

            self.name = canonical_name(self.name)


@dataclass
class SynthConfig(Section):
    steps: int = _flag(10, "GD steps, each with its own images.", SYNTH)
    epochs: int = _flag(3, "Passes over the steps, each with its own rates.", SYNTH)
    images_per_class: int = _flag(1, "Images per class in each step.", SYNTH,
                                  name="--images-per-class-per-step", aliases=("--ipc",))
    # real: DM's and MTT's default start, random training images of each slot's class.
    init_images: str = _flag("noise", "Start from N(0, 1) noise or from real training "
                             "images of each slot's class.", SYNTH, choices=INIT_IMAGES,
                             metavar="FROM")
    # Another run's set as the start: MTT from a DM set, say (a bundle file).
    # listed with the pools (where a run starts from), off the first screen of --help
    init_from: str | None = _flag(None, "Start from another bundle's images.", POOLS,
                                  metavar="BUNDLE")
    # The rate itself, not raw: every learned GD rate starts here.
    step_lr: float = _flag(0.02, "Initial value of the learned rates.", SYNTH,
                           aliases=("--distill-lr",))
    # Learned soft labels (Sucholutsky & Schonlau): one-hot at first, kept >= 0.
    learn_labels: bool = _flag(False, "Learn a label vector per image.", SYNTH)
    # T; epochs becomes T / steps. RaT-BPTT unrolls 200 steps over one pool of images.
    unroll_steps: int | None = _flag(None, "Inner steps T (and rates).", INNER, metavar="T",
                                     default_text="steps x epochs")
    # RaT-BPTT's set-structured loop: each inner step draws K of the steps x n images, a
    # fresh shuffle on every pass and every iteration.
    inner_batch: int | None = _flag(None, "Images per inner step, drawn from all of them.",
                                    INNER, metavar="K", default_text="a step's own, in order")
    window: int | None = _flag(None, "Differentiate only the last W inner steps.", INNER,
                               metavar="W", default_text="all")
    # random: RaT-BPTT's N ~ U[W, T] per iteration, the outer loss taken at step N.
    window_sampling: str = _flag("last", "last (unroll T) or random (N in [W, T]).", INNER,
                                 choices=WINDOW_SAMPLING, metavar="HOW")
    # RaT-BPTT's published code: K of every class per inner step, drawn afresh each step.
    inner_batch_per_class: int | None = _flag(
        None, "K images of each class per inner step, drawn anew.", INNER, metavar="K")
    # adam: the learned rates are its step sizes (initially --step-lr); no weight decay,
    # as torch.optim.Adam's default and RaT-BPTT's inner Adam.
    inner_optimizer: str = _flag("gd", "gd, sgd with momentum and weight decay, or adam.",
                                 INNER, choices=INNER_OPTIMIZERS, metavar="RULE")
    inner_momentum: float = _flag(0.9, "sgd: momentum.", INNER)
    inner_weight_decay: float = _flag(5e-4, "sgd: weight decay.", INNER)
    # adam's betas and eps (torch's defaults, RaT-BPTT's): config files only, as the
    # meta-optimiser's betas are.
    inner_beta1: float = 0.9
    inner_beta2: float = 0.999
    inner_eps: float = 1e-8

    RENAMED = {"distill_lr": "step_lr"}


@dataclass
class OptimConfig(Section):
    # adam: the paper's. sgd with momentum: DM's (lr 1, momentum 0.5 on the images).
    meta_optimizer: str = _flag("adam", "adam, or sgd with --meta-momentum.", BUDGET,
                                choices=META_OPTIMIZERS, metavar="OPT")
    meta_lr: float = _flag(0.01, "The meta-optimiser's step size.", BUDGET,
                           aliases=("--lr",), resumable=True)
    meta_momentum: float = _flag(0.5, "sgd meta-optimiser: momentum.", BUDGET)
    beta1: float = 0.5
    beta2: float = 0.999
    decay_every: float = _flag(40.0, "StepLR period, in real-data epochs.", BUDGET)
    decay_factor: float = _flag(0.5, "StepLR factor.", BUDGET)
    real_epochs: float = _flag(400.0, "Budget in passes over the real data.", BUDGET,
                               resumable=True)
    iterations: int | None = _flag(None, "Budget in outer iterations (wins over "
                                   "--real-epochs).", BUDGET, resumable=True)
    label_lr: float | None = _flag(None, "Step size of learned labels.", BUDGET,
                                   default_text="--meta-lr")
    # RaT-BPTT: the meta-gradient's norm is capped at K x a moving average of its norms
    # (ddcli.engine.clipping); K = 2, decay 0.9 in the published code.
    clip_ema_factor: float | None = _flag(None, "Cap the meta-gradient norm at K x its "
                                          "moving average.", BUDGET, metavar="K")
    clip_ema_decay: float = _flag(0.9, "Decay of that moving average.", BUDGET, metavar="D")

    RENAMED = {"lr": "meta_lr"}


@dataclass
class InitConfig(Section):
    mode: str = _flag(InitMode.FIXED.value, "fixed (one known init), random (new inits every "
                      "iteration), pretrained-fixed or pretrained-random (--pool).",
                      MODEL, name="--init-mode", choices=INIT_MODES, metavar="MODE")
    seed: int = _flag(0, "Seed for inits and data order.", MODEL)
    n_nets: int = _flag(1, "random: nets drawn per iteration.", MODEL)
    sample_n_nets: int = _flag(1, "random modes: nets used per iteration.", MODEL)
    pool: str | None = _flag(None, "A pool of trained nets made by `dd pretrain`.", POOLS,
                             metavar="DIR")
    pool_index: int = _flag(0, "pretrained-fixed: the pool net to use.", POOLS)
    pool_holdout: float = _flag(0.2, "Fraction of the pool held out.", POOLS)


@dataclass
class ObjectiveConfig(Section):
    kind: str = _flag("distill", "distill, adapt, attack, distribution (DM), trajectory "
                      "(MTT), gradient (DC).", POOLS,
                      name="--objective",
                      choices=OBJECTIVES, metavar="KIND")
    source_dataset: str | None = _flag(None, "adapt: the dataset the pool was trained on.",
                                       POOLS, metavar="NAME")
    attack_class: int | None = _flag(None, "attack: the class A the nets should misclassify.",
                                     POOLS)
    target_class: int | None = _flag(None, "attack: the class B that A should be taken for.",
                                     POOLS)
    # MTT: the unroll of --unroll-steps synthetic steps from an expert's weights at epoch
    # t aims at its weights at epoch t + M; t is drawn from 0..--max-start-epoch.
    expert_epochs: int = _flag(2, "trajectory: epochs M to match.",
                               POOLS, metavar="M")
    max_start_epoch: int = _flag(20, "trajectory: latest start epoch.",
                                 POOLS, metavar="E")
    # one: MTT's single learned rate (every step's rate moves together); per-step: T rates.
    trajectory_rate: str = _flag("one", "trajectory: one rate or per-step.",
                                 POOLS, choices=TRAJECTORY_RATES, metavar="HOW")
    # DC/DSA: each fresh net serves --outer-loop matching rounds (iterations), trained on
    # the set for --inner-loop epochs between them; None: DC's get_loops for the ipc.
    outer_loop: int | None = _flag(None, "gradient: rounds per fresh net.", POOLS,
                                   metavar="N", default_text="DC's")
    inner_loop: int | None = _flag(None, "gradient: epochs between rounds.", POOLS,
                                   metavar="N", default_text="DC's")


@dataclass
class RunConfig(Section):
    # auto: CUDA when a GPU is visible, then MPS, then the CPU.
    device: str = _flag("auto", "auto, cpu, cuda, cuda:N or mps.",
                        SCALE, metavar="DEVICE", resumable=True)
    # docs/performance.md has the measurements behind the modes. This, nproc and
    # batch_nets change speed and memory, not the result (beyond float rounding), so a
    # resumed run may change them.
    unroll_memory: str = _flag("full", "full, stepwise or recompute.", SCALE, choices=UNROLL_MEMORY_MODES,
                               metavar="MODE", resumable=True)
    checkpoint_every: int = _flag(50, "Checkpoint every N iterations (0: at the end).", OUTPUT,
                                  resumable=True)
    snapshot_every: int = _flag(0, "Save images and rates for `dd visualize --run`.", OUTPUT,
                                default_text="0 (none)", resumable=True)
    eval_every: int = _flag(0, "Measure replay accuracy (on --validation if set).", OUTPUT,
                            default_text="0 (never)", resumable=True)
    eval_nets: int = _flag(4, "random: nets per periodic evaluation.", OUTPUT,
                           resumable=True)
    log_every: int = _flag(10, "Append to metrics.jsonl.", OUTPUT, resumable=True)
    # Not resumable: bf16-outer changes the meta-gradient beyond rounding (performance.md).
    precision: str = _flag("fp32", "fp32, or bf16-outer: the real-batch side in bfloat16.",
                           SCALE, choices=PRECISIONS, metavar="PREC")
    # Not resumable: fused kernels round differently from eager ones.
    compile: bool = _flag(False, "torch.compile steps, their VJPs, the real side.",
                          SCALE)
    nproc: int = _flag(1, "Processes to split the nets over.", SCALE,
                       resumable=True)
    batch_nets: bool = _flag(True, "Run the sampled nets together (vmap).",
                             SCALE, resumable=True)
    # Periodic evaluation runs on the validation split when there is one.
    keep_best: bool = _flag(False, "Bundle the set of the best validation accuracy.",
                            OUTPUT)
