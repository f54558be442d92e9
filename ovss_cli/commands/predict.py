"""`ovss predict`: segment your own images with your own words."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ovss_cli.commands import common
from ovss_cli.data.vocab import load_vocabulary, parse_class_list
from ovss_cli.errors import UsageError
from ovss_cli.fileio import write_json
from ovss_cli.progress import track

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def collect_images(inputs: list[Path]) -> list[Path]:
    images: list[Path] = []
    for path in inputs:
        if path.is_dir():
            images.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            images.append(path)
        else:
            raise UsageError(f"no such image or folder: {path}")
    if not images:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, inputs))}")
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems and stems[image.stem] != image:
            raise UsageError(f"{stems[image.stem]} and {image} would write the same <name>_label.png; "
                             "predict them in separate runs with different --out folders")
        stems[image.stem] = image
    return list(stems.values())


def check_out_folder(out: Path, inputs: list[Path]) -> None:
    """--out must not be a folder the images come from: predictions would overwrite the user's files
    there (`x_label.png`) and be read back as inputs by the next run."""

    target = out.resolve()
    for path in inputs:
        folder = path if path.is_dir() else path.parent
        if folder.resolve() == target:
            raise UsageError(f"--out {out} is the folder the input {path} is read from; predictions would overwrite "
                             "files there and be read back as inputs, choose another --out")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is an existing file; name a folder")


def predict(
    inputs: List[Path] = typer.Argument(..., help="Image files and/or folders of images."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class names, comma-separated ('cat, grass, sky'); use ';' to keep synonyms ('building, edifice; sky')."),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="A shipped vocabulary instead of --classes: ade150, ade847, pc59, pc459, coco_stuff171, voc20, voc21, coco81."),
    checkpoint: Optional[Path] = common.CheckpointOption,
    clip_model: Optional[str] = common.ClipModelOption,
    pretrained: Optional[str] = common.PretrainedOption,
    image_size: Optional[int] = common.ImageSizeOption,
    templates: str = common.TemplatesOption,
    mode: str = common.ModeOption,
    out: Path = typer.Option(Path("predictions"), "--out", "-o", help="Output folder: <name>_label.png (palette PNG of class ids; uint16 over 255 classes) and <name>_overlay.png (with its legend) per image."),
    precision: str = common.PrecisionOption,
    device: str = common.DeviceOption,
) -> None:
    """Segment images with free-text classes; writes a label map (a palette PNG: coloured in any viewer, class ids when read with PIL) and a colour overlay with the legend of the classes present.

    Example: ovss predict photos/ --classes "cat, grass, sky" --checkpoint runs/hclip/20260101-120000 --out seg/
    """

    common.check_mode(mode)
    common.check_device_and_precision(device, precision)
    if checkpoint is not None:
        common.check_checkpoint_path(checkpoint)
    if (classes is None) == (vocab is None):
        raise UsageError("give exactly one of --classes 'cat, grass, sky' or --vocab ade150")
    names = list(parse_class_list(classes) if classes is not None else load_vocabulary(vocab))
    images = collect_images(list(inputs))
    check_out_folder(out, list(inputs))

    import numpy as np
    import torch

    from ovss_cli.data.io import read_image
    from ovss_cli.evaluate.inference import predict_scores
    from ovss_cli.evaluate.visualize import palette, write_label_and_overlay
    from ovss_cli.runtime.precision import autocast, resolve_precision

    device = common.resolve_device(device)
    precision = resolve_precision(precision, device)
    segmenter = common.build_segmenter(checkpoint, clip_model, pretrained, image_size, templates, device,
                                       tiny_default=False)
    segmenter.set_vocabulary(names)
    colours = palette(len(names))
    out.mkdir(parents=True, exist_ok=True)
    index = {}
    for path in track(images, len(images), "predict"):
        image = read_image(path)
        with torch.no_grad(), autocast(precision, device):
            pixels = segmenter.image_norm.to_tensor(image, device)
            scores = predict_scores(pixels, segmenter.scores, mode, segmenter.window,
                                    image.shape[:2])
        label = scores.argmax(dim=0).cpu().numpy()
        present = [int(i) for i in np.unique(label)]
        write_label_and_overlay(out / path.stem, image, label, names, colours)
        index[path.stem] = {names[i]: float((label == i).mean()) for i in present}
    write_json(out / "classes.json", {"classes": names, "area_fraction": index})
    typer.echo(f"wrote {len(images)} predictions to {out}")
