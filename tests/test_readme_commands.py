"""Every `dd ...` command in README.md runs as written, on a tiny budget.

The commands are read from the README's ```bash blocks (continued lines joined, comments
dropped, `&&` chains split), so a README example that breaks fails here. Each runs in its
own folder, in this process, with what it reads already there (a small MNIST bundle and
its run folder, an exported set, a CIFAR-10 bundle, pretrained pools) and with the budget
shrunk by flags appended after the README's own, which win:

- `dd distill`: one iteration of batch 32; a long unroll is cut to 10 steps (window 5)
  and a validation split to 100 images, to fit the 600-image fixture;
- `dd eval`: 1 net, 2 training epochs, 2 optimized-real candidates, 1 full-data epoch;
- `dd pretrain`: 2 nets, 1 epoch.

Data is the committed MNIST fixture (tests/fixtures), served as MNIST and, relabelled as
such, as Fashion-MNIST; a `--data-root` in the README points there instead. Commands
that need CIFAR-10, CIFAR-100 or SVHN data, which no fixture holds, are only parsed:
every flag and value must be accepted by the command's parser and, for `dd distill`,
build a valid config.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import typer.main

from ddcli import Bundle
from ddcli.cli import app
from ddcli.config import flag_overrides
from ddcli.layering import build_config
from ddcli.core.params import init_params
from ddcli.models import create_model
from tests._cli import run
from tests.conftest import FIXTURES

README = Path(__file__).resolve().parents[1] / "README.md"
NO_FIXTURE = {"cifar10", "cifar100", "svhn"}  # datasets only parsed (see the docstring)


def readme_commands(text: str) -> list[list[str]]:
    """The arguments of every `dd` (or `.../dd`) command in the text's bash blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0].split("/")[-1] == "dd":
                    commands.append(words[1:])
    return commands


COMMANDS = readme_commands(README.read_text())


def test_the_readme_commands_are_found():
    assert len(COMMANDS) >= 30
    assert ["distill", "--resume", "m.run"] in COMMANDS
    assert {c[0] for c in COMMANDS} == {"distill", "eval", "visualize", "export", "pretrain",
                                        "data"}
    assert readme_commands("```bash\ndd a \\\n  --b 1  # note\n.venv/bin/dd c && x\n```") == [
        ["a", "--b", "1"], ["c"]]


# --- what the commands read -----------------------------------------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(FIXTURES / "MNIST", root / "MNIST")
    shutil.copytree(FIXTURES / "MNIST", root / "FashionMNIST")  # digits as Fashion-MNIST
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, data_root) -> Path:
    """The files the README's commands read, made once. They are made in one folder and
    moved to another, so no recorded absolute path leads back to where they were made."""
    build = tmp_path_factory.mktemp("build")
    root = ["--data-root", data_root]

    def dd(*args):
        r = run(*args)
        assert r.exit_code == 0, (args, r.output)

    old = Path.cwd()
    try:
        os.chdir(build)
        dd("distill", "mnist", *root, "--iterations", "2", "--batch-size", "32",
           "--checkpoint-every", "1", "--snapshot-every", "1", "-o", "m.safetensors", "-q")
        dd("export", "m.safetensors", "--format", "npz", "-o", "set.npz")
        for n, name in ((6, "mnist"), (2, "fashion-mnist")):
            dd("pretrain", name, *root, "--n-nets", n, "--real-epochs", "1", "-o",
               "mnist-pool" if name == "mnist" else "fmnist-pool")
    finally:
        os.chdir(old)
    shutil.copy(build / "m.safetensors", build / "quick.safetensors")
    (build / "nets.py").write_text(  # your own model, as `--model nets.py:TinyNet` names it
        "from torch import nn\n\n"
        "def TinyNet(*, in_channels, num_classes, image_size):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))\n")
    _cifar_bundle().save(build / "c.safetensors")
    made = build.parent / "inputs"
    build.rename(made)
    return made


def _cifar_bundle() -> Bundle:
    g = torch.Generator().manual_seed(0)
    model = create_model("convnet", in_channels=3, num_classes=10, image_size=32)
    return Bundle(
        images=torch.randn(1, 10, 3, 32, 32, generator=g), labels=torch.arange(10)[None],
        raw_lrs=torch.full((1,), -4.0), dataset="cifar10",
        classes=[f"class{c}" for c in range(10)], mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616), model=model.ddcli_spec, epochs=1,
        init_params=init_params(model, "xavier", 0))


# --- running one ----------------------------------------------------------------------------

def _parse(args: list[str]):
    """Click's context for ``dd ARGS`` without running it: every flag and value checked."""
    command = typer.main.get_command(app).commands[args[0]]
    return command.make_context(args[0], list(args[1:]), resilient_parsing=False)


def _distill_budget(args: list[str]) -> list[str]:
    if "--resume" in args:
        return []
    params = dict(_parse(args).params)
    cfg = build_config(preset=params.pop("preset"), config_file=params.pop("config_file"),
                       overrides=flag_overrides(params))
    extra = ["--iterations", "1", "--batch-size", "32"]
    if cfg.synth.unroll_steps and cfg.synth.unroll_steps > 10:
        extra += ["--unroll-steps", "10"] + (["--window", "5"] if cfg.synth.window else [])
    if cfg.data.validation > 100:
        extra += ["--validation", "100"]
    return extra


BUDGET = {
    "distill": _distill_budget,
    "eval": lambda args: ["--n-nets", "1", "--train-epochs", "2", "--candidates", "2",
                          "--full-data-epochs", "1"],
    "pretrain": lambda args: ["--n-nets", "2", "--real-epochs", "1"],
}


def _dataset(args: list[str]) -> str | None:
    if args[0] not in ("distill", "pretrain"):
        return None
    params = _parse(args).params
    if args[0] == "pretrain":
        return params["dataset"]
    if params.get("resume") is not None:
        return None
    return build_config(preset=params.get("preset"), config_file=params.get("config_file"),
                        overrides=flag_overrides(params)).data.dataset


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_readme_command_runs_as_written(args, inputs, data_root, tmp_path, monkeypatch):
    if _dataset(args) in NO_FIXTURE:
        cfg = _distill_budget(args)  # parses, and builds a valid config
        assert cfg is not None
        return
    written = {a for i, a in enumerate(args) if i and args[i - 1] in ("-o", "--out")}
    # What the command reads (a FILE.py:FACTORY model's file too), never what it writes.
    read = (set(args) | {a.rpartition(":")[0] for a in args if ".py:" in a}) - written
    for path in inputs.iterdir():
        if path.name in read:
            copy = shutil.copytree if path.is_dir() else shutil.copy
            copy(path, tmp_path / path.name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DDCLI_DATA_ROOT", str(data_root))
    args = [str(data_root) if i and args[i - 1] == "--data-root" else a
            for i, a in enumerate(args)]
    r = run(*args, *BUDGET.get(args[0], lambda a: [])(args),
            *(["--quiet"] if args[0] in ("distill", "pretrain", "eval") else []))
    assert r.exit_code == 0, f"dd {shlex.join(args)}\n{r.output}"
