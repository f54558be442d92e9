"""The recipes ship with the package: listed by `ovss recipes`, found by name, inside a built wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ovss_cli import recipes as recipes_module
from ovss_cli.cli import app
from ovss_cli.recipes import find_recipe, load_recipe, recipe_purpose, shipped_recipes

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
RECIPE_FILES = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))


def test_ovss_recipes_lists_every_recipe_with_its_header_line():
    result = runner.invoke(app, ["recipes"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert sorted(f"{name}.yaml" for name in shipped_recipes()) == RECIPE_FILES
    flat = " ".join(result.output.replace("│", " ").split())
    for name in RECIPE_FILES:
        assert name[:-5] in flat
    first = (ROOT / "recipes" / "hclip.yaml").read_text().splitlines()[0].lstrip("# ")
    assert recipe_purpose(ROOT / "recipes" / "hclip.yaml") == first
    assert first.split(";")[0] in flat


def test_a_recipe_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here
    for spelling in ("hclip", "hclip.yaml", "recipes/hclip.yaml"):
        assert find_recipe(spelling) == ROOT / "recipes" / "hclip.yaml"
    assert load_recipe("quickstart_hclip").finetune.block_size == 32
    own = tmp_path / "hclip.yaml"  # a file of that name wins over the shipped one
    own.write_text("name: mine\n")
    assert load_recipe("hclip.yaml").name == "mine"
    result = runner.invoke(app, ["train", "hclp", "--dry-run"])
    assert result.exit_code == 2 and "did you mean 'hclip'" in result.output


def test_installed_wheels_find_recipes_inside_the_package(tmp_path, monkeypatch):
    package = tmp_path / "ovss_cli"
    (package / "recipes_data").mkdir(parents=True)
    (package / "recipes_data" / "tiny.yaml").write_text("# A tiny one.\nname: tiny\n")
    monkeypatch.setattr(recipes_module, "__file__", str(package / "recipes.py"))
    assert shipped_recipes() == {"tiny": package / "recipes_data" / "tiny.yaml"}


@pytest.mark.slow
def test_the_wheel_holds_every_recipe(tmp_path):
    import shutil

    source = tmp_path / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    for name in ("ovss_cli", "recipes"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), "-q"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("ovss-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n.split("/")[-1] for n in names if n.startswith("ovss_cli/recipes_data/")) == RECIPE_FILES
    assert "ovss_cli/clip/model_configs/ovss-tiny.json" in names
