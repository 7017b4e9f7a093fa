"""The new methods through `distill`, `resume` and `dd eval`: soft labels, the
set-structured truncated loop, SGD inside the unroll, DSA, validation-split selection."""


import pytest
import torch

from ddcli import Bundle, DistillConfig, distill, resume
from ddcli.layering import build_config
from ddcli.errors import ConfigError
from ddcli.evaluate import evaluate_bundle

from tests._toy import distill_until_ctrl_c, toy_config, toy_data

METHODS = {
    "labels": {"synth": {"learn_labels": True}, "optim": {"label_lr": 0.02}},
    "rat-bptt": {"synth": {"steps": 1, "images_per_class": 3, "unroll_steps": 6,
                           "inner_batch": 4, "window": 3, "window_sampling": "random"}},
    "momentum": {"synth": {"inner_optimizer": "sgd", "inner_momentum": 0.5}},
    "dsa": {"data": {"augment": "dsa"}},
    # RaT-BPTT's published recipe: inner Adam, class-balanced draws, clipping (every
    # iteration clips at a factor of 0.5, so the stored average matters).
    "rat-bptt-paper": {"synth": {"steps": 1, "images_per_class": 2, "unroll_steps": 4,
                                 "inner_batch_per_class": 1, "window": 2,
                                 "window_sampling": "random", "inner_optimizer": "adam",
                                 "step_lr": 0.01},
                       "optim": {"clip_ema_factor": 0.5}},
    "all": {"synth": {"steps": 1, "images_per_class": 2, "unroll_steps": 4, "inner_batch": 3,
                      "window": 2, "window_sampling": "random", "learn_labels": True,
                      "inner_optimizer": "sgd"},
            "data": {"augment": "dsa"}},
}


def cfg(*extra: dict, **sections) -> DistillConfig:
    return toy_config({"optim": {"iterations": 6}}, *extra, **sections)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_resumes_bit_exactly(tmp_path, method):
    data = toy_data()
    for mode in ("fixed", "random"):
        c = cfg(METHODS[method], init={"mode": mode, "n_nets": 2, "sample_n_nets": 2})
        full = distill(c, out=tmp_path / f"{mode}-full.safetensors", data=data)

        distill_until_ctrl_c(c, tmp_path / f"{mode}-part.safetensors", data, at=4)
        resumed = resume(tmp_path / f"{mode}-part.run", data=data).bundle
        assert torch.equal(full.bundle.images, resumed.images), (method, mode)
        assert torch.equal(full.bundle.raw_lrs, resumed.raw_lrs)
        if c.synth.learn_labels:
            assert torch.equal(full.bundle.soft_labels, resumed.soft_labels)


def test_learned_labels_move_stay_non_negative_and_reach_the_bundle(tmp_path):
    b = distill(cfg(METHODS["labels"], optim={"iterations": 20, "label_lr": 0.1}),
                out=tmp_path / "l.safetensors", data=toy_data()).bundle
    again = Bundle.load(tmp_path / "l.safetensors")
    assert again.soft_labels.shape == (2, 3, 3) and torch.equal(again.soft_labels, b.soft_labels)
    assert (b.soft_labels >= 0).all()
    one_hot = torch.nn.functional.one_hot(b.labels, 3).float()
    assert (b.soft_labels - one_hot).abs().max() > 1e-3  # they were learned


def test_unroll_steps_give_one_rate_per_inner_step_and_replay(tmp_path):
    c = cfg(METHODS["rat-bptt"])
    assert c.total_steps == 6 and c.passes == 6
    b = distill(c, out=tmp_path / "p.safetensors", data=toy_data()).bundle
    assert b.raw_lrs.shape == (6,) and b.images.shape == (1, 9, 1, 8, 8) and b.epochs == 6
    report = evaluate_bundle(b, data=toy_data(), n_nets=2)
    assert report.rows[0].n == 1 and report.settings["gd_steps"] == 6


