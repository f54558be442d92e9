"""Create open_clip models by name with weights from a tag, a local file or a hub folder, built as the weights were trained."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import warnings
from pathlib import Path

import huggingface_hub.constants as hub_constants
import open_clip
import torch
from open_clip.model import resize_pos_embed, set_model_preprocess_cfg
from open_clip.pretrained import download_pretrained, get_pretrained_cfg
from open_clip.transformer import QuickGELU

from ovss_cli.clip.norm import ImageNorm
from ovss_cli.clip.weights import NON_WEIGHTS, is_local_weights, read_clip_weights
from ovss_cli.errors import OvssError, UsageError
from ovss_cli.textutil import did_you_mean, first_line

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_ovss_configs() -> None:
    """Make ovss's own model configs (e.g. `ovss-tiny`) known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


def model_quick_gelu(name: str) -> bool:
    """The activation open_clip's config for `name` builds (the `-quickgelu` names: QuickGELU)."""

    register_ovss_configs()
    return bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))


def uses_quick_gelu(module) -> bool:
    """Whether the CLIP in `module` runs QuickGELU (x * sigmoid(1.702 x)) in its MLPs rather than GELU."""

    return any(isinstance(m, QuickGELU) for m in module.modules())


def activation_name(quick_gelu: bool) -> str:
    return "QuickGELU" if quick_gelu else "GELU"


def image_norm(clip_model) -> ImageNorm:
    """The pixel statistics and interpolation recorded on an open_clip model (`visual.preprocess_cfg`)."""
    return ImageNorm.from_dict(getattr(clip_model.visual, "preprocess_cfg", None))


def check_activation(clip_model, recorded: bool | None, source: str) -> None:
    """Refuse weights trained with one activation in a model built with the other."""
    if recorded is not None and bool(recorded) != uses_quick_gelu(clip_model):
        raise OvssError(f"{source} was trained with {activation_name(bool(recorded))} CLIP but the model it is loaded "
                        f"into runs {activation_name(not recorded)}; build it with clip.quick_gelu={str(bool(recorded)).lower()} "
                        "(or clip.quick_gelu=auto)")


def create_clip(name: str, pretrained: str | None = None, random_init_seed: int = 0,
                quick_gelu: bool | str = "auto", norm: dict | None = None, load_weights: bool = True):
    """Build open_clip model `name` with weights `pretrained` (a tag, a local file or hub folder, or None for random init).

    The MLP activation is the one the weights were trained with (`quick_gelu='auto'`): the tag's
    open_clip config, the module types of a TorchScript archive (OpenAI's: QuickGELU), a hub
    folder's open_clip_config.json; else the model config's. An explicit True/False builds that
    one, and is refused where the loaded weights record the other. Mean, std and interpolation come the
    same way (`visual.preprocess_cfg`), `norm` entries that are not None override them.
    With load_weights=False the model is built as the weights would make it, with random weights
    (a checkpoint will provide them); a tag then needs no download.
    A tag that is not in the local cache fails at once (no network retries) with a message
    saying how to pass a local file instead.
    """
    _check_model_name(name)
    if quick_gelu not in ("auto", True, False):
        raise UsageError(f"clip.quick_gelu must be auto, true or false, got {quick_gelu!r}")
    overrides = {key: value for key, value in (norm or {}).items() if value is not None}
    weights, recorded, recorded_by, fallback, preprocess = None, None, "", model_quick_gelu(name), {}
    if pretrained and is_local_weights(pretrained):
        if load_weights or quick_gelu == "auto" or len(overrides) < 3:
            weights = read_clip_weights(Path(pretrained))
            recorded, recorded_by = weights.quick_gelu, f"{pretrained} ({weights.form})"
            preprocess = weights.preprocess or {}
            if weights.form == "torchscript":
                fallback = True  # OpenAI's archives, the only published TorchScript CLIPs, use QuickGELU
    elif pretrained:
        tag_cfg = _tag_config(name, pretrained)
        recorded, recorded_by = bool(tag_cfg.get("quick_gelu", False)), f"open_clip's config of {name}/{pretrained}"
        preprocess = tag_cfg
        if load_weights:
            weights = read_clip_weights(_download(name, pretrained, tag_cfg))
    if quick_gelu == "auto":
        quick_gelu = recorded if recorded is not None else fallback
    elif load_weights and recorded is not None and recorded != quick_gelu:
        raise UsageError(f"clip.quick_gelu={str(quick_gelu).lower()} contradicts {recorded_by}, trained with "
                         f"{activation_name(recorded)}; set clip.quick_gelu=auto")
    model = _build(name, bool(quick_gelu), random_init_seed)
    if weights is not None and load_weights:
        load_clip_state(model, weights.state, str(pretrained), name)

    chosen = {key: preprocess[key] for key in ("mean", "std", "interpolation") if key in preprocess}
    final = {**model.visual.preprocess_cfg, **chosen, **overrides}
    ImageNorm.from_dict(final)  # a bad value fails here, with one line
    set_model_preprocess_cfg(model, final)
    return model


