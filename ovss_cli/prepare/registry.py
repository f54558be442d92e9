"""What each `ovss prepare` dataset needs: the official archives, where they come from, where they go.

Checksums are the MD5s the hosts serve (the S3 ETag of the COCO zips, the values the VOC, SBD,
ADE and PASCAL-Context archives have had since release, as used by torchvision and others).
Where no checksum is published (`checksum=None`) ovss does not download the file at all: a
download over plain http could not be told from a tampered one, so it must come by hand (--from).
"""

from __future__ import annotations

from dataclasses import dataclass

from ovss_cli.errors import UsageError
from ovss_cli.prepare.download import Checksum
from ovss_cli.textutil import did_you_mean

UNPACK_FACTOR = 4
UNPACK_FLOOR = 8 * 10**9


@dataclass(frozen=True)
class Archive:
    name: str  # file name of the official download
    urls: tuple[str, ...]  # tried in order; empty: only available by hand (registration)
    checksum: Checksum | None  # None: no published checksum, so never downloaded (only --from)
    size: int  # bytes of the official archive, rounded up: the "fetch by hand" message and the unpack bound
    extract_to: str  # folder, relative to the data root, the archive is extracted into
    # Paths (relative to extract_to) the archive creates. When they all exist the archive is not
    # needed; an already-extracted copy of them in --from is hard-linked into place.
    contents: tuple[str, ...]
    # Paths (relative to the data root) that make the archive unnecessary when present.
    superseded_by: tuple[str, ...] = ()

    @property
    def approx_size(self) -> str:
        return f"{self.size / 1e9:.1f} GB" if self.size >= 1e9 else f"{self.size / 1e6:.0f} MB"

    @property
    def max_unpacked(self) -> int:
        """Bytes the archive may expand to: its contents are JPEG/PNG/MAT files that hardly compress, so
        a few times the archive size (at least 8 GB) is never reached by the official file, only by a bomb."""
        return max(UNPACK_FACTOR * self.size, UNPACK_FLOOR)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    homepage: str
    licence: str
    archives: tuple[Archive, ...]
    module: str  # ovss_cli.prepare.<module> holds convert(context)


def _md5(value: str) -> Checksum:
    return Checksum("md5", value)


