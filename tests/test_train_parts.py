"""Pieces of training checked against hand-computed values: schedule, batch split, sampler, augmentation, groups."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ovss_cli.data.config import DataConfig
from ovss_cli.data.train_set import TrainSegmentationSet, augment, crop
from ovss_cli.engine.config import OptimConfig
from ovss_cli.engine.loader import EpochSampler
from ovss_cli.engine.trainer import lr_factor, micro_batch_size
from ovss_cli.errors import OvssError, UsageError
from tests.helpers import QUICKSTART


def test_cosine_schedule_with_linear_warmup():
    assert lr_factor(0, 100, "cosine", 0, 0.001) == 1.0
    assert lr_factor(50, 100, "cosine", 0, 0.001) == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine", 0, 0.001) == pytest.approx(0.0)
    assert lr_factor(25, 100, "cosine", 0, 0.001) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    # warm-up: from warmup_factor to 1 linearly, times the cosine decay
    assert lr_factor(0, 100, "cosine", 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(5, 100, "constant", 10, 0.1) == pytest.approx(0.55)
    assert lr_factor(10, 100, "constant", 10, 0.1) == 1.0


def test_global_batch_splits_over_processes_and_accumulation():
    assert micro_batch_size(16, 2, 2) == 4
    with pytest.raises(UsageError, match="not divisible"):
        micro_batch_size(4, 3, 1)


def test_ranks_share_one_permutation_like_a_single_process_with_the_global_batch():
    single = list(EpochSampler(10, 0, 1, seed=3, batch_size=4))
    ranks = [list(EpochSampler(10, r, 2, seed=3, batch_size=2)) for r in (0, 1)]
    assert len(single) == 8 and all(len(r) == 4 for r in ranks)  # 10 images: 2 whole global batches of 4
    for step in range(2):
        global_batch = {i for i, _ in single[4 * step : 4 * step + 4]}
        assert global_batch == {i for r in ranks for i, _ in r[2 * step : 2 * step + 2]}
    assert len({i for i, _ in single}) == 8
    sampler = EpochSampler(10, 0, 1, seed=3, batch_size=4)
    sampler.set_epoch(0, skip_batches=1)  # resuming mid-epoch continues where the run stopped
    assert list(sampler) == single[4:]
    sampler.set_epoch(1)
    assert [i for i, _ in sampler] != [i for i, _ in single] and {e for _, e in sampler} == {1}


def colour_coded(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel spells its label (class = red // 40), in vertical stripes of 5 classes."""
    label = np.repeat((np.arange(width) * 5 // width)[None], height, axis=0).astype(np.int64)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = label * 40 + 20
    image[..., 1] = np.arange(height)[:, None] % 256
    return image, label


def test_augmentation_keeps_pixels_and_labels_aligned():
    image, label = colour_coded(60, 90)
    cfg = DataConfig(benchmark="toy", crop_size=32, color_jitter=False)
    flips = set()
    for seed in range(12):
        out_image, out_label = augment(image, label, cfg, np.random.default_rng(seed))
        assert out_image.shape == (32, 32, 3) and out_label.shape == (32, 32)
        # nearest-resized labels vs bilinear pixels: compare away from stripe borders
        interior = np.abs(out_image[..., 0].astype(int) - (out_label * 40 + 20)) <= 1
        assert interior.mean() > 0.8
        flips.add(bool(out_label[0, 0] > out_label[0, -1]))
    assert flips == {True, False}  # horizontal flips happen, and move labels with pixels


def test_crop_retries_while_one_class_dominates():
    label = np.zeros((100, 100), dtype=np.int64)
    label[:, 50:] = 1
    image = np.zeros((100, 100, 3), np.uint8)

    def balanced_share(max_ratio: float) -> float:
        shares = []
        for seed in range(200):
            counts = np.bincount(crop(image, label, 20, np.random.default_rng(seed), max_ratio)[1].ravel(), minlength=2)
            shares.append(counts.max() / counts.sum() < 0.75)
        return float(np.mean(shares))

    # one 20-px crop in 100 px is balanced with probability 9/81; ten tries make it 1 - (72/81)^10 = 0.69
    assert balanced_share(1.0) == pytest.approx(9 / 81, abs=0.06)
    assert balanced_share(0.75) == pytest.approx(1 - (72 / 81) ** 10, abs=0.08)


def test_training_samples_depend_on_seed_epoch_and_index_only():
    cfg = DataConfig(benchmark="toy", crop_size=48)
    dataset = TrainSegmentationSet(cfg, seed=5)
    first, again = dataset[(3, 0)], TrainSegmentationSet(cfg, seed=5)[(3, 0)]
    assert first["image"].shape == (3, 48, 48) and first["label"].shape == (48, 48)
    assert np.array_equal(first["image"], again["image"]) and np.array_equal(first["label"], again["label"])
    assert not np.array_equal(first["image"], dataset[(3, 1)]["image"])


def test_training_labels_outside_the_class_list_are_refused_when_read(tmp_path):
    from ovss_cli.data.io import write_label, write_png

    image_dir = tmp_path / "coco-stuff/images/train2017"
    label_dir = tmp_path / "coco-stuff/annotations_detectron2/train2017"
    for name, label in (("good", [[0, 170], [255, 3]]), ("bad", [[0, 171], [200, 255]])):
        write_label(label_dir / f"{name}.png", np.array(label))
        write_png(image_dir / f"{name}.jpg", np.zeros((2, 2, 3), np.uint8))  # decoders go by content, not suffix
    dataset = TrainSegmentationSet(DataConfig(benchmark="coco-stuff"), seed=0, root=tmp_path)
    assert [label.name for _, label in dataset.items] == ["bad.png", "good.png"]
    assert dataset.load(1)[1].tolist() == [[0, 170], [255, 3]]  # 171 classes: 0..170 and 255 are fine
    with pytest.raises(OvssError, match=r"bad\.png has values \(171, 200\) outside 0\.\.170"):
        dataset.load(0)


def test_param_groups_scale_clip_lr_and_exempt_norms_and_embeddings():
    from ovss_cli.methods.registry import build_model
    from ovss_cli.recipes import load_recipe

    recipe = load_recipe(QUICKSTART, ["decoder.pad_len=256", "finetune.mode=full"])
    model = build_model(recipe, pretrained=False)
    optim = OptimConfig(lr=1e-3, clip_lr_multiplier=0.01, weight_decay=0.1, weight_decay_bias=0.0)
    groups = {g["name"]: g for g in model.param_groups(optim)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert sum(len(g["params"]) for g in groups.values()) == sum(1 for p in model.parameters() if p.requires_grad)
    assert groups["clip/weight"]["lr"] == pytest.approx(1e-5) and groups["decoder/weight"]["lr"] == 1e-3
    assert groups["clip/weight"]["weight_decay"] == 0.1
    embedding = {names[id(p)] for p in groups["clip/embedding"]["params"]}
    assert {"dense.clip.token_embedding.weight", "dense.clip.positional_embedding",
            "dense.clip.visual.class_embedding"} <= embedding
    assert any("padding_token" in names[id(p)] for p in groups["decoder/embedding"]["params"])
    assert all(".ln_" in names[id(p)] or "ln_" in names[id(p)] for p in groups["clip/norm"]["params"])
    for kind in ("norm", "embedding", "bias"):
        assert groups[f"clip/{kind}"]["weight_decay"] == 0.0
    assert torch.is_tensor(groups["decoder/bias"]["params"][0])


def test_activation_checkpointing_wraps_every_block_and_keeps_gradients():
    from ovss_cli.methods.registry import build_model
    from ovss_cli.recipes import load_recipe
    from ovss_cli.runtime.seeding import seed_everything

    recipe = load_recipe(QUICKSTART, ["clip.image_size=32", "data.crop_size=32", "decoder.window_size=2"])
    batch = {"image": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), "label": torch.randint(0, 5, (2, 32, 32))}
    grads = []
    for checkpointed in (False, True):
        seed_everything(0)
        model = build_model(recipe, pretrained=False)
        if checkpointed:
            model.enable_activation_checkpointing()
            blocks = [*model.dense.clip.visual.transformer.resblocks, *model.dense.clip.transformer.resblocks]
            assert model.decoder.use_checkpoint and all("forward" in b.__dict__ for b in blocks)
        model(batch)["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_compiled_step_gives_the_eager_losses():
    """train.compile: the Trainer's step through torch.compile matches eager over two optimizer steps."""
    import itertools
    import tempfile

    from ovss_cli.engine.trainer import Trainer, as_floats
    from ovss_cli.methods.registry import build_model
    from ovss_cli.recipes import load_recipe
    from ovss_cli.runtime.distributed import DistInfo
    from ovss_cli.runtime.seeding import seed_everything

    batch = {"image": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)),
             "label": torch.randint(0, 5, (2, 32, 32), generator=torch.Generator().manual_seed(2))}
    losses = []
    for compiled in (False, True):
        recipe = load_recipe(QUICKSTART, ["clip.image_size=32", "data.crop_size=32", "decoder.window_size=2",
                                          "data.batch_size=2", f"train.compile={str(compiled).lower()}"])
        seed_everything(0)
        model = build_model(recipe, pretrained=False)
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(recipe, model, DistInfo(device="cpu"), Path(run_dir))
        trainer.build_optimizer()
        assert (trainer.step_model is not trainer.model) == compiled
        trainer.model.train()
        batches = itertools.repeat(batch)
        losses.append([as_floats(trainer.train_step(trainer.step_model, batches))["loss"] for _ in range(2)])
    assert losses[0][0] != losses[0][1]  # the first update changed the model
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_training_text_reads_no_prompt_lengths_from_the_device(monkeypatch):
    """The trained text encoder's length runs are read once from the host tokens, not every step (a sync on GPU)."""
    from ovss_cli.clip import dense as dense_module
    from ovss_cli.methods.registry import build_model
    from ovss_cli.recipes import load_recipe

    model = build_model(load_recipe(QUICKSTART, ["finetune.mode=attention"]), pretrained=False)
    assert model.text_trainable
    full = model.dense.class_text_embeddings(model.train_tokens, len(model.train_classes))  # measures the runs
    assert model.train_text_runs == dense_module.prompt_runs(model.train_tokens)

    def no_device_read(token_ids):
        raise AssertionError("the training step measured the prompt lengths")

    monkeypatch.setattr(dense_module, "prompt_runs", no_device_read)
    assert torch.equal(model._training_text(), full)
