"""`ovss convert`: an official CAT-Seg checkpoint -> an ovss checkpoint folder for `ovss evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer


def convert(
    source: Path = typer.Argument(..., help="Official CAT-Seg checkpoint (model_final.pth, model_base.pth, model_large.pth)."),
    recipe: Path = typer.Option(Path("recipes/catseg_vitb.yaml"), "--recipe", "-r",
                                help="Recipe of the same backbone: recipes/catseg_vitb.yaml (ViT-B) or recipes/catseg_vitl.yaml (ViT-L)."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder; gets checkpoints/best.safetensors + best.json."),
) -> None:
    """Convert official CAT-Seg weights so that `ovss evaluate` can score them without training.

    Example: ovss convert model_base.pth --recipe recipes/catseg_vitb.yaml --out runs/catseg_official_vitb
    Example: ovss convert model_large.pth --recipe recipes/catseg_vitl.yaml --out runs/catseg_official_vitl
    """
    from ovss_cli.convert import convert_official_catseg

    weights = convert_official_catseg(source, recipe, out)
    typer.echo(f"wrote {weights} (+ {weights.with_suffix('.json').name})")
    typer.echo(f"evaluate with: ovss evaluate --bench all --checkpoint {out}")
