"""Choosing a set without the test set: `dd eval --validation N` scores fresh nets on
held-out training images (the ones `dd distill --validation N` holds out), and a run's
snapshots are sets in their own right (`dd eval` and `dd export --format bundle` of
RUN_DIR/snapshots/iter_K.pt)."""

import json

import torch

from ddcli import Bundle, distill
from ddcli.data import held_out, validation_split
from ddcli.engine.reader import run_bundle
from ddcli.engine.runtime import Runtime
from ddcli.evaluate import _evaluate, evaluate, evaluate_bundle
from ddcli.evaluate._sets import set_kind

from tests._cli import one_line_error, run
from tests._toy import toy_config, toy_data


def _rows(t: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in t}


def test_held_out_images_are_those_distill_holds_out_and_the_test_set_is_gone():
    data = toy_data()
    val = held_out(data, 24)
    rt = Runtime(toy_config(data={"validation": 24}), data)
    assert torch.equal(val.test_x, rt.val_x) and torch.equal(val.test_y, rt.val_y)
    assert torch.equal(val.train_x, rt.train_x) and torch.equal(val.train_y, rt.train_y)
    assert val.train_x.shape[0] == 72 and val.test_x.shape[0] == 24
    assert not _rows(val.train_x) & _rows(val.test_x)
    assert not _rows(val.test_x) & _rows(data.test_x)  # the real test set is dropped
    train, held = validation_split(96, 24)
    assert sorted(train.tolist() + held.tolist()) == list(range(96))


def test_a_validation_evaluation_trains_and_scores_only_on_training_images(tmp_path, monkeypatch):
    data = toy_data()
    distill(toy_config(optim={"iterations": 2}), out=tmp_path / "m.safetensors", data=data,
            progress=False)
    seen = []
    real_run_train = _evaluate.run_train

    def spy(job, lr):
        seen.append(job)
        return real_run_train(job, lr)

    monkeypatch.setattr(_evaluate, "run_train", spy)
    kw = dict(data=data, protocol="train", n_nets=2, train_epochs=2, train_lr=0.05,
              baselines=["random-real"])
    rep = evaluate_bundle(tmp_path / "m.safetensors", validation=24, **kw)
    job = seen[-1]
    _, held = validation_split(96, 24)
    assert torch.equal(job.test_x, data.train_x[held])
    assert job.real.train_x.shape[0] == 72  # random real draws from the other 72
    assert not _rows(job.real.train_x) & _rows(job.test_x)
    assert (rep.split, rep.test_size) == ("validation", 24)
    assert rep.to_dict()["split"] == "validation" and rep.settings["validation"] == 24
    assert any("held-out training images" in n for n in rep.notes)
    # The same call without it scores the test set.
    test = evaluate_bundle(tmp_path / "m.safetensors", **kw)
    assert (test.split, test.test_size) == ("test", 48)
    assert torch.equal(seen[-1].test_x, data.test_x)


def test_a_snapshot_is_the_set_the_run_had_at_that_iteration(tmp_path):
    data = toy_data()
    distill(toy_config(optim={"iterations": 6}, run={"snapshot_every": 2}),
            out=tmp_path / "long.safetensors", data=data, progress=False)
    distill(toy_config(optim={"iterations": 4}), out=tmp_path / "short.safetensors",
            data=data, progress=False)
    snap = tmp_path / "long.run" / "snapshots" / "iter_000004.pt"
    assert set_kind(snap) == "snapshot"
    assert set_kind(tmp_path / "elsewhere.pt") == "pt"

    bundle, _ = run_bundle(tmp_path / "long.run", data=data, snapshot=snap)
    at4 = Bundle.load(tmp_path / "short.safetensors")  # the run that stopped at 4
    for name in ("images", "raw_lrs", "labels"):
        assert torch.equal(getattr(bundle, name), getattr(at4, name)), name
    assert bundle.summary["iterations"] == 4
    assert bundle.summary["snapshot"] == {"file": "snapshots/iter_000004.pt", "iteration": 4,
                                          "run_checkpointed_at": 6}
    logged = [json.loads(line) for line in
              (tmp_path / "long.run" / "metrics.jsonl").read_text().splitlines()]
    line = next(r for r in logged if r.get("iteration") == 4 and "loss" in r)
    assert bundle.summary["final_loss"] == line["loss"]
    assert bundle.summary["cpu_s"] == round(line["cpu_s"], 2)
    # And what the last checkpoint gives is the run's end, not the snapshot.
    assert run_bundle(tmp_path / "long.run", data=data)[0].summary["iterations"] == 6

    kw = dict(data=data, protocol="train", n_nets=1, train_epochs=2, train_lr=0.05)
    got = evaluate(snap, **kw)
    assert got.source == f"{snap} (snapshot at iteration 4)"
    assert got.primary.accuracies == evaluate_bundle(at4, **kw).primary.accuracies