def test_keep_best_selects_on_the_validation_split_never_the_test_set(tmp_path):
    data = toy_data(n_train=192)
    c = cfg(data={"validation": 48}, optim={"iterations": 9},
            run={"eval_every": 3, "keep_best": True, "eval_nets": 2})
    result = distill(c, out=tmp_path / "v.safetensors", data=data)
    sel = result.bundle.summary["selected"]
    assert sel["iteration"] in (3, 6, 9) and "held-out training images" in sel["by"]
    assert result.bundle.summary["validation"]["images"] == 48
    # The test set never decided anything: a different test set gives the same bundle.
    other = toy_data(n_train=192)
    other.test_x = other.test_x.flip(0)
    again = distill(c, out=tmp_path / "w.safetensors", data=other).bundle
    assert torch.equal(again.images, result.bundle.images)
    with pytest.raises(ConfigError, match="validation"):
        cfg(run={"keep_best": True, "eval_every": 3}).validate()


def test_a_checkpoint_whose_best_set_names_soft_labels_labels_still_resumes(tmp_path):
    """Learned labels are "soft_labels" everywhere; a checkpoint from before the name
    (its --keep-best set keyed "labels") resumes to the same bundle."""
    data = toy_data(n_train=192)
    c = cfg(METHODS["labels"], data={"validation": 48}, optim={"iterations": 6},
            run={"eval_every": 3, "keep_best": True, "eval_nets": 2})
    full = distill(c, out=tmp_path / "full.safetensors", data=data).bundle
    distill_until_ctrl_c(c, tmp_path / "part.safetensors", data, at=4)
    path = tmp_path / "part.run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    assert "soft_labels" in state["best"] and "labels" not in state["best"]
    state["best"]["labels"] = state["best"].pop("soft_labels")  # the old name
    torch.save(state, path)
    resumed = resume(tmp_path / "part.run", data=data).bundle
    assert resumed.summary["selected"] == full.summary["selected"]
    assert torch.equal(full.soft_labels, resumed.soft_labels)
    assert torch.equal(full.images, resumed.images)


def test_evaluations_on_the_validation_split_are_labelled_so(tmp_path):
    import json

    from ddcli.progress import DistillProgress

    lines = []
    display = DistillProgress.__new__(DistillProgress)
    display.print = lines.append  # only on_eval is exercised
    c = cfg(data={"validation": 48}, optim={"iterations": 4}, run={"eval_every": 2, "eval_nets": 1})
    result = distill(c, out=tmp_path / "v.safetensors", data=toy_data(n_train=192),
                     callbacks=type("C", (), {"on_eval": lambda self, ev: display.on_eval(ev)})())
    assert [e.split for e in result.evals] == ["validation", "validation"]
    assert lines and all("replay validation accuracy" in line for line in lines)
    logged = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in logged if "val_acc" in r]
    assert [r["iteration"] for r in evals] == [2, 4] and not any("test_acc" in r for r in logged)
    assert "val_acc" in result.bundle.summary["last_eval"]
    # without a validation split they are test-set monitoring, and say so
    plain = distill(cfg(optim={"iterations": 2}, run={"eval_every": 2, "eval_nets": 1}),
                    out=tmp_path / "t.safetensors", data=toy_data())
    assert [e.split for e in plain.evals] == ["test"] and "test_acc" in plain.bundle.summary["last_eval"]


def test_validation_images_are_never_real_batches(tmp_path, monkeypatch):
    from ddcli.engine import runtime

    seen = []
    real = runtime.Runtime.real_batch

    def spy(self, it, gen):
        x, y = real(self, it, gen)
        seen.append(x)
        return x, y

    monkeypatch.setattr(runtime.Runtime, "real_batch", spy)
    data = toy_data(n_train=96)
    train, val = runtime.validation_split(96, 24)
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == 96
    distill(cfg(data={"validation": 24, "batch_size": 16}, optim={"iterations": 5}),
            out=tmp_path / "s.safetensors", data=data)
    held = data.train_x[val].flatten(1)
    for x in seen:
        dists = torch.cdist(x.flatten(1), held)
        assert dists.min() > 0  # not one held-out image was used


def test_bad_method_settings_are_usage_errors():
    for bad in ({"synth": {"unroll_steps": 5}},  # not a multiple of steps
                {"synth": {"window": 9}},  # more than T
                {"synth": {"window_sampling": "middle"}},
                {"synth": {"inner_optimizer": "rmsprop"}},
                {"synth": {"inner_beta2": 1.0}},
                {"optim": {"clip_ema_factor": 0.0}},
                {"optim": {"clip_ema_decay": 1.0}},
                {"data": {"augment": "dsa:zoom"}},
                {"data": {"augment": "sparkles"}},
                {"optim": {"label_lr": -1.0}}):
        with pytest.raises(ConfigError):
            cfg(bad).validate()


