"""`ovss pseudolabel` and `ovss prototypes`: weakly-supervised pseudo-labels with CLIP-ES and VPL vision prototypes.

Settings come from a vpl recipe's `clip:`, `clip_es:` and `prototypes:` sections (`--recipe`, or
the built-in defaults of `--dataset`); each flag given on the command line overrides one key.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
import yaml

from ovss_cli.commands import common
from ovss_cli.config import apply_overrides
from ovss_cli.data.benchmarks import PSEUDO_LABEL_SETS
from ovss_cli.errors import OvssError, UsageError
from ovss_cli.fileio import write_json
from ovss_cli.recipes import load_recipe, recipe_from_dict
from ovss_cli.runtime.distributed import (
    check_process_options,
    init_distributed,
    process_device,
    relaunch_if_needed,
    shutdown_distributed,
)
from ovss_cli.wsss.config import DEFAULT_BOX_THRESHOLD
from ovss_cli.wsss.names import CLIP_ES_TEMPLATE, prompt_names

RecipeOption = typer.Option(None, "--recipe", help="vpl recipe whose clip:, clip_es: and prototypes: sections give the settings (e.g. recipes/vpl_voc.yaml); flags override single keys. Default: built-in defaults for --dataset.")
DatasetOption = typer.Option(None, "--dataset", help="voc, coco or toy (synthetic, no download).", show_default="the recipe's data.benchmark, else voc")
ImageLabelsOption = typer.Option("auto", "--image-labels", help="Image-level labels from xml (VOC annotations, as CLIP-ES), mask (np.unique of the ground truth, as WeCLIP) or auto (xml on voc, mask otherwise).")
BoxThresholdOption = typer.Option(None, "--box-threshold", help="clip_es.box_threshold: CAM fraction of the max whose contour boxes gate the attention affinity.", show_default="0.4; 0.7 on coco")
ClipModelOption = typer.Option(None, "--clip-model", help="clip.name: open_clip model.", show_default="ViT-B-16; ovss-tiny for --dataset toy")
PretrainedOption = typer.Option(None, "--pretrained", help="clip.pretrained: open_clip tag, OpenAI.pt,.safetensors/.bin state dict or hub folder. '' = random init.", show_default="openai; random for ovss-tiny")
DataRootOption = typer.Option(None, "--data-root", help="Prepared datasets.", show_default="$OVSS_DATASETS, $DETECTRON2_DATASETS, ./datasets")
LimitOption = typer.Option(None, "--limit", min=1, help="Only the first N images of the split (quick checks).")
GpusOption = typer.Option(1, "--gpus", min=1, help="GPUs (one process each) on this machine; images are sharded across them.")

# The recipe `ovss pseudolabel` suggests for the next step when none was given.
NEXT_RECIPE = {"voc": "recipes/vpl_voc.yaml", "coco": "recipes/vpl_coco.yaml", "toy": "recipes/quickstart_vpl.yaml"}


def default_wsss_recipe(dataset: str) -> dict:
    """The built-in vpl recipe of a dataset (what recipes/vpl_voc.yaml, vpl_coco.yaml and quickstart_vpl.yaml hold
    for pseudo-labels and prototypes)."""

    tiny = dataset == "toy"
    return {"name": f"vpl_{dataset}", "method": "vpl",
            "clip": {"name": "ovss-tiny" if tiny else "ViT-B-16", "pretrained": "" if tiny else "openai",
                     "templates": [CLIP_ES_TEMPLATE]},
            "data": {"benchmark": f"{dataset}-pseudo"},
            "clip_es": {"box_threshold": DEFAULT_BOX_THRESHOLD[dataset]}}


def wsss_recipe(recipe: Optional[Path], dataset: Optional[str], clip_model: Optional[str], pretrained: Optional[str],
                overrides: dict):
    """(dataset, validated recipe): the recipe (or the dataset's defaults) with the given flags applied on top.
    `overrides` maps dotted keys to values; None values were not given."""

    from ovss_cli.data.image_labels import DATASETS

    if dataset is not None and dataset not in DATASETS:
        raise UsageError(f"unknown WSSS dataset '{dataset}'; use one of {', '.join(DATASETS)}")
    given = {key: value for key, value in overrides.items() if value is not None}
    if clip_model is not None:
        given["clip.name"] = clip_model
        given.setdefault("clip.pretrained", "" if clip_model == "ovss-tiny" else "openai")
    if pretrained is not None:
        given["clip.pretrained"] = pretrained
    # Values go in as YAML text, so they are checked by the recipe's strict converter like any override.
    dotted = [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
              for key, value in given.items()]
    if recipe is not None:
        parsed = load_recipe(recipe, dotted)
        if parsed.method != "vpl":
            raise UsageError(f"recipe {recipe} is method {parsed.method}; pseudo-labels and prototypes read a vpl "
                             "recipe (e.g. recipes/vpl_voc.yaml)")
        own = PSEUDO_LABEL_SETS[parsed.data.benchmark]
        if dataset is not None and dataset != own:
            raise UsageError(f"--dataset {dataset} contradicts recipe {recipe} (data.benchmark "
                             f"{parsed.data.benchmark}); drop --dataset or use a {dataset} recipe")
        return own, parsed
    dataset = dataset or "voc"
    return dataset, recipe_from_dict(apply_overrides(default_wsss_recipe(dataset), dotted))


def _parse_scales(text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--scales must be comma-separated numbers like 1.0,0.75, got '{text}'") from None


def pseudolabel(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the <id>.png pseudo-labels (required); finished files are skipped, so a stopped run resumes."),
    method: str = typer.Option("clip-es", "--method", help="clip-es (text prototypes) or vpl (vision prototypes from --prototypes)."),
    recipe: Optional[Path] = RecipeOption,
    dataset: Optional[str] = DatasetOption,
    split: str = typer.Option("train", "--split", help="voc: train (1,464 images, the split papers score), train_aug (what the decoder trains on) or val; coco and toy: train or val."),
    prototypes: Optional[Path] = typer.Option(None, "--prototypes", help="VPL prototypes (.safetensors written by `ovss prototypes`); required by --method vpl.", show_default="the recipe's vpl.prototypes"),
    crf: Optional[bool] = typer.Option(None, "--crf/--no-crf", help="Dense CRF on the background and class scores; pixels below --confidence become 255.", show_default="on"),
    confidence: Optional[float] = typer.Option(None, "--confidence", help="clip_es.confidence: with --crf, pixels whose CRF marginal is below this become 255 (0 keeps every pixel).", show_default="0.95"),
    background_power: Optional[float] = typer.Option(None, "--bg-power", help="clip_es.background_power: alpha of the background score (1 - max_k cam_k)^alpha (CLIP-ES uses 1 or 2).", show_default="1"),
    box_threshold: Optional[float] = BoxThresholdOption,
    scales: Optional[str] = typer.Option(None, "--scales", help="clip_es.scales: comma-separated image scales whose CAMs are averaged.", show_default="1.0, CLIP-ES's single scale"),
    image_labels: str = ImageLabelsOption,
    clip_model: Optional[str] = ClipModelOption,
    pretrained: Optional[str] = PretrainedOption,
    data_root: Optional[Path] = DataRootOption,
    limit: Optional[int] = LimitOption,
    gpus: int = GpusOption,
    nproc: Optional[int] = common.NprocOption,
    device: str = common.DeviceOption,
) -> None:
    """Make pseudo-labels from image-level labels with CLIP-ES (or CLIP-ES + VPL prototypes) and score them.

    Writes palette PNGs of the ids (0 background, 1..K classes, 255 ignore; VOC colours in a viewer, ids with PIL) to --out, then prints their mIoU against the ground truth when the split has it, and the `ovss train` line that trains the decoder on them. Published numbers are on VOC train (1,464 images); train_aug scores lower and is not comparable.

    With --crf the mIoU counts labelled pixels only; --confidence 0 gives the plain CRF argmax that papers score (CLIP-ES: 75.0 on VOC train).

    Example: ovss pseudolabel --method clip-es --dataset voc --split train --out pseudo/clip_es --gpus 4
    """
    from ovss_cli.data.image_labels import open_image_label_set

    if method not in ("clip-es", "vpl"):
        raise UsageError(f"--method must be clip-es or vpl, got '{method}'")
    if method == "clip-es" and prototypes is not None:
        raise UsageError("--prototypes only applies to --method vpl")
    overrides = {"clip_es.confidence": confidence, "clip_es.background_power": background_power,
                 "clip_es.box_threshold": box_threshold, "clip_es.scales": _parse_scales(scales)}
    dataset, parsed = wsss_recipe(recipe, dataset, clip_model, pretrained, overrides)
    if crf is False:
        parsed.clip_es = dataclasses.replace(parsed.clip_es, crf=None)
    elif crf and parsed.clip_es.crf is None:
        from ovss_cli.wsss.config import CrfParams

        parsed.clip_es.crf = CrfParams()
    if method == "vpl" and prototypes is None and parsed.vpl.prototypes:
        prototypes = Path(parsed.vpl.prototypes).expanduser()
    missing = [option for option, value in (("--out DIR", out), ("--prototypes FILE", prototypes))
               if value is None and (option == "--out DIR" or method == "vpl")]
    if missing:  # every missing option in one message, not one per try
        made = " (make the prototypes with `ovss prototypes --out FILE`)" if "--prototypes FILE" in missing else ""
        raise UsageError(f"--method {method} needs {' and '.join(missing)}{made}")
    check_process_options(gpus, nproc)
    device = process_device(device, nproc)
    common.check_device_and_precision(device)
    config = parsed.clip_es
    # Data, weights and devices fail here, once, not once per rank after the relaunch (the data before torch).
    data = open_image_label_set(dataset, split, data_root, image_labels, limit)
    from ovss_cli.clip.zoo import check_clip_weights
    from ovss_cli.wsss.prototype_store import clip_identity, load_prototypes

    check_clip_weights(parsed.clip.name, parsed.clip.pretrained)
    identity = clip_identity(parsed.clip)
    vision = load_prototypes(prototypes, identity, prompt_names(dataset))[0] if prototypes is not None else None
    if relaunch_if_needed(gpus, nproc=nproc):
        return
    from ovss_cli.engine.pseudolabel import build_cams, generate_pseudolabels, prepare_output
    settings = {"method": method, "dataset": dataset, "split": split, "image_labels": data.label_source,
                "clip": identity, "templates": parsed.clip.templates,
                "prototypes": str(prototypes.resolve()) if prototypes else None, "clip_es": config.as_dict()}
    dist = init_distributed(common.resolve_device(device))
    try:
        prepare_output(out, settings, dist.is_main)
        cams = build_cams(parsed.clip, data, config, dist.device, vision)
        summary = generate_pseudolabels(data, cams, out, dist)
        if dist.is_main:
            _write_metrics(out, summary)
            _print_summary(summary, data, out)
            typer.echo("next, train the segmentation decoder on them:\n  "
                       + next_train_command(recipe, dataset, out, prototypes, data_root, clip_model, pretrained))
    finally:
        shutdown_distributed()


def next_train_command(recipe: Optional[Path], dataset: str, out: Path, prototypes: Optional[Path],
                       data_root: Optional[Path], clip_model: Optional[str], pretrained: Optional[str]) -> str:
    """The `ovss train` line that trains the vpl decoder on the pseudo-labels just written, as they were made."""

    parts = ["ovss", "train", str(recipe or NEXT_RECIPE[dataset]), f"data.pseudo_labels={out.resolve()}"]
    if clip_model is not None or pretrained is not None:  # the decoder must sit on the CLIP that made the labels
        name = clip_model or ("ovss-tiny" if dataset == "toy" else "ViT-B-16")
        weights = pretrained if pretrained is not None else ("" if name == "ovss-tiny" else "openai")
        parts += [f"clip.name={name}", f"clip.pretrained={weights}"]
    if data_root is not None:
        parts += ["--data-root", str(data_root)]
    if prototypes is not None:
        parts += ["--prototypes", str(prototypes.resolve())]
    else:
        parts.append("vpl.rsc_weight=0")  # CLIP-ES labels without prototypes: the decoder trains on CE alone
    return shlex.join(parts)


def _write_metrics(out: Path, summary) -> None:
    """`<out>/metrics.json`: this run's counts and the metrics over every image of the split so far."""

    write_json(out / "metrics.json", asdict(summary))


def _print_summary(summary, data, out: Path) -> None:
    typer.echo(f"pseudo-labels: {summary.images} images ({summary.written} written, {summary.skipped} already "
               f"finished) in {out}")
    if summary.metrics is None:
        typer.echo("no ground truth for this split: no mIoU")
        return
    m = summary.metrics
    labelled = f", {100 * summary.labelled_fraction:.1f}% of pixels labelled" if summary.labelled_fraction < 1 else ""
    typer.echo(f"pseudo-label mIoU {m['mIoU']:.2f} (pACC {m['pACC']:.2f}, {m['classes_with_gt']}/{m['num_classes']} "
               f"classes with ground truth{labelled}) on {data.name} {data.split}")
    if data.name == "voc" and data.split == "train_aug":
        typer.secho("note: published pseudo-label mIoU is on VOC train (1,464 images); train_aug scores lower and is "
                    "not comparable (use --split train)", err=True, fg=typer.colors.YELLOW)


def prototypes(
    out: Path = typer.Option(..., "--out", "-o", help="Prototype file (.safetensors); a .json sidecar with the CLIP identity, classes and settings goes beside it."),
    recipe: Optional[Path] = RecipeOption,
    dataset: Optional[str] = DatasetOption,
    split: str = typer.Option("train_aug", "--split", help="Images whose region embeddings teach the prototypes (voc: train_aug, train or val; coco and toy: train or val)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=0, help="prototypes.steps: full-batch Adam steps.", show_default="300"),
    lr: Optional[float] = typer.Option(None, "--lr", help="prototypes.lr: Adam step size.", show_default="1e-2"),
    tau_text: Optional[float] = typer.Option(None, "--tau-text", help="prototypes.tau_text: temperature of the text-prototype probabilities p_T.", show_default="0.01"),
    tau_image: Optional[float] = typer.Option(None, "--tau-image", help="prototypes.tau_image: temperature of the vision-prototype probabilities p_I.", show_default="0.01"),
    kl_weight: Optional[float] = typer.Option(None, "--kl-weight", help="prototypes.kl_weight: lambda, weight of KL(p_T || p_I) against the cross-entropy.", show_default="1"),
    region_cam: Optional[str] = typer.Option(None, "--region-cam", help="prototypes.region_cam: CAM that pools the region embeddings, refined (CLIP-ES with affinity) or gradcam.", show_default="refined"),
    region_threshold: Optional[float] = typer.Option(None, "--region-threshold", help="prototypes.region_threshold: CAM values at or below this do not pool (0: CAM-weighted mean).", show_default="0"),
    box_threshold: Optional[float] = BoxThresholdOption,
    image_labels: str = ImageLabelsOption,
    clip_model: Optional[str] = ClipModelOption,
    pretrained: Optional[str] = PretrainedOption,
    data_root: Optional[Path] = DataRootOption,
    limit: Optional[int] = LimitOption,
    gpus: int = GpusOption,
    nproc: Optional[int] = common.NprocOption,
    device: str = common.DeviceOption,
) -> None:
    """Learn VPL vision prototypes: one per class in CLIP's image space, anchored to the text prototypes.

    Region embeddings (patch embeddings pooled under each present class's CLIP-ES CAM) are collected over the split; V minimises CE(y, p_I) + lambda KL(p_T || p_I) from V = T by full-batch Adam (a convex problem; the directions the objective cannot see are held at the text prototypes), then each prototype is normalised. Use the file with `ovss pseudolabel --method vpl --prototypes FILE` and `ovss train --prototypes FILE`. VPL's code is not public: this is ovss's reconstruction (docs/wsss.md).

    Example: ovss prototypes --dataset voc --split train_aug --out prototypes/voc_vitb16.safetensors --gpus 4
    """

    from ovss_cli.data.image_labels import open_image_label_set

    check_process_options(gpus, nproc)
    device = process_device(device, nproc)
    common.check_device_and_precision(device)

    overrides = {"prototypes.steps": steps, "prototypes.lr": lr, "prototypes.tau_text": tau_text,
                 "prototypes.tau_image": tau_image, "prototypes.kl_weight": kl_weight,
                 "prototypes.region_cam": region_cam, "prototypes.region_threshold": region_threshold,
                 "clip_es.box_threshold": box_threshold}
    dataset, parsed = wsss_recipe(recipe, dataset, clip_model, pretrained, overrides)
    vpl_config = parsed.prototypes
    config = dataclasses.replace(parsed.clip_es, crf=None)  # CAMs only: the CRF acts on labels
    # Data, weights and devices fail here, once, not once per rank after the relaunch (the data before torch).
    data = open_image_label_set(dataset, split, data_root, image_labels, limit)
    from ovss_cli.clip.zoo import check_clip_weights

    check_clip_weights(parsed.clip.name, parsed.clip.pretrained)
    if relaunch_if_needed(gpus, nproc=nproc):
        return
    import torch

    from ovss_cli.engine.pseudolabel import build_cams, collect_regions
    from ovss_cli.wsss.prototype_store import clip_identity, save_prototypes
    from ovss_cli.wsss.vpl import learn_prototypes

    dist = init_distributed(common.resolve_device(device))
    try:
        cams = build_cams(parsed.clip, data, config, dist.device)
        features, labels = collect_regions(data, cams, vpl_config.region_cam, vpl_config.region_threshold, dist)
        if not dist.is_main:
            return
        if features.shape[0] == 0:
            raise OvssError(f"no region embeddings in {dataset} {split}: no image has a present class")
        text = cams.foreground
        vision, stats = learn_prototypes(features.to(text.device), labels.to(text.device), text, vpl_config)
        metadata = {"clip_identity": clip_identity(parsed.clip),
                    "clip_model": parsed.clip.name, "pretrained": parsed.clip.pretrained, "dataset": dataset,
                    "split": split, "images": len(data), "image_labels": data.label_source,
                    "class_names": list(prompt_names(dataset)), "vpl": vpl_config.as_dict(),
                    "clip_es": config.as_dict(), **stats}
        save_prototypes(out, vision, text, metadata)
        similarity = torch.nn.functional.cosine_similarity(vision, text, dim=-1)
        typer.echo(f"learnt {len(prompt_names(dataset))} prototypes from {stats['regions']} regions of {len(data)} "
                   f"images (loss {stats['initial_loss']:.4f} -> {stats['final_loss']:.4f}, mean cos to text "
                   f"{float(similarity.mean()):.3f}); wrote {out}")
    finally:
        shutdown_distributed()