def _build(name: str, quick_gelu: bool, seed: int):
    """The architecture with random weights, seeded so that every rank (and every run) builds the same model."""

    with open_clip_warnings_as_errors(f"building {name}"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model(name, pretrained=None, quick_gelu=quick_gelu)


def load_clip_state(model, state: dict, source: str, name: str) -> None:
    """Load a CLIP state dict strictly: a missing or extra tensor, another text context or shape is one clear error.

    open_clip's own loader only warns on some of these; ovss reads and checks the weights itself.
    """

    expected = model.state_dict()
    state = {key: value for key, value in state.items() if key in expected or key not in NON_WEIGHTS}
    if "logit_scale" in state and state["logit_scale"].ndim != expected["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(expected["logit_scale"].shape)
    text_positions = state.get("positional_embedding")
    if text_positions is not None and text_positions.shape[0] != expected["positional_embedding"].shape[0]:
        raise OvssError(f"{source} has a text context of {text_positions.shape[0]} tokens, model {name} "
                        f"{expected['positional_embedding'].shape[0]}; pick the open_clip model the weights were trained as")
    resize_pos_embed(state, model)  # weights fine-tuned at another image size (open_clip does the same)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or wrong:
        parts = [f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)) if keys]
        raise OvssError(f"CLIP weights {source} do not fit model {name}: tensors {'; '.join(parts)}; "
                        "pick the open_clip model name the weights were trained as")
    model.load_state_dict(state, strict=True)


def _tag_config(name: str, tag: str) -> dict:
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in tags:
        raise UsageError(
            f"unknown pretrained tag '{tag}' for {name}; known tags: {', '.join(tags) or 'none'}, "
            "or pass a local .pt/.safetensors file or hub folder"
        )
    return get_pretrained_cfg(name, tag)


# How to pass a weights file: an option of evaluate/predict/WSSS, a recipe key of train ({name} is filled in).
GENERIC_WEIGHTS_HINT = "--pretrained /path/to/{name}.pt (in a recipe: clip.pretrained=/path/to/{name}.pt)"
RECIPE_WEIGHTS_HINT = "clip.pretrained=/path/to/{name}.pt"


def _check_model_name(name: str) -> None:
    register_ovss_configs()
    if name not in open_clip.list_models():
        raise UsageError(f"unknown CLIP model '{name}'{did_you_mean(name, open_clip.list_models())}; "
                         "see open_clip.list_models()")


def _cached(tag_cfg: dict) -> Path | None:
    """The cached file of a pretrained tag, found without network (None when it is not there)."""

    try:
        with _hub_offline(True), _quiet_root_logger(logging.CRITICAL):
            found = download_pretrained(tag_cfg)
    except Exception:
        return None
    return Path(found) if found else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") or not _hub_reachable()


def _offline_error(name: str, tag: str, hint: str) -> OvssError:
    return OvssError(f"CLIP weights '{name}/{tag}' are not in the local cache and cannot be downloaded "
                     f"(offline); download them once elsewhere and pass the file: {hint.format(name=name)}")


def check_clip_weights(name: str, pretrained: str | None, hint: str = GENERIC_WEIGHTS_HINT) -> None:
    """Fail before any model is built or process launched when `name`/`pretrained` cannot be had: an
    unknown model or tag, a missing file, or a tag neither cached nor downloadable. `hint` says how
    the command at hand takes a file instead."""
    _check_model_name(name)
    if not pretrained:
        return
    if is_local_weights(pretrained):
        if not Path(pretrained).expanduser().exists():
            raise OvssError(f"CLIP weights file not found: {Path(pretrained).expanduser()}")
        return
    tag_cfg = _tag_config(name, pretrained)
    if tag_cfg.get("hf_hub") and _cached(tag_cfg) is None and _offline():  # a plain URL: only a download can tell
        raise _offline_error(name, pretrained, hint)


def _download(name: str, tag: str, tag_cfg: dict) -> Path:
    """The local file of a pretrained tag: the cache first (no network, no retries), else a download."""

    cached = _cached(tag_cfg)
    if cached is not None:
        return cached
    if _offline():
        raise _offline_error(name, tag, GENERIC_WEIGHTS_HINT)
    try:
        return Path(download_pretrained(tag_cfg))
    except Exception as err:
        raise OvssError(
            f"downloading CLIP weights '{name}/{tag}' failed ({first_line(err)}); "
            f"pass a local file instead: {GENERIC_WEIGHTS_HINT.format(name=name)}"
        ) from err


# open_clip logs this whenever it builds a model without loading weights itself, which ovss always does.
_EXPECTED_LOGS = ("No pretrained weights loaded",)


class _TakeWarnings(logging.Filter):
    """Takes warning records off the root logger (where open_clip logs) and keeps their messages."""

    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not _from_open_clip(record.pathname):
            return True
        if not record.getMessage().startswith(_EXPECTED_LOGS):
            self.messages.append(record.getMessage())
        return False


def _from_open_clip(filename: str) -> bool:
    return f"{os.sep}open_clip{os.sep}" in filename


@contextlib.contextmanager
def open_clip_warnings_as_errors(what: str):
    """Turn open_clip's warnings (warnings.warn) and warning logs (logging.warning on the root logger) into one OvssError.

    open_clip reports a config/weights mismatch (activation, context length, keys) only as a warning;
    here such a message stops the run instead of scrolling by.
    """
    root = logging.getLogger()
    taken, previous = _TakeWarnings(), root.level
    root.addFilter(taken)
    if previous == logging.NOTSET or previous > logging.WARNING:
        root.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        root.removeFilter(taken)
        root.setLevel(previous)
    for w in caught:
        if not _from_open_clip(w.filename):  # other libraries' warnings go on as usual
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    messages = taken.messages + [str(w.message) for w in caught if _from_open_clip(w.filename)]
    if messages:
        raise OvssError(f"open_clip warned while {what}: {first_line(messages[0])}; "
                        "make the model name, clip.quick_gelu and the weights agree")


@contextlib.contextmanager
def _quiet_root_logger(level: int = logging.ERROR):
    root = logging.getLogger()
    previous = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(previous)


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Temporarily switch huggingface_hub's offline mode (it reads the flag at call time)."""

    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = offline
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """One quick TCP connect, so an offline machine fails in seconds instead of minutes of retries."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