def test_augment_flag_and_old_boolean_configs():
    assert build_config(overrides={"data": {"augment": True}}).data.augment == "crop-flip"
    assert build_config(overrides={"data": {"augment": False}}).data.augment == "none"
    assert build_config(overrides={"data": {"augment": "dsa:flip_rotate"}}).data.augment == "dsa:flip_rotate"


def _replay_by_hand(b: Bundle, data, step, schedule=None):
    from ddcli.core.metrics import accuracy
    from ddcli.core.unroll import unroll
    from ddcli.models import create_model

    model = create_model(**b.model)
    targets = b.soft_labels if b.soft_labels is not None else b.labels
    final = unroll(step(model), b.init_params, b.images, targets, b.lrs, create_graph=False,
                   schedule=schedule).params
    return accuracy(model, final, data.test_x, data.test_y)


def test_replay_uses_the_sets_soft_labels_and_inner_rule(tmp_path):
    from ddcli.core.steps import SGD, StepFn

    data = toy_data()
    c = cfg(METHODS["labels"], METHODS["momentum"], optim={"iterations": 10, "label_lr": 0.2})
    b = distill(c, out=tmp_path / "b.safetensors", data=data).bundle
    report = evaluate_bundle(tmp_path / "b.safetensors", data=data, n_nets=1)
    stored = report.rows[0]
    want = _replay_by_hand(b, data, lambda m: StepFn(m, SGD(momentum=0.5, weight_decay=5e-4)))
    assert stored.accuracies[0] == pytest.approx(want)
    assert any("soft labels" in note for note in report.notes)
    # Hard labels and plain GD would give the other answer: the check can fail.
    b.soft_labels, b.config = None, {}
    assert evaluate_bundle(b, data=data, n_nets=1).rows[0].accuracies[0] == pytest.approx(
        _replay_by_hand(b, data, StepFn))


def test_train_protocol_with_soft_labels_and_dsa_is_the_same_batched_or_looped(tmp_path):
    data = toy_data()
    b = distill(cfg(METHODS["labels"]), out=tmp_path / "b.safetensors", data=data).bundle
    runs = {batching: evaluate_bundle(b, data=data, protocol="train", train_epochs=3, n_nets=3,
                                      batching=batching, augment="dsa", batch_size=4)
            for batching in ("vmap", "loop")}
    a, l = runs["vmap"].rows[0].accuracies, runs["loop"].rows[0].accuracies
    assert a == pytest.approx(l, abs=1e-9)
    plain = evaluate_bundle(b, data=data, protocol="train", train_epochs=3, n_nets=3,
                            batching="loop", batch_size=4)
    assert runs["loop"].settings["augment"] == "dsa" and plain.settings["augment"] == "none"
    with pytest.raises(ConfigError, match="augment"):
        evaluate_bundle(b, data=data, protocol="train", augment="blur")


def test_bundles_record_how_they_were_made_and_eval_warns_on_other_data(tmp_path):
    data = toy_data()
    b = distill(cfg(), out=tmp_path / "p.safetensors", data=data, preset="my-preset").bundle
    made = {k: v for k, v in b.provenance.items() if k != "earlier"}
    assert made["preset"] == "my-preset" and made["versions"]["torch"]
    assert made["data"]["sha256"] and made["threads"] >= 1 and made["date"]
    report = evaluate_bundle(tmp_path / "p.safetensors", data=data, n_nets=1)
    assert report.provenance["set"] == b.provenance and report.provenance["eval"]["versions"]
    assert not [n for n in report.notes if n.startswith("warning")]
    other = toy_data(seed=1)
    report = evaluate_bundle(tmp_path / "p.safetensors", data=other, n_nets=1)
    assert any("differs from the data the bundle was made with" in n for n in report.notes)
    # each resume adds its own record
    resumed = resume(tmp_path / "p.run", overrides={"optim": {"iterations": 7}}, data=data,
                     force=True).bundle
    assert len(resumed.provenance["earlier"]) == 1