COCO_ZIPS = "http://images.cocodataset.org/zips/"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            "coco-stuff", "COCO-Stuff 164k (171 classes)", "https://github.com/nightrome/cocostuff",
            "COCO images: Flickr terms of use; COCO and COCO-Stuff annotations: CC BY 4.0",
            (
                Archive("train2017.zip", (COCO_ZIPS + "train2017.zip",), _md5("cced6f7f71b7629ddf16f17bbcfab6b2"),
                        19_400_000_000, "coco-stuff/images", ("train2017",)),
                Archive("val2017.zip", (COCO_ZIPS + "val2017.zip",), _md5("442b8da7639aecaf257c1dceb8ba8c80"),
                        816_000_000, "coco-stuff/images", ("val2017",)),
                Archive("stuffthingmaps_trainval2017.zip",
                        ("http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
                         "stuffthingmaps_trainval2017.zip",),
                        None, 691_000_000, "coco-stuff/annotations", ("train2017", "val2017")),
            ),
            "coco_stuff",
        ),
        DatasetSpec(
            "ade20k", "ADE20K-150 (SceneParsing, ADEChallengeData2016)", "http://sceneparsing.csail.mit.edu",
            "ADE20K terms of use (non-commercial research and education); images from LabelMe/SUN",
            (
                Archive("ADEChallengeData2016.zip",
                        ("http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",),
                        _md5("7328b3957e407ddae1d3cbf487f149ef"), 924_000_000, ".",
                        ("ADEChallengeData2016/images", "ADEChallengeData2016/annotations")),
            ),
            "ade20k",
        ),
        DatasetSpec(
            "ade20k-full", "ADE20K full (847 classes, ADE20K_2021_17_01)",
            "https://groups.csail.mit.edu/vision/datasets/ADE20K/",
            "ADE20K terms of use (non-commercial research and education); download after registration",
            (
                # Only handed out after registering at the homepage: no public URL.
                Archive("ADE20K_2021_17_01.zip", (), None, 4_500_000_000, ".",
                        ("ADE20K_2021_17_01/images", "ADE20K_2021_17_01/index_ade20k.pkl")),
            ),
            "ade20k_full",
        ),
        DatasetSpec(
            "pascal-context", "PASCAL-Context (59 and 459 classes) on VOC 2010",
            "https://www.cs.stanford.edu/~roozbeh/pascal-context/",
            "VOC images: Flickr terms of use; PASCAL-Context annotations: for research use, see the homepage",
            (
                Archive("VOCtrainval_03-May-2010.tar",
                        ("http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",),
                        _md5("da459979d0c395079b5c75ee67908abb"), 1_400_000_000, ".", ("VOCdevkit/VOC2010/JPEGImages",)),
                Archive("trainval.tar.gz",
                        ("https://www.cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz",
                         "https://roozbehm.info/pascal-context/trainval.tar.gz"),
                        _md5("df034edb2c12aa7d33b42b20bb1796e3"), 32_000_000, "VOCdevkit/VOC2010", ("trainval", "labels.txt")),
            ),
            "pascal_context",
        ),
        DatasetSpec(
            "voc", "PASCAL VOC 2012 (+ SBD): VOC-20, VOC-20b, VOC-21 with SegmentationClassAug",
            "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
            "VOC images: Flickr terms of use; VOC annotations and SBD: for research use, see the homepages",
            (
                Archive("VOCtrainval_11-May-2012.tar",
                        ("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",),
                        _md5("6cd6e144f989b92b3379bac3b3de84fd"), 2_000_000_000, ".",
                        ("VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/SegmentationClass",
                         "VOCdevkit/VOC2012/ImageSets")),
                Archive("benchmark.tgz",
                        ("http://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
                         "benchmark.tgz",),
                        _md5("82b4d87ceb2ed10f6038a1cba92111cb"), 1_500_000_000, "SBD", ("benchmark_RELEASE",),
                        # SBD only serves to build SegmentationClassAug; an existing one (DeepLab's zip) will do.
                        superseded_by=("VOCdevkit/VOC2012/SegmentationClassAug",)),
            ),
            "voc",
        ),
        DatasetSpec(
            "coco-2014", "COCO 2014 (81 classes, WSSS)", "https://cocodataset.org",
            "COCO images: Flickr terms of use; COCO annotations: CC BY 4.0",
            (
                Archive("train2014.zip", (COCO_ZIPS + "train2014.zip",), _md5("0da8c0bd3d6becc4dcb32757491aca88"),
                        13_600_000_000, "coco2014/JPEGImages", ("train2014",)),
                Archive("val2014.zip", (COCO_ZIPS + "val2014.zip",), _md5("a3d79f5ed8d289b7a7554ce06a5782b3"),
                        6_700_000_000, "coco2014/JPEGImages", ("val2014",)),
                Archive("annotations_trainval2014.zip",
                        ("http://images.cocodataset.org/annotations/annotations_trainval2014.zip",),
                        _md5("0a379cfc70b0e71301e0f377548639bd"), 253_000_000, "coco2014", ("annotations",)),
            ),
            "coco2014",
        ),
    ]
}

# Official split sizes, keyed by the names the converters report.
OFFICIAL_COUNTS: dict[str, int] = {
    "coco-stuff train2017": 118287,
    "coco-stuff val2017": 5000,
    "ade150 validation": 2000,
    "ade847 validation": 2000,
    "pc59 val": 5104,
    "pc459 val": 5104,
    "SegmentationClassAug": 12031,
    "train_aug": 10582,
    "voc20 val": 1449,
    "voc20b val": 1449,
    "coco81 train2014": 82081,
    "coco81 val2014": 40137,
}


def get_dataset(name: str) -> DatasetSpec:
    """The spec of `name`, or a UsageError with the closest known name."""
    if name not in DATASETS:
        hint = did_you_mean(name, DATASETS, cutoff=0.4)
        raise UsageError(f"unknown dataset '{name}'{hint}; known: {', '.join(DATASETS)}")
    return DATASETS[name]

# Official image counts of the prepared benchmarks (ovss_cli.data.benchmarks names), for --verify.
BENCHMARK_COUNTS: dict[str, int] = {
    "coco-stuff": 118287,
    "coco-stuff-val": 5000,
    "ade150": 2000,
    "ade847": 2000,
    "pc59": 5104,
    "pc459": 5104,
    "voc20": 1449,
    "voc20b": 1449,
    "voc21": 1449,
    "voc21-train": 1464,
    "coco81": 40137,
}
