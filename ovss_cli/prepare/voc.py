"""PASCAL VOC 2012 with SBD: SegmentationClassAug, train_aug, and the VOC-20 / VOC-20b benchmarks.

SegmentationClassAug (the DeepLab convention): every SBD `cls/<id>.mat` (GTcls.Segmentation,
values 0..20) as a grayscale PNG, with VOC's own SegmentationClass (palette PNG, 255 on object
borders) taking precedence for the 2,913 ids VOC annotates. train_aug = (SBD train + SBD val +
VOC train) - VOC val = 10,582 ids.

VOC-20 and VOC-20b follow CAT-Seg's prepare_voc.py on the val ids of SegmentationClassAug:
VOC-20: classes 1..20 -> 0..19, background and 255 -> 255; a map left with nothing but 255 is
not written. VOC-20b: the same but background -> 20, so that evaluating with the 59-name voc20b
vocabulary (where every prediction >= 20 counts as background) works.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from ovss_cli.data.io import read_split_ids, write_label
from ovss_cli.errors import OvssError
from ovss_cli.fileio import write_text
from ovss_cli.prepare.common import EMPTY, WRITTEN, Job, SplitCount, list_files, read_indexed_png, run_jobs
from ovss_cli.prepare.context import Context
from ovss_cli.prepare.registry import OFFICIAL_COUNTS

IGNORE = 255
VOC20_BACKGROUND = 20


def _lut(background: int) -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[1:21] = np.arange(20)
    lut[0] = background
    return lut


VOC20_LUT = _lut(IGNORE)
VOC20B_LUT = _lut(VOC20_BACKGROUND)


def read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise OvssError(f"{path} not found; re-extract the archive that provides it")
    return read_split_ids(path)


def load_sbd_segmentation(path: Path) -> np.ndarray:
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
        return np.asarray(mat["GTcls"].Segmentation, dtype=np.uint8)
    except (KeyError, AttributeError, ValueError, OSError) as err:
        raise OvssError(f"cannot read GTcls.Segmentation from {path} ({err}); re-extract benchmark.tgz") from None


def convert_sbd(source: Path, target: Path) -> str:
    write_label(target, load_sbd_segmentation(source))
    return WRITTEN


def convert_voc_png(source: Path, target: Path) -> str:
    write_label(target, read_indexed_png(source))
    return WRITTEN


def convert_val(source: Path, voc20_out: Path, voc20b_out: Path) -> str:
    label = read_indexed_png(source)
    write_label(voc20b_out, VOC20B_LUT[label])
    voc20 = VOC20_LUT[label]
    if (voc20 == IGNORE).all():  # CAT-Seg leaves such images out of VOC-20
        return EMPTY
    write_label(voc20_out, voc20)
    return WRITTEN


def train_aug_ids(sbd_ids: list[str], voc_train: list[str], voc_val: list[str]) -> list[str]:
    return sorted((set(sbd_ids) | set(voc_train)) - set(voc_val))


def build_segmentation_class_aug(context: Context, voc: Path, sbd: Path, aug: Path) -> SplitCount:
    voc_pngs = {path.stem: path for path in list_files(voc / "SegmentationClass", ".png")}
    sbd_mats = {path.stem: path for path in list_files(sbd / "cls", ".mat")}
    from_voc = [Job((aug / f"{i}.png",), (path, aug / f"{i}.png")) for i, path in sorted(voc_pngs.items())]
    from_sbd = [Job((aug / f"{i}.png",), (path, aug / f"{i}.png"))
                for i, path in sorted(sbd_mats.items()) if i not in voc_pngs]
    done = run_jobs(convert_voc_png, from_voc, context.workers, "SegmentationClassAug from VOC", context.progress)
    done += run_jobs(convert_sbd, from_sbd, context.workers, "SegmentationClassAug from SBD", context.progress)
    return SplitCount.from_counts("SegmentationClassAug", len(from_voc) + len(from_sbd), done,
                                  OFFICIAL_COUNTS["SegmentationClassAug"])


def convert(context: Context) -> list[SplitCount]:
    voc = context.root / "VOCdevkit" / "VOC2012"
    sbd = context.root / "SBD" / "benchmark_RELEASE" / "dataset"
    aug = voc / "SegmentationClassAug"
    splits = voc / "ImageSets" / "Segmentation"
    voc_train, voc_val = read_ids(splits / "train.txt"), read_ids(splits / "val.txt")
    if sbd.is_dir():
        counts = [build_segmentation_class_aug(context, voc, sbd, aug)]
        sbd_ids = read_ids(sbd / "train.txt") + read_ids(sbd / "val.txt")
    else:  # an existing SegmentationClassAug (DeepLab's zip) stands in for SBD
        counts = []
        sbd_ids = [path.stem for path in list_files(aug, ".png")]
    train_aug = [i for i in train_aug_ids(sbd_ids, voc_train, voc_val) if (aug / f"{i}.png").exists()]
    write_text(splits / "train_aug.txt", "".join(f"{i}\n" for i in train_aug))
    counts.append(SplitCount("train_aug", len(train_aug), len(train_aug), OFFICIAL_COUNTS["train_aug"]))

    missing = [i for i in voc_val if not (aug / f"{i}.png").exists()]
    if missing:
        raise OvssError(f"{len(missing)} VOC val ids (e.g. {missing[0]}) have no label in SegmentationClass; "
                        "re-extract VOCtrainval_11-May-2012.tar")
    out20, out20b = voc / "annotations_detectron2" / "val", voc / "annotations_detectron2_bg" / "val"
    jobs = [Job((out20 / f"{i}.png", out20b / f"{i}.png"), (aug / f"{i}.png", out20 / f"{i}.png", out20b / f"{i}.png"))
            for i in voc_val]
    done = run_jobs(convert_val, jobs, context.workers, "VOC-20 / VOC-20b val", context.progress)
    counts += [SplitCount.from_counts(name, len(jobs), done, OFFICIAL_COUNTS[name]) for name in ("voc20 val", "voc20b val")]
    return counts
