"""The shipped InfoCLIP recipes validate and carry the paper's settings."""

from __future__ import annotations

import pytest

from ovss_cli.errors import UsageError
from ovss_cli.recipes import load_recipe
from tests.helpers import RECIPES


@pytest.mark.parametrize("file, clip, size, guidance", [
    ("infoclip.yaml", "ViT-B-16", 384, [3, 7]),
    ("infoclip_vitl.yaml", "ViT-L-14-336", 336, [7, 15]),
])
def test_infoclip_recipes_validate_with_the_published_settings(file, clip, size, guidance):
    path = RECIPES / file
    assert path.read_text(encoding="utf-8").splitlines()[2].startswith(f"# Run:       ovss distill recipes/{file}")
    recipe = load_recipe(path)
    assert recipe.method == "infoclip"
    assert (recipe.clip.name, recipe.clip.pretrained, recipe.clip.image_size) == (clip, "openai", size)
    assert recipe.decoder.guidance_layers == guidance
    assert (recipe.data.crop_size, recipe.data.batch_size, recipe.train.iterations) == (384, 4, 80_000)
    assert (recipe.optim.lr, recipe.optim.lr * recipe.optim.clip_lr_multiplier) == pytest.approx((2e-4, 2e-6))
    info = recipe.infoclip
    assert (info.lambda_compression, info.lambda_distill, info.alpha, info.gram_axis, info.teacher_detach) == (
        1.0, 1.0, 2.0, "batch", False)


def test_infoclip_recipe_overrides_are_checked():
    with pytest.raises(UsageError, match="gram_axis"):
        load_recipe(RECIPES / "infoclip.yaml", ["infoclip.gram_axis=pixel"])
    recipe = load_recipe(RECIPES / "infoclip.yaml", ["infoclip.lambda_distill=0.5", "infoclip.gram_axis=patch"])
    assert (recipe.infoclip.lambda_distill, recipe.infoclip.gram_axis) == (0.5, "patch")
