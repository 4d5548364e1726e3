"""The layering rules of the house (README "The house"), checked on the source: the core imports
no model library and no upper layer; tasks import only the ground floor, the task interface,
the quantizer and the contrastive losses of the core."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_LIBRARIES = {"timm", "mmdet", "mmseg", "mmcv", "mmengine"}
TASKS_MAY_IMPORT = ("clamp.io", "clamp.task", "clamp.quant", "clamp.generate.contrastive")


def imports(folder: str) -> list[tuple[str, str]]:
    """(file, imported module) of every absolute import under ``folder``."""
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [(str(path.relative_to(ROOT)), alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((str(path.relative_to(ROOT)), node.module))
    return found


def test_the_core_imports_no_model_library_and_no_upper_layer():
    bad = [(f, m) for f, m in imports("clamp")
           if m.split(".")[0] in MODEL_LIBRARIES | {"tasks", "baselines", "benchmarks"}]
    assert not bad


@pytest.mark.parametrize("folder", ["tasks", "baselines"])
def test_upper_layers_import_only_what_the_core_offers_them(folder):
    allowed = TASKS_MAY_IMPORT if folder == "tasks" else (*TASKS_MAY_IMPORT, "clamp.generate", "clamp.registry")
    bad = [(f, m) for f, m in imports(folder)
           if m.split(".")[0] == "clamp" and not any(m == a or m.startswith(a + ".") for a in allowed)]
    assert not bad


def test_the_rule_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The walk is not vacuous: a file that imports timm under a core-like folder is found."""
    (tmp_path / "clamp").mkdir()
    (tmp_path / "clamp" / "x.py").write_text("from timm.layers import Mlp\nimport mmdet.models\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert [m for _, m in imports("clamp")] == ["timm.layers", "mmdet.models"]


def _code(lines: list[str]) -> list[str]:
    return [line.split("  #")[0].rstrip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _block(readme: str, heading: str, lang: str) -> list[str]:
    section = readme.split(heading, 1)[1].split("\n### ", 1)[0]
    return section.split(f"```{lang}\n", 1)[1].split("```", 1)[0].splitlines()


@pytest.mark.parametrize("heading", ["### Adding a method", "### Adding a task"])
def test_the_guides_show_the_code_the_tests_run(heading):
    """README's worked examples are the plugin example's code, line for line (comments aside), and
    the family guide's entry point is the one pyproject.toml declares."""
    readme = (ROOT / "README.md").read_text()
    example = "\n".join(_code((ROOT / "tests" / "plugin_example" / "example_plugin.py").read_text().splitlines()))
    assert "\n".join(_code(_block(readme, heading, "python"))) in example


def test_the_family_guide_names_the_registered_entry_point():
    readme = (ROOT / "README.md").read_text()
    [line] = [x for x in _block(readme, "### Adding a model family", "toml") if "=" in x]
    assert line in (ROOT / "pyproject.toml").read_text().splitlines()