def test_zca_runs_distil_in_whitened_pixels_and_evaluate_there(tmp_path, monkeypatch):
    monkeypatch.setenv("DDCLI_ZCA_CACHE", str(tmp_path / "zca-cache"))
    data = toy_data(channels=3)
    b = distill(cfg(data={"zca": True}), out=tmp_path / "z.safetensors", data=data).bundle
    assert b.pixel_space_record["kind"] == "zca" and b.mean == (0.0,) * 3 and b.std == (1.0,) * 3
    report = evaluate_bundle(tmp_path / "z.safetensors", data=toy_data(channels=3), n_nets=1)
    assert any("ZCA-whitened" in n for n in report.notes)
    # the same accuracy as replaying by hand on the whitened test set
    from ddcli.data import zca_dataset
    from ddcli.core.steps import StepFn

    assert report.rows[0].accuracies[0] == pytest.approx(
        _replay_by_hand(b, zca_dataset(toy_data(channels=3)), StepFn))


def test_training_nets_in_eval_reports_progress_to_the_end(tmp_path):
    b = distill(cfg(), out=tmp_path / "p.safetensors", data=toy_data()).bundle
    seen = []

    class Events:
        def on_progress(self, info):
            seen.append((info.label, info.done, info.total))

    evaluate_bundle(b, data=toy_data(), protocol="train", train_epochs=4, n_nets=3,
                    batch_size=4, batching="loop", callbacks=Events())
    train = [s for s in seen if s[0] == "training nets"]
    assert train[-1][1] == train[-1][2] == 12  # 3 nets x 4 epochs
    assert [d for _, d, _ in train] == sorted(d for _, d, _ in train)


def test_dd_eval_reports_ddranking_scores_from_fractions(tmp_path, monkeypatch):
    monkeypatch.setenv("DDCLI_FULL_DATA_CACHE", str(tmp_path / "full"))
    b = distill(cfg(), out=tmp_path / "p.safetensors", data=toy_data()).bundle
    kw = dict(data=toy_data(), protocol="train", train_epochs=3, n_nets=2, ddranking=True,
              full_data_epochs=2)
    a = evaluate_bundle(b, **kw)
    d = a.ddranking
    syn, real = a.primary.mean, a.row("random-real").mean
    full = sum(d["full_data"]["accuracies"]) / len(d["full_data"]["accuracies"])
    assert d["ior"] == pytest.approx(syn - real) and d["hlr"] == pytest.approx(full - syn)
    assert 0 < d["lrs"] < 1 and not d["full_data"]["cached"]
    again = evaluate_bundle(b, **kw)
    assert again.ddranking["full_data"]["cached"] and again.ddranking["lrs"] == d["lrs"]
    with pytest.raises(ConfigError, match="--protocol train"):
        evaluate_bundle(b, data=toy_data(), protocol="replay", ddranking=True)


@pytest.mark.parametrize("protocol", ["replay", "train"])
def test_baselines_of_a_soft_label_set_train_on_hard_labels_unless_asked(tmp_path, protocol):
    """--baseline-labels hard (default): random real images with their own classes, the
    same numbers as for the hard-label twin of the bundle; set: the set's soft labels."""
    data = toy_data()
    b = distill(cfg(METHODS["labels"], optim={"iterations": 10, "label_lr": 0.5}),
                out=tmp_path / "b.safetensors", data=data).bundle
    assert not torch.equal(b.soft_labels, torch.nn.functional.one_hot(b.labels, 3).float())
    kw = dict(data=data, protocol=protocol, n_nets=2, baselines=["random-real"], train_epochs=5,
              batch_size=4)

    def baseline(bundle, **extra):
        report = evaluate_bundle(bundle, **kw, **extra)
        return next(r for r in report.rows if r.name == "random-real").accuracies, report

    hard, report = baseline(b)
    assert report.settings["baseline_labels"] == "hard"
    assert any("baselines train on their real images' classes" in n for n in report.notes)
    on_set, _ = baseline(b, baseline_labels="set")
    twin = Bundle.load(tmp_path / "b.safetensors")
    twin.soft_labels = None
    assert hard == pytest.approx(baseline(twin)[0], abs=1e-12)
    assert on_set != pytest.approx(hard, abs=1e-6)  # the labels do reach the baseline nets
    with pytest.raises(ConfigError, match="baseline-labels"):
        evaluate_bundle(b, data=data, baseline_labels="soft")
