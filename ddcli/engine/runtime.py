"""What one distillation process runs on: device, data, model, step map, schedules.

Everything here is fixed when a run starts (fresh or resumed) and derived from the
config alone; what changes from iteration to iteration is in ``RunState``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddcli.config import DistillConfig
from ddcli.core.inner import InnerLoop
from ddcli.core.metrics import activation_floats
from ddcli.core.meta_gradient import NetsMetaGradient
from ddcli.core.rates import initial_raw_lrs, lrs_from_raw
from ddcli.core.seeds import derive_seed
from ddcli.core.schedules import Schedule
from ddcli.core.objectives import (CLASS_BATCHES, EXPERT_SEGMENT, REAL_BATCH, OuterBatch,
                                   make_objective)
from ddcli.data import RealData, load_dataset, validation_split, zca_dataset
from ddcli.engine.clipping import initial_average
from ddcli.engine.batches import BatchSampler, ClassBatchSampler, augment_batch
from ddcli.engine.inits import (FixedInit, InitSource, bundle_initial_images, initial_images,
                                make_init_source, real_initial_images)
from ddcli.engine.state import RunState
from ddcli.errors import ConfigError
from ddcli.evaluate._many_nets import replay_accuracies
from ddcli.evaluate.initial_nets import evaluation_nets
from ddcli.infra import device as _device
from ddcli.infra import distributed as _distributed
from ddcli.infra import provenance
from ddcli.init_modes import draws_fresh_nets, is_seeded_fixed
from ddcli.models import check_functional, create_model


class Runtime:
    """The fixed parts of a run in this process (device, data, model, nets, budget)."""

    def __init__(self, cfg: DistillConfig, data: RealData | None) -> None:
        self.cfg = cfg
        _, world, local_rank = _distributed.env_world()
        _distributed.check_config(cfg, world)
        self.device = _device.resolve_device(cfg.run.device,
                                             local_rank=local_rank if world > 1 else None)
        self.dist = _distributed.setup(self.device)
        self.sync_every = _device.sync_interval(self.device, cfg.run.log_every)
        # Random nets are drawn on the CPU and copied over without a host sync.
        self.init_device = torch.device("cpu") if draws_fresh_nets(cfg.init.mode) else self.device
        d = data if data is not None else load_dataset(cfg.data.dataset, root=cfg.data.data_root)
        self.data = d = zca_dataset(d) if cfg.data.zca else d  # mean 0 / std 1, ZCA-whitened
        self.model = create_model(
            cfg.model_name(d.name), in_channels=d.in_channels, num_classes=d.num_classes,
            image_size=d.image_size, **cfg.model.kwargs)
        check_functional(self.model)
        self.model.to(self.device)
        k = cfg.synth.images_per_class
        self.inner = InnerLoop.from_config(cfg, d.num_classes * k)
        self.objective = make_objective(cfg, d.num_classes)
        # --compile: the unroll's graph-free steps and the real-batch outer loss under
        # torch.compile (an objective that does not unroll compiles its own work)
        compiled = cfg.run.compile and self.objective.unrolls
        self.step = self.inner.step_fn(self.model, compiled="loss" if compiled else False)
        step_floats = self.inner.batch_size * activation_floats(
            self.model, (d.in_channels, d.image_size, d.image_size))
        self.nets = NetsMetaGradient(self.step, mode=cfg.run.unroll_memory,
                                     batch=cfg.run.batch_nets,
                                     inner_threads=_device.inner_threads(self.device, step_floats),
                                     inner_onednn=_device.unroll_onednn(self.device, step_floats),
                                     precision=cfg.run.precision,
                                     real_nhwc=_device.real_batch_nhwc(self.device),
                                     compiled=compiled)
        self.train_x, self.train_y = d.train_x.to(self.device), d.train_y.to(self.device)
        self.val_x = self.val_y = None
        if cfg.data.validation:  # real batches never come from the held-out images
            train, val = validation_split(d.train_y.shape[0], cfg.data.validation)
            self.val_x, self.val_y = self.train_x[val], self.train_y[val]
            self.train_x, self.train_y = self.train_x[train], self.train_y[train]
        self.test_x, self.test_y = d.test_x.to(self.device), d.test_y.to(self.device)
        self.real_dsa = self.inner.augment  # DSA on the real batch too
        if self.objective.needs == CLASS_BATCHES:
            self.sampler = ClassBatchSampler(self.train_y, d.num_classes, cfg.data.batch_size,
                                             derive_seed(cfg.init.seed, "class-batches"))
        else:
            self.sampler = BatchSampler(self.train_x.shape[0], cfg.data.batch_size,
                                        derive_seed(cfg.init.seed, "batches"))
        o, ipe = cfg.optim, self.sampler.iterations_per_epoch
        self.total = o.iterations if o.iterations is not None else max(1, round(o.real_epochs * ipe))
        self.decay_iters = max(1, round(o.decay_every * ipe))
        # Class-major labels inside each step: [0]*k + [1]*k + ...
        labels = torch.arange(d.num_classes).repeat_interleave(k)
        self.labels = labels.expand(cfg.synth.steps, d.num_classes * k).contiguous().to(
            self.device)  # (S, n)

    # --- state --------------------------------------------------------------------------------
    def fresh_state(self, out) -> RunState:
        """Iteration 0: N(0, 1) images from the seed (or real ones, ``--init-images
        real``, or a bundle's, ``--init-from``), every rate at ``step_lr``."""
        cfg, d = self.cfg, self.data
        s = cfg.synth
        shape = (s.steps, d.num_classes * s.images_per_class, d.in_channels, d.image_size,
                 d.image_size)
        source = self.make_source()
        if s.init_from is not None:
            images = bundle_initial_images(s.init_from, d, self.labels)
        elif s.init_images == "real":
            images = real_initial_images(self.train_x, self.train_y, self.labels, cfg.init.seed)
        else:
            images = initial_images(shape, cfg.init.seed)
        soft = None
        if s.learn_labels:  # one-hot, so the run starts exactly where hard labels would
            soft = F.one_hot(self.labels.cpu(), d.num_classes).float()  # (S, n, classes)
        return RunState(
            iteration=0, images=images, labels=self.labels.cpu(),
            raw_lrs=initial_raw_lrs(s.step_lr, cfg.total_steps), optimizer={}, scheduler={},
            aug_rng=torch.Generator().manual_seed(derive_seed(cfg.init.seed, "augment")),
            config=cfg.to_dict(), out=str(out.absolute()), total_iterations=self.total,
            fixed_params=source.fixed_params, soft_labels=soft)

    def restore(self, state: RunState) -> None:
        """Make ``state`` live: its learned tensors on the device (those the objective
        trains require grad), its meta-optimiser (Adam or SGD) and StepLR built over
        them (and loaded, from a checkpoint), the clipping average on the device. An
        objective that learns no rates leaves ``raw_lrs`` out of the optimiser: they
        stay at ``--step-lr``."""
        o = self.cfg.optim
        state.images = state.images.to(self.device).requires_grad_(True)  # (S, n, C, H, W)
        state.raw_lrs = state.raw_lrs.to(self.device).requires_grad_(  # (T,)
            self.objective.learns_rates)
        groups = [{"params": [v for v in (state.images, state.raw_lrs) if v.requires_grad]}]
        if state.soft_labels is not None:  # (S, n, classes)
            state.soft_labels = state.soft_labels.to(self.device).requires_grad_(True)
            groups.append({"params": [state.soft_labels], "lr": o.label_lr or o.meta_lr})
        self.dist.broadcast_(list(state.learned.values()))
        if o.meta_optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=o.meta_lr, momentum=o.meta_momentum)
        else:
            optimizer = torch.optim.Adam(groups, lr=o.meta_lr, betas=(o.beta1, o.beta2))
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.decay_iters,
                                                    gamma=o.decay_factor)
        if state.optimizer:  # a checkpoint's state_dicts
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            old_lr = DistillConfig.from_dict(state.config).optim.meta_lr
            if old_lr != o.meta_lr or scheduler.base_lrs[0] != o.meta_lr:
                # A resumed run with a new --meta-lr keeps the decay schedule's position.
                base = [o.meta_lr, o.label_lr or o.meta_lr][: len(optimizer.param_groups)]
                scheduler.base_lrs = base
                for group, lr in zip(optimizer.param_groups, base):
                    group["initial_lr"] = lr
                    group["lr"] = lr * o.decay_factor ** (state.iteration // self.decay_iters)
            scheduler.step_size = self.decay_iters
        state.optimizer, state.scheduler = optimizer, scheduler
        if o.clip_ema_factor is not None:
            state.clip_average = (initial_average(self.device) if state.clip_average is None
                                  else state.clip_average.to(self.device))
        state.config, state.total_iterations = self.cfg.to_dict(), self.total

    def init_source(self, state: RunState) -> InitSource:
        """Where theta_0 comes from; a resumed fixed-init run reuses its stored init."""
        if state.fixed_params is not None and is_seeded_fixed(self.cfg.init.mode):
            return FixedInit({k: v.to(self.device) for k, v in state.fixed_params.items()})
        # A pretrained-fixed run reloads its pool net, so its bundle keeps the pool's record.
        return self.make_source()

    def make_source(self) -> InitSource:
        return make_init_source(self.cfg, self.model, self.init_device,
                                segments=self.objective.needs == EXPERT_SEGMENT,
                                dataset=self.data.name)

    def provenance(self, *, preset: str | None = None) -> dict[str, Any]:
        """This process's record: versions, command, code, device, threads, data."""
        return provenance.collect(device=str(self.device), data=self.data, preset=preset)

    # --- per iteration --------------------------------------------------------------------------
    def outer_batch(self, it: int, aug_gen: torch.Generator) -> OuterBatch:
        """What the objective needs from the real data at iteration ``it``."""
        batch = OuterBatch(seed=derive_seed(self.cfg.init.seed, "outer", it), iteration=it)
        if self.objective.needs == REAL_BATCH:
            batch.x, batch.y = self.real_batch(it, aug_gen)
        elif self.objective.needs == CLASS_BATCHES:
            batch.per_class = [self.train_x[_device.to_device(idx, self.device)]
                               for idx in self.sampler.indices(it)]
        return batch

    def real_batch(self, it: int, aug_gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Real batch ``it`` with its real labels, augmented as ``--augment`` says."""
        idx = _device.to_device(self.sampler.indices(it), self.device)
        x, y = self.train_x[idx], self.train_y[idx]
        if self.cfg.data.augment == "crop-flip":
            x = augment_batch(x, aug_gen)
        elif self.real_dsa is not None:
            x = self.real_dsa(x, derive_seed(self.cfg.init.seed, "real-dsa", it))
        return x, y

    def inner_plan(self, it: int) -> tuple[Schedule, tuple[int, int]]:
        """Iteration ``it``'s schedule (minibatches, DSA seeds) and window (t0, N)."""
        s, t = self.cfg.synth, self.cfg.total_steps
        seed = derive_seed(self.cfg.init.seed, "inner", it)
        w = self.inner.differentiated
        n = t
        if s.window_sampling == "random":  # RaT-BPTT: N ~ U[W, T], then the last W of N
            g = torch.Generator().manual_seed(derive_seed(seed, "window"))
            n = int(torch.randint(w, t + 1, (1,), generator=g))
        return self.inner.schedule(seed, augment=True), (n - w, n)

    @property
    def eval_split(self) -> str:
        """Where ``quick_eval`` measures: "validation" with ``--validation``, else "test"."""
        return "validation" if self.cfg.data.validation else "test"

    def quick_eval(self, learned: dict[str, Tensor], source: InitSource) -> list[float]:
        """Replay accuracy of the nets ``evaluation_nets`` picks for a periodic
        evaluation, with the code ``dd eval`` uses (same numbers, same weights): on the
        validation split when there is one (model selection), else the full test set
        (monitoring only).
        """
        r, cfg = self.cfg.run, self.cfg
        held = source.eval_inits(r.eval_nets)  # pretrained-random: held-out pool nets
        nets = evaluation_nets(
            self.model, n_fresh=0 if source.fixed_params is not None or held else r.eval_nets,
            seed=cfg.init.seed, scheme=cfg.model.init_scheme, stored=source.fixed_params,
            held_out=held, device=self.device)
        inits = [net.params for net in nets]
        on_val = self.eval_split == "validation"
        x, y = (self.val_x, self.val_y) if on_val else (self.test_x, self.test_y)
        soft = learned.get("soft_labels")
        labels = soft.detach() if soft is not None else self.labels
        accs = replay_accuracies(
            self.model, inits, learned["images"].detach(), labels,
            lrs_from_raw(learned["raw_lrs"].detach()), x, y, inner=self.inner,
            seed=cfg.init.seed)
        return accs[-1].tolist()
