"""The init modes are named in one module; everything else asks its predicates."""

import ast
from pathlib import Path

from ddcli import init_modes
from ddcli.config import DistillConfig, config_flags
from ddcli.engine import inits
from ddcli.init_modes import (INIT_MODES, draws_fresh_nets, is_fixed, is_pretrained,
                              is_seeded_fixed, samples_nets)

ROOT = Path(__file__).resolve().parents[1]


def test_each_mode_has_the_properties_its_name_says():
    table = {  # mode: (pretrained, one init for the run, several nets per iteration)
        "fixed": (False, True, False),
        "random": (False, False, True),
        "pretrained-fixed": (True, True, False),
        "pretrained-random": (True, False, True),
    }
    assert set(INIT_MODES) == set(table)
    for mode, (pretrained, fixed, several) in table.items():
        assert (is_pretrained(mode), is_fixed(mode), samples_nets(mode)) == (
            pretrained, fixed, several), mode
        assert is_seeded_fixed(mode) == (fixed and not pretrained)
        assert draws_fresh_nets(mode) == (several and not pretrained)
    for other in ("", "pretrained", "Fixed", "trajectory"):
        assert not any(p(other) for p in (is_pretrained, is_fixed, samples_nets,
                                           is_seeded_fixed, draws_fresh_nets))


def test_the_flag_the_sources_and_the_default_use_the_same_names():
    flag = next(f for f in config_flags() if f.names[0] == "--init-mode")
    assert flag.choices == INIT_MODES and DistillConfig().init.mode in INIT_MODES
    sources = {c.mode for c in vars(inits).values()
               if isinstance(c, type) and issubclass(c, inits.InitSource) and c.mode}
    assert sources == set(INIT_MODES)


def _mode_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in INIT_MODES or node.value == "pretrained"
    return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(
        _mode_literal(e) for e in node.elts)


def mode_string_comparisons(root: Path) -> list[str]:
    """Places outside init_modes.py that compare a value with an init mode's string."""
    found = []
    for path in sorted((root / "ddcli").rglob("*.py")):
        if path.name == Path(init_modes.__file__).name:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            compared = []
            if isinstance(node, ast.Compare):
                compared = [node.left, *node.comparators]
                text = ast.unparse(node)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "startswith"):
                compared, text = node.args, ast.unparse(node)
            if any(_mode_literal(c) for c in compared) and "mode" in text:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {text}")
    return found


def test_no_module_compares_init_mode_strings_itself():
    assert mode_string_comparisons(ROOT) == []


def test_the_scan_finds_a_comparison_by_string(tmp_path):
    (tmp_path / "ddcli").mkdir()
    (tmp_path / "ddcli" / "m.py").write_text(
        'def f(cfg, b):\n    if cfg.init.mode == "random":\n        pass\n'
        '    return b.init_mode.startswith("pretrained") or b.init_mode in ("fixed", "x")\n')
    assert [line.split(": ")[0] for line in mode_string_comparisons(tmp_path)] == [
        "ddcli/m.py:2", "ddcli/m.py:4", "ddcli/m.py:4"]
