"""Recipes: every shipped file validates, typos fail with a suggestion (exit 2), overrides are type-checked."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ovss_cli.cli import app
from ovss_cli.errors import UsageError
from ovss_cli.recipes import Recipe, load_recipe, save_recipe
from tests.helpers import QUICKSTART, RECIPES, assert_official_protocol

runner = CliRunner()


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_validates_and_says_how_to_run_it(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    header = path.read_text(encoding="utf-8").splitlines()[:8]
    assert header[0].startswith("# ")
    assert any(f"recipes/{path.name}" in line and "ovss " in line for line in header), "the header must show the command"


@pytest.mark.parametrize("file, clip, size, guidance", [
    ("catseg_vitb.yaml", "ViT-B-16", 384, [3, 7]),
    ("catseg_vitl.yaml", "ViT-L-14-336", 336, [7, 15]),
])
def test_catseg_recipes_carry_the_official_protocol(file, clip, size, guidance):
    recipe = load_recipe(RECIPES / file)
    assert recipe.finetune.mode == "attention"
    assert_official_protocol(recipe, clip, size, guidance)


def test_overrides_apply_with_types_checked():
    recipe = load_recipe(QUICKSTART, ["optim.lr=3e-4", "train.iterations=7", "decoder.guidance_layers=[1, 0]",
                                      "data.limit=null", "train.eval_benches=[toy]"])
    assert (recipe.optim.lr, recipe.train.iterations, recipe.decoder.guidance_layers) == (3e-4, 7, [1, 0])
    with pytest.raises(UsageError, match="train.iterations: expected an integer"):
        load_recipe(QUICKSTART, ["train.iterations=many"])
    with pytest.raises(UsageError, match="did you mean 'bf16-mixed'"):
        load_recipe(QUICKSTART, ["train.precision=bf16-mix"])
    with pytest.raises(UsageError, match="must be divisible by decoder.heads"):
        # validated per section: decoder.hidden_dim must split over the heads
        load_recipe(QUICKSTART, ["decoder.hidden_dim=30", "decoder.heads=4"])
    with pytest.raises(UsageError, match="did you mean 'coco-stuff'"):
        load_recipe(QUICKSTART, ["data.benchmark=coco-stuf"])
    with pytest.raises(UsageError, match="did you mean 'ade150'"):
        load_recipe(QUICKSTART, ["train.eval_benches=[ade15]"])


def test_saved_recipe_loads_back_identically(tmp_path):
    recipe = load_recipe(QUICKSTART, ["seed=3", "finetune.mode=lora"])
    save_recipe(recipe, tmp_path / "r.yaml", header="first line\nsecond line")
    text = (tmp_path / "r.yaml").read_text()
    assert text.startswith("# first line\n# second line\n")
    assert load_recipe(tmp_path / "r.yaml") == recipe


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_typo_in_an_override_fails_through_the_cli_with_a_suggestion():
    result = runner.invoke(app, ["train", str(QUICKSTART), "optim.lrr=1"])
    assert result.exit_code == 2
    assert _error_lines(result.output) == ["error: unknown key 'optim.lrr' (did you mean 'lr'?)"]
    assert "Traceback" not in result.output


def test_typo_in_a_yaml_file_fails_through_the_cli_with_a_suggestion(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(QUICKSTART.read_text().replace("  checkpoint_every:", "  checkpont_every:"))
    result = runner.invoke(app, ["train", str(broken), "--dry-run"])
    assert result.exit_code == 2
    assert _error_lines(result.output) == ["error: unknown key 'train.checkpont_every' (did you mean 'checkpoint_every'?)"]
    not_yaml = tmp_path / "bad.yaml"
    not_yaml.write_text("train: [unclosed\n")
    result = runner.invoke(app, ["train", str(not_yaml)])
    assert result.exit_code == 2 and "is not valid YAML" in result.output


def test_dry_run_prints_trainable_groups_and_the_resolved_recipe():
    result = runner.invoke(app, ["train", str(QUICKSTART), "optim.clip_lr_multiplier=0.5", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "clip/weight" in result.output and "decoder/norm" in result.output
    assert "training data: 64 images (toy)" in result.output
    assert "clip_lr_multiplier: 0.5" in result.output


def test_a_recipe_carries_exactly_the_sections_of_its_method(tmp_path):
    from ovss_cli.methods.registry import METHODS

    catseg = load_recipe(QUICKSTART)
    assert catseg.infoclip is None and catseg.decoder is not None  # defaults filled for what catseg reads
    saved = catseg.to_dict()
    assert set(METHODS["catseg"].sections) <= set(saved) and "infoclip" not in saved
    with pytest.raises(UsageError, match="section 'infoclip:' is not read by method catseg"):
        load_recipe(QUICKSTART, ["infoclip.alpha=2"])
    infoclip = load_recipe(QUICKSTART, ["method=infoclip"])
    assert infoclip.infoclip is not None and "infoclip" in infoclip.to_dict()


def test_method_and_training_set_are_checked_choices_from_their_tables():
    from ovss_cli.data.benchmarks import TRAIN_SETS
    from ovss_cli.methods.registry import METHODS

    with pytest.raises(UsageError, match="did you mean 'infoclip'"):
        load_recipe(QUICKSTART, ["method=infoclp"])
    with pytest.raises(UsageError, match="did you mean 'coco-stuff'"):
        load_recipe(QUICKSTART, ["data.benchmark=coco-stuf"])
    for method, spec in METHODS.items():  # every method whose sections the CAT-Seg quickstart carries
        if set(METHODS["catseg"].sections) <= set(spec.sections):
            assert load_recipe(QUICKSTART, [f"method={method}"]).method == method
    for name in TRAIN_SETS:
        assert load_recipe(QUICKSTART, [f"data.benchmark={name}"]).data.benchmark == name


def test_validation_never_changes_the_recipe():
    recipe = load_recipe(QUICKSTART, ["train.eval_benches=[all, toy]"])
    assert recipe.train.eval_benches == ["all", "toy"]  # expanded where it is used, not rewritten
    with pytest.raises(UsageError, match="unknown benchmark 'ade15'"):
        load_recipe(QUICKSTART, ["train.eval_benches=[ade15]"])


def test_train_precision_choices_are_the_runtime_precisions(monkeypatch):
    import typing

    import torch

    from ovss_cli.engine.config import TrainConfig
    from ovss_cli.runtime.config import PRECISIONS
    from ovss_cli.runtime.precision import resolve_precision

    assert typing.get_args(typing.get_type_hints(TrainConfig)["precision"]) == ("auto", "bf16-mixed", "fp16-mixed", "fp32")
    assert PRECISIONS == ("bf16-mixed", "fp16-mixed", "fp32")
    assert [resolve_precision(p, "cpu") for p in PRECISIONS] == list(PRECISIONS)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # auto on a bf16 GPU
    assert (resolve_precision("auto", "cpu"), resolve_precision("auto", "cuda:0")) == ("fp32", "bf16-mixed")
