"""`ovss pseudolabel` and `ovss prototypes`: weakly-supervised pseudo-labels with CLIP-ES and VPL vision prototypes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ovss_cli.commands import common
from ovss_cli.fileio import write_json

DatasetOption = typer.Option("voc", "--dataset", help="voc, coco or toy (synthetic, no download).")
ImageLabelsOption = typer.Option("auto", "--image-labels", help="Image-level labels from xml (VOC annotations, as CLIP-ES), mask (np.unique of the ground truth, as WeCLIP) or auto (xml on voc, mask otherwise).")
BoxThresholdOption = typer.Option(None, "--box-threshold", help="CAM fraction of the max whose contour boxes gate the attention affinity (default: 0.4; 0.7 on coco).")
ClipModelOption = typer.Option(None, "--clip-model", help="open_clip model (default: ViT-B-16; ovss-tiny for --dataset toy).")
PretrainedOption = typer.Option(None, "--pretrained", help="open_clip tag, OpenAI .pt, .safetensors/.bin state dict or hub folder (default: openai; random for ovss-tiny). '' = random init.")
DataRootOption = typer.Option(None, "--data-root", help="Prepared datasets (default: $OVSS_DATASETS, $DETECTRON2_DATASETS, ./datasets).")
LimitOption = typer.Option(None, "--limit", min=1, help="Only the first N images of the split (quick checks).")
GpusOption = typer.Option(1, "--gpus", min=1, help="Processes (GPUs) on this machine; images are sharded across them.")


def _clip_choice(dataset: str, clip_model: Optional[str], pretrained: Optional[str]) -> tuple[str, str]:
    tiny = dataset == "toy" and clip_model is None
    name = clip_model or ("ovss-tiny" if tiny else "ViT-B-16")
    weights = pretrained if pretrained is not None else ("" if name == "ovss-tiny" else "openai")
    return name, weights


def _clip_section(name: str, weights: str):
    from ovss_cli.clip.config import ClipConfig
    from ovss_cli.wsss.names import CLIP_ES_TEMPLATE

    return ClipConfig(name=name, pretrained=weights, templates=[CLIP_ES_TEMPLATE])


def _parse_scales(text: str) -> tuple[float, ...]:
    from ovss_cli.errors import UsageError

    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--scales must be comma-separated numbers like 1.0,0.75, got '{text}'") from None
    return scales


def _clip_es_config(dataset: str, box_threshold: Optional[float], **overrides):
    from ovss_cli.wsss.config import DEFAULT_BOX_THRESHOLD, ClipEsConfig

    threshold = box_threshold if box_threshold is not None else DEFAULT_BOX_THRESHOLD.get(dataset, 0.4)
    config = ClipEsConfig(box_threshold=threshold, **overrides)
    config.validate()
    return config


def pseudolabel(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the <id>.png pseudo-labels; finished files are skipped, so a stopped run resumes."),
    method: str = typer.Option("clip-es", "--method", help="clip-es (text prototypes) or vpl (vision prototypes from --prototypes)."),
    dataset: str = DatasetOption,
    split: str = typer.Option("train", "--split", help="voc: train (1,464 images, the split papers score), train_aug or val; coco and toy: train or val."),
    prototypes: Optional[Path] = typer.Option(None, "--prototypes", help="VPL prototypes (.safetensors written by `ovss prototypes`); required by --method vpl."),
    crf: bool = typer.Option(True, "--crf/--no-crf", help="Dense CRF on the background and class scores; pixels below --confidence become 255."),
    confidence: float = typer.Option(0.95, "--confidence", help="With --crf: pixels whose CRF marginal is below this become 255 (0 keeps every pixel)."),
    background_power: float = typer.Option(1.0, "--bg-power", help="alpha of the background score (1 - max_k cam_k)^alpha (CLIP-ES uses 1 or 2)."),
    box_threshold: Optional[float] = BoxThresholdOption,
    scales: str = typer.Option("1.0", "--scales", help="Comma-separated image scales whose CAMs are averaged (CLIP-ES: single scale 1.0)."),
    image_labels: str = ImageLabelsOption,
    clip_model: Optional[str] = ClipModelOption,
    pretrained: Optional[str] = PretrainedOption,
    data_root: Optional[Path] = DataRootOption,
    limit: Optional[int] = LimitOption,
    gpus: int = GpusOption,
    device: str = common.DeviceOption,
) -> None:
    """Make pseudo-labels from image-level labels with CLIP-ES (or CLIP-ES + VPL prototypes) and score them.

    Writes palette-free uint8 PNGs (0 background, 1..K classes, 255 ignore) to --out, then prints their mIoU against the ground truth when the split has it. Published numbers are on VOC train (1,464 images); train_aug scores lower and is not comparable.

    With --crf the mIoU counts labelled pixels only; --confidence 0 gives the plain CRF argmax that papers score (CLIP-ES: 75.0 on VOC train).

    Example: ovss pseudolabel --method clip-es --dataset voc --split train --out pseudo/clip_es --gpus 4
    """
    from ovss_cli.runtime.distributed import init_distributed, relaunch_if_needed, shutdown_distributed
    from ovss_cli.errors import UsageError
    from ovss_cli.data.image_labels import open_image_label_set
    from ovss_cli.wsss.config import CrfParams

    if method not in ("clip-es", "vpl"):
        raise UsageError(f"--method must be clip-es or vpl, got '{method}'")
    if method == "vpl" and prototypes is None:
        raise UsageError("--method vpl needs --prototypes FILE; make one with `ovss prototypes --out FILE`")
    if method == "clip-es" and prototypes is not None:
        raise UsageError("--prototypes only applies to --method vpl")
    config = _clip_es_config(dataset, box_threshold, background_power=background_power, scales=_parse_scales(scales),
                             crf=CrfParams() if crf else None, confidence=confidence)
    data = open_image_label_set(dataset, split, data_root, image_labels, limit)  # fail on missing data before any model
    if relaunch_if_needed(gpus):
        return
    from ovss_cli.wsss.names import prompt_names
    from ovss_cli.wsss.prototype_store import clip_identity, load_prototypes
    from ovss_cli.engine.pseudolabel import build_cams, generate_pseudolabels, prepare_output

    clip_name, weights = _clip_choice(dataset, clip_model, pretrained)
    identity = clip_identity(clip_name, weights)
    vision = load_prototypes(prototypes, identity, prompt_names(dataset))[0] if prototypes is not None else None
    settings = {"method": method, "dataset": dataset, "split": split, "image_labels": data.label_source,
                "clip": identity, "prototypes": str(prototypes.resolve()) if prototypes else None,
                "clip_es": config.as_dict()}
    dist = init_distributed(common.resolve_device(device))
    try:
        prepare_output(out, settings, dist.is_main)
        cams = build_cams(_clip_section(clip_name, weights), data, config, dist.device, vision)
        summary = generate_pseudolabels(data, cams, out, dist)
        if dist.is_main:
            _write_metrics(out, summary)
            _print_summary(summary, data, out)
    finally:
        shutdown_distributed()


def _write_metrics(out: Path, summary) -> None:
    """`<out>/metrics.json`: this run's counts and the metrics over every image of the split so far."""
    from dataclasses import asdict

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
    dataset: str = DatasetOption,
    split: str = typer.Option("train_aug", "--split", help="Images whose region embeddings teach the prototypes (voc: train_aug, train or val; coco and toy: train or val)."),
    steps: int = typer.Option(300, "--steps", min=0, help="Full-batch Adam steps."),
    lr: float = typer.Option(1e-2, "--lr", help="Adam step size."),
    tau_text: float = typer.Option(0.01, "--tau-text", help="Temperature of the text-prototype probabilities p_T."),
    tau_image: float = typer.Option(0.01, "--tau-image", help="Temperature of the vision-prototype probabilities p_I."),
    kl_weight: float = typer.Option(1.0, "--kl-weight", help="lambda: weight of KL(p_T || p_I) against the cross-entropy."),
    region_cam: str = typer.Option("refined", "--region-cam", help="CAM that pools the region embeddings: refined (CLIP-ES with affinity) or gradcam."),
    region_threshold: float = typer.Option(0.0, "--region-threshold", help="CAM values at or below this do not pool (0: CAM-weighted mean)."),
    box_threshold: Optional[float] = BoxThresholdOption,
    image_labels: str = ImageLabelsOption,
    clip_model: Optional[str] = ClipModelOption,
    pretrained: Optional[str] = PretrainedOption,
    data_root: Optional[Path] = DataRootOption,
    limit: Optional[int] = LimitOption,
    gpus: int = GpusOption,
    device: str = common.DeviceOption,
) -> None:
    """Learn VPL vision prototypes: one per class in CLIP's image space, anchored to the text prototypes.

    Region embeddings (patch embeddings pooled under each present class's CLIP-ES CAM) are collected over the split; V minimises CE(y, p_I) + lambda KL(p_T || p_I) from V = T by full-batch Adam (a convex problem), then each prototype is normalised. Use the file with `ovss pseudolabel --method vpl --prototypes FILE`. VPL's code is not public: this is ovss's reconstruction (docs/wsss.md).

    Example: ovss prototypes --dataset voc --split train_aug --out prototypes/voc_vitb16.safetensors --gpus 4
    """
    from ovss_cli.runtime.distributed import init_distributed, relaunch_if_needed, shutdown_distributed
    from ovss_cli.data.image_labels import open_image_label_set
    from ovss_cli.wsss.config import VplConfig

    vpl_config = VplConfig(tau_text=tau_text, tau_image=tau_image, kl_weight=kl_weight, lr=lr, steps=steps,
                           region_cam=region_cam, region_threshold=region_threshold)
    vpl_config.validate()
    config = _clip_es_config(dataset, box_threshold, crf=None)
    data = open_image_label_set(dataset, split, data_root, image_labels, limit)
    if relaunch_if_needed(gpus):
        return
    import torch

    from ovss_cli.errors import OvssError
    from ovss_cli.wsss.names import prompt_names
    from ovss_cli.wsss.prototype_store import clip_identity, save_prototypes
    from ovss_cli.engine.pseudolabel import build_cams, collect_regions
    from ovss_cli.wsss.vpl import learn_prototypes

    clip_name, weights = _clip_choice(dataset, clip_model, pretrained)
    dist = init_distributed(common.resolve_device(device))
    try:
        cams = build_cams(_clip_section(clip_name, weights), data, config, dist.device)
        features, labels = collect_regions(data, cams, vpl_config.region_cam, vpl_config.region_threshold, dist)
        if not dist.is_main:
            return
        if features.shape[0] == 0:
            raise OvssError(f"no region embeddings in {dataset} {split}: no image has a present class")
        text = cams.foreground
        vision, stats = learn_prototypes(features.to(text.device), labels.to(text.device), text, vpl_config)
        metadata = {"clip_identity": clip_identity(clip_name, weights), "clip_model": clip_name,
                    "pretrained": weights, "dataset": dataset, "split": split, "images": len(data),
                    "image_labels": data.label_source, "class_names": list(prompt_names(dataset)),
                    "vpl": vpl_config.as_dict(), "clip_es": config.as_dict(), **stats}
        save_prototypes(out, vision, text, metadata)
        similarity = torch.nn.functional.cosine_similarity(vision, text, dim=-1)
        typer.echo(f"learnt {len(prompt_names(dataset))} prototypes from {stats['regions']} regions of {len(data)} images "
                   f"(loss {stats['initial_loss']:.4f} -> {stats['final_loss']:.4f}, mean cos to text "
                   f"{float(similarity.mean()):.3f}); wrote {out}")
    finally:
        shutdown_distributed()
