"""CLIP-ES's prompt: one template, synonym-joined class names, and background words that compete with the classes.

The names are CLIP-ES's `clip_text.py` prompt names (typos included, e.g. 'sknowboard', so that
the text embeddings match the published pseudo-labels); the index order is the dataset's
(VOC 1..20, COCO 1..80 in category-id order).
"""

from __future__ import annotations

CLIP_ES_TEMPLATE = "a clean origami {}."

VOC_PROMPT_NAMES = (
    "aeroplane", "bicycle", "bird avian", "boat", "bottle", "bus", "car", "cat", "chair seat", "cow",
    "diningtable", "dog", "horse", "motorbike", "person with clothes,people,human", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor screen",
)

COCO_PROMPT_NAMES = (
    "person with clothes,people,human", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird avian", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack,bag", "umbrella,parasol", "handbag,purse",
    "necktie", "suitcase", "frisbee", "skis", "sknowboard", "sports ball", "kite", "baseball bat", "glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "dessertspoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair seat", "sofa", "pottedplant", "bed", "diningtable", "toilet", "tvmonitor screen", "laptop", "mouse",
    "remote control", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hairdrier,blowdrier", "toothbrush",
)

VOC_BACKGROUND_WORDS = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley",
    "bridge", "sign",
)

# COCO has keyboards and signs as objects, so those two words cannot stand for background there.
COCO_BACKGROUND_WORDS = tuple(word for word in VOC_BACKGROUND_WORDS if word not in ("keyboard", "sign"))


def toy_background_words(class_names: tuple[str, ...]) -> tuple[str, ...]:
    """The VOC background words minus the toy benchmark's own (stuff) classes."""
    return tuple(word for word in VOC_BACKGROUND_WORDS if word not in class_names)


def prompt_names(dataset: str) -> tuple[str, ...]:
    """The K foreground classes of label set `dataset` ('voc', 'coco', 'toy') as CLIP-ES prompts them."""
    if dataset == "toy":
        from ovss_cli.data.toy import TOY_CLASSES

        return tuple(TOY_CLASSES)
    return {"voc": VOC_PROMPT_NAMES, "coco": COCO_PROMPT_NAMES}[dataset]


def background_words(dataset: str) -> tuple[str, ...]:
    """The background words that compete with `dataset`'s classes."""
    if dataset == "toy":
        return toy_background_words(prompt_names("toy"))
    return {"voc": VOC_BACKGROUND_WORDS, "coco": COCO_BACKGROUND_WORDS}[dataset]
