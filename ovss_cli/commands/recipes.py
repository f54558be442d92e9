"""`ovss recipes`: the recipes that ship with ovss, each with its one-line purpose."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ovss_cli.recipes import find_recipe, recipe_purpose, shipped_recipes


def recipes(
    name: Optional[str] = typer.Argument(None, help="Show this recipe's file (path and content) instead of the list."),
) -> None:
    """List the shipped recipes with their purpose; `ovss train NAME` runs one by name (a YAML path works too).

    Example: ovss recipes hclip > my_hclip.yaml
    """

    if name is not None:
        path = find_recipe(name)
        typer.echo(f"# {path}", err=True)
        typer.echo(path.read_text(encoding="utf-8"), nl=False)
        return

    found = shipped_recipes()
    table = Table(title=f"ovss recipes ({len(found)}): ovss train NAME", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("purpose")
    for recipe_name, path in found.items():
        table.add_row(recipe_name, recipe_purpose(path))
    Console(width=max(120, Console().width)).print(table)
