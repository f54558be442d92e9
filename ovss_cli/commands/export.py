"""`ovss export`: merged plain open_clip weights (+ decoder), or ONNX for deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ovss_cli.commands import common
from ovss_cli.data.vocab import load_vocabulary, parse_class_list
from ovss_cli.errors import UsageError


def check_out_path(out: Path, folder: bool) -> None:
    """--out must be creatable as a folder (open_clip) or a file (onnx): one line instead of a traceback."""

    if folder and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is an existing file; open_clip exports go into a folder, name a folder")
    if not folder and out.is_dir():
        raise UsageError(f"--out {out} is a folder; --format onnx writes one file, name it like {out / 'model.onnx'}")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"--out {out}: {parent} is a file, not a folder")


def export(
    checkpoint: Path = typer.Argument(..., help="Run folder or checkpoint (.safetensors) to export."),
    format: str = typer.Option("open_clip", "--format", "-f", help="open_clip: merged CLIP weights + decoder; onnx: one graph for a fixed vocabulary."),
    out: Path = typer.Option(..., "--out", "-o", help="open_clip: output folder; onnx: output .onnx file."),
    classes: Optional[str] = typer.Option(None, "--classes", help="onnx: class names, comma-separated ('cat, grass, sky')."),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="onnx: a shipped vocabulary instead of --classes (e.g. ade150)."),
    batch: int = typer.Option(1, "--batch", min=1, help="onnx: images per call, fixed in the graph (5 = CAT-Seg's 4 windows + global view)."),
) -> None:
    """Export a trained model: adapters folded into plain open_clip weights, or an ONNX graph.

    Example: ovss export runs/hclip/20260101-120000 --format open_clip --out hclip_export/
    Example: ovss export runs/hclip/20260101-120000 --format onnx --vocab ade150 --batch 5 --out hclip_ade150.onnx
    """

    if format not in ("open_clip", "onnx"):
        raise UsageError(f"--format must be open_clip or onnx, got '{format}'")
    common.check_checkpoint_path(checkpoint)
    check_out_path(out, folder=format == "open_clip")
    if format == "open_clip":
        if classes is not None or vocab is not None:
            raise UsageError("--classes/--vocab only apply to --format onnx (open_clip exports keep free-text classes)")
        from ovss_cli.export import export_open_clip

        written = export_open_clip(checkpoint, out)
    else:
        if (classes is None) == (vocab is None):
            raise UsageError("ONNX graphs score a fixed vocabulary: give --classes 'cat, grass, sky' or --vocab ade150")
        if out.suffix != ".onnx":
            raise UsageError(f"--out for --format onnx must be a .onnx file, got {out}")
        from ovss_cli.export import export_onnx

        names = parse_class_list(classes) if classes is not None else load_vocabulary(vocab)
        written = export_onnx(checkpoint, out, names, batch=batch)
    for path in written:
        typer.echo(f"wrote {path}")