def _cli_run(tmp_path, fixture_root, iterations):
    """`dd distill` on the MNIST fixture with a snapshot every iteration: (bundle, first
    snapshot)."""
    out = tmp_path / "m.safetensors"
    r = run("distill", "mnist", "--data-root", fixture_root, "--steps", "1", "--epochs", "1",
            "--batch-size", "64", "--iterations", iterations, "--snapshot-every", "1", "-o", out,
            "--quiet")
    assert r.exit_code == 0, r.output
    return out, tmp_path / "m.run" / "snapshots" / "iter_000001.pt"


def test_cli_scores_a_snapshot_on_validation_and_exports_it(tmp_path, fixture_root):
    _, snap = _cli_run(tmp_path, fixture_root, 2)
    r = run("eval", snap, "--data-root", fixture_root, "--protocol", "train", "--n-nets", "1",
            "--train-epochs", "1", "--validation", "100", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert (report["split"], report["test_size"]) == ("validation", 100)
    assert report["source"] == f"{snap} (snapshot at iteration 1)"
    r = run("eval", snap, "--data-root", fixture_root, "--protocol", "train", "--n-nets", "1",
            "--train-epochs", "1", "--validation", "100")
    assert r.exit_code == 0 and "validation split, held-out training (100 images)" in r.stdout

    r = run("export", snap, "--format", "bundle", "--data-root", fixture_root)
    assert r.exit_code == 0, r.output
    written = tmp_path / "m-1.safetensors"  # beside the run folder, never inside it
    assert f"{written}: 10 images as bundle" in r.stdout
    saved = torch.load(snap, weights_only=True)
    b = Bundle.load(written)
    assert torch.equal(b.images, saved["images"]) and torch.equal(b.raw_lrs, saved["raw_lrs"])
    assert b.summary["snapshot"]["iteration"] == 1
    r = run("export", tmp_path / "m.run", "--format", "bundle", "-o", tmp_path / "end.safetensors",
            "--data-root", fixture_root)
    assert r.exit_code == 0, r.output
    assert Bundle.load(tmp_path / "end.safetensors").summary["iterations"] == 2


def test_cli_validation_and_snapshot_errors_are_one_line(tmp_path, fixture_root):
    out, snap = _cli_run(tmp_path, fixture_root, 1)
    err = one_line_error(run("eval", out, "--data-root", fixture_root, "--protocol", "train",
                             "--validation", "-3"), 2)
    assert "--validation must be a count of images >= 0" in err
    err = one_line_error(run("eval", out, "--data-root", fixture_root, "--protocol", "train",
                             "--validation", "600"), 2)
    assert "--validation 600 leaves no training images" in err

    torch.save({"iteration": 1, "images": torch.zeros(1, 3, 1, 28, 28)}, snap)
    err = one_line_error(run("eval", snap, "--data-root", fixture_root), 2)
    assert "does not hold this run's images" in err
    snap.write_bytes(b"not a snapshot")
    err = one_line_error(run("export", snap, "--format", "bundle", "--data-root", fixture_root), 2)
    assert "can't read the snapshot" in err


def test_the_curve_bench_selects_on_validation_points_only(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import compute_curve

    out = tmp_path / "curve.jsonl"
    points = [  # the test points are higher: they must not be chosen from
        ("MTT", 250, "validation:5000", 0.40), ("MTT", 500, "validation:5000", 0.45),
        ("MTT", 750, "validation:5000", 0.45), ("MTT", 500, "test", 0.20),
        ("MTT", 1000, "test", 0.99), ("DM", 100, "test", 0.50),
    ]
    out.write_text("".join(json.dumps({
        "method": m, "iteration": it, "split": split, "mean": mean, "std": 0.01, "n_nets": 3,
        "snapshot": f"runs/x-{m}/snapshots/iter_{it:06d}.pt", "cpu_h": it / 1000,
        "cpu_source": "cpu_s", "protocol": "dsa"}) + "\n" for m, it, split, mean in points))
    chosen = compute_curve.select(out)
    assert [(r["method"], r["iteration"]) for r in chosen] == [("MTT", 500)]  # earliest tie
    lines = compute_curve.selection_lines(out, "dsa")
    assert lines[1] == ("  dd export runs/x-MTT/snapshots/iter_000500.pt --format bundle "
                        "-o results/x-MTT-500.safetensors")
    assert "validation" not in compute_curve.table(out)  # the table shows test points only


def test_a_validation_score_says_when_the_set_saw_its_images(tmp_path):
    # validation_split(n, N) is a prefix of one permutation: N > M held out by the run
    # scores on N - M images the set was distilled on; a run that held none out saw all.
    data = toy_data()
    kw = dict(data=data, protocol="train", n_nets=1, train_epochs=1, train_lr=0.05)
    distill(toy_config(optim={"iterations": 1}, data={"validation": 24}),
            out=tmp_path / "held.safetensors", data=data, progress=False)
    distill(toy_config(optim={"iterations": 1}), out=tmp_path / "all.safetensors", data=data,
            progress=False)
    _, a = validation_split(96, 24)
    _, b = validation_split(96, 36)
    assert set(a.tolist()) < set(b.tolist())  # why the overlap is exactly 36 - 24

    def warnings(name, size):
        rep = evaluate_bundle(tmp_path / name, validation=size, **kw)
        return [n for n in rep.notes if n.startswith("warning:") and "distilled on" in n]

    assert warnings("held.safetensors", 24) == [] and warnings("held.safetensors", 12) == []
    (w,) = warnings("held.safetensors", 36)
    assert "held out 24 training images" in w and "also scores on 12 it was distilled on" in w
    (w,) = warnings("all.safetensors", 24)
    assert "was distilled on every training image" in w and "optimistic" in w
    plain = evaluate_bundle(tmp_path / "all.safetensors", **kw)  # the test set: no warning
    assert not [n for n in plain.notes if "distilled on" in n]


def test_the_curve_bench_scores_a_snapshot_as_dd_eval_does(tmp_path, fixture_root, monkeypatch):
    # Each curve point of a run is `dd eval RUN/snapshots/iter_K.pt`: the bundle the run
    # would have written at K (learned rates included), scored on the split asked for,
    # its warnings kept with the point.
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import compute_curve
    import ddcli.evaluate as ev

    r = run("distill", "mnist", "--data-root", fixture_root, "--steps", "1", "--epochs", "1",
            "--batch-size", "64", "--iterations", 2, "--snapshot-every", "1", "--log-every", "1",
            "-o", tmp_path / "m.safetensors", "--quiet")
    assert r.exit_code == 0, r.output
    snap = tmp_path / "m.run" / "snapshots" / "iter_000001.pt"
    calls = []
    real = ev.evaluate

    def spy(source, cfg=None, **kw):
        calls.append((str(source), cfg))
        cfg = ev.EvalConfig(**{**cfg.__dict__, "train_epochs": 1})  # keep the test short
        return real(source, cfg, **kw)

    monkeypatch.setattr(ev, "evaluate", spy)
    out = tmp_path / "curve.jsonl"
    args = argparse.Namespace(run=[f"m={tmp_path / 'm.run'}"], bundles=[], extra=[],
                              dataset="mnist", protocol="train", n_nets=1, precision="fp32",
                              compile=False, min_iteration=0, skip=[], data_root=str(fixture_root),
                              out=str(out), validation=100)
    compute_curve.evaluate_points(args)
    assert [c[0] for c in calls] == [str(snap), str(snap.parent / "iter_000002.pt")]
    assert all(c[1].validation == 100 for c in calls)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2] and rows[0]["split"] == "validation:100"
    expected = evaluate(snap, protocol="train", n_nets=1, train_epochs=1, validation=100,
                        data_root=fixture_root)
    assert rows[0]["accuracies"] == expected.primary.accuracies
    # the run held nothing out: its every point says the split is not unseen
    assert all(any("distilled on every training image" in w for w in r["warnings"])
               for r in rows)
