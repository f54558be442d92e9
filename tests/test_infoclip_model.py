"""InfoCLIP on a tiny random CLIP: one training step, a frozen teacher, plain CAT-Seg inference."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ovss_cli.config import from_dict
from ovss_cli.engine.config import OptimConfig
from ovss_cli.errors import OvssError, UsageError
from ovss_cli.losses.matrix_entropy import gram, mi_distillation_loss
from ovss_cli.methods.catseg import CATSegModel, build_catseg
from ovss_cli.methods.infoclip import InfoCLIPModel, build_infoclip, class_embeddings, patch_embeddings
from ovss_cli.methods.infoclip_config import InfoClipConfig
from ovss_cli.recipes import recipe_from_dict

TINY_RECIPE = {
    "method": "catseg",
    "clip": {"name": "ovss-tiny", "pretrained": "", "image_size": 64},
    "finetune": {"mode": "attention"},
    "decoder": {"hidden_dim": 32, "num_layers": 1, "heads": 2, "window_size": 4, "text_guidance_dim": 32,
                "appearance_guidance_dim": 32, "decoder_dims": [32, 16], "decoder_guidance_dims": [32, 16],
                "decoder_guidance_proj_dims": [16, 8], "guidance_layers": [0, 1], "pad_len": 0},
    "data": {"benchmark": "toy", "crop_size": 64, "batch_size": 2, "workers": 0},
    "train": {"device": "cpu", "precision": "fp32"},
}


def tiny_recipe(batch_size: int = 2, **infoclip):
    """The tiny CAT-Seg recipe plus an `infoclip:` section (works with or without it in the Recipe schema)."""
    base = recipe_from_dict({**TINY_RECIPE, "data": {**TINY_RECIPE["data"], "batch_size": batch_size}})
    sections = {name: getattr(base, name) for name in base.__dataclass_fields__}
    sections["infoclip"] = from_dict(InfoClipConfig, infoclip, "infoclip")
    return SimpleNamespace(**sections)


def tiny_batch(batch_size: int = 2, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (batch_size, 3, 64, 64), generator=generator, dtype=torch.uint8),
            "label": torch.randint(0, 5, (batch_size, 64, 64), generator=generator)}


def build(seed: int = 0, **kwargs) -> InfoCLIPModel:
    torch.manual_seed(seed)
    return build_infoclip(tiny_recipe(**kwargs))


def test_one_training_step_trains_the_student_and_lpam_but_never_the_teacher():
    model = build().train()
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(model.param_groups(OptimConfig(lr=1e-2, clip_lr_multiplier=1.0)))

    losses = model(tiny_batch())
    assert set(losses) == {"loss", "loss_task", "loss_compression", "loss_distill"}
    assert all(torch.isfinite(v) for v in losses.values())
    expected = losses["loss_task"] + losses["loss_compression"] + losses["loss_distill"]  # λ1 = λ2 = 1
    torch.testing.assert_close(losses["loss"].detach(), expected)
    assert -1.0 - 1e-5 <= float(losses["loss_compression"]) <= 1e-5  # S(R) <= S(V, R) <= log2 2
    losses["loss"].backward()
    optimizer.step()

    assert not model.teacher.training and all(not p.requires_grad for p in model.teacher.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())
    for key, value in model.teacher.state_dict().items():
        torch.testing.assert_close(value, teacher_before[key], rtol=0, atol=0)
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, student_before[n])}
    assert {n for n in student_before if n.startswith("lpam.")} <= changed
    assert any(n.startswith("dense.") for n in changed) and any(n.startswith("decoder.") for n in changed)


def test_student_and_teacher_see_the_same_crop_through_the_same_encoder():
    # before any update the fine-tuned CLIP equals the pretrained one: R^S = R^T, so L_d = -I(R^T; R^T)
    model = build().train()
    batch = tiny_batch()
    patches, text = model.teacher_features(model.image_norm.normalize(batch["image"].float()))
    with model.finetune.scope():
        student = model.dense.encode_image_dense(model._clip_input(model.image_norm.normalize(batch["image"].float()))).tokens
        student_text = model._training_text()
    torch.testing.assert_close(patch_embeddings(student), patches)
    torch.testing.assert_close(class_embeddings(student_text), text)
    relation = model.lpam(patches, text)
    expected = mi_distillation_loss(gram(relation), gram(relation))
    torch.testing.assert_close(model(batch)["loss_distill"], expected.detach())


def test_teacher_stays_in_eval_mode_and_lpam_trains_at_the_decoder_lr():
    model = build()
    model.train()
    assert model.training and model.lpam.training and not model.teacher.training
    optim = OptimConfig(lr=2e-4, clip_lr_multiplier=0.01)
    groups = model.param_groups(optim)
    lpam = {id(p) for p in model.lpam.parameters()}
    lpam_groups = [g for g in groups if lpam & {id(p) for p in g["params"]}]
    assert lpam_groups and all(g["lr"] == 2e-4 for g in lpam_groups)
    assert sum(len(lpam & {id(p) for p in g["params"]}) for g in lpam_groups) == 8  # 2 LayerNorms + 2 Linears
    teacher = {id(p) for p in model.teacher.parameters()}
    assert not any(teacher & {id(p) for p in g["params"]} for g in groups)


def test_checkpoints_drop_the_teacher_and_inference_is_plain_catseg():
    model = build()
    state = model.state_dict()
    assert not any(key.startswith("teacher.") for key in state)
    lpam_keys = {k for k in state if k.startswith("lpam.")}
    assert sum(state[k].numel() for k in lpam_keys) == 2 * 32**2 + 6 * 32

    # the model a checkpoint is loaded into for inference has no teacher and loads strictly
    torch.manual_seed(1)
    inference = build_infoclip(tiny_recipe(), pretrained=False)
    assert inference.teacher is None
    inference.load_state_dict(state, strict=True)
    # a training model (with its teacher) resumes from the same file strictly; other missing keys still fail
    resumed = build(seed=2)
    resumed.load_state_dict(state, strict=True)
    with pytest.raises(RuntimeError, match="lpam.key.bias"):
        resumed.load_state_dict({k: v for k, v in state.items() if k != "lpam.key.bias"}, strict=True)

    # without lpam.* the weights are exactly a CAT-Seg checkpoint, and the scores are CAT-Seg's
    recipe = tiny_recipe()
    catseg = build_catseg(recipe, pretrained=False)
    assert isinstance(catseg, CATSegModel)
    catseg.load_state_dict({k: v for k, v in state.items() if k not in lpam_keys}, strict=True)
    images = torch.randn(1, 3, 64, 64)
    for segmenter in (inference, catseg):
        segmenter.eval()
        segmenter.set_vocabulary(["sky", "grass", "sand"])
    torch.testing.assert_close(inference.scores(images), catseg.scores(images))
    with pytest.raises(OvssError, match="pretrained teacher"):
        inference.train()(tiny_batch())


@pytest.mark.parametrize("axis", ["patch", "class"])
def test_per_image_gram_axes_train_with_one_image(axis):
    model = build(batch_size=1, gram_axis=axis).train()
    losses = model(tiny_batch(batch_size=1))
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.lpam.parameters())


def test_batch_axis_refuses_one_image_per_micro_step():
    with pytest.raises(UsageError, match="at least 2 images per micro-step"):
        build(batch_size=1)


def test_teacher_detach_keeps_the_distillation_loss_off_the_teacher_branch():
    # with only L_d and a detached teacher map, LPAM learns from the student branch alone; without detaching
    # the teacher branch adds to LPAM's gradient
    batch = tiny_batch()
    grads = {}
    for detach in (True, False):
        model = build(lambda_compression=0.0, teacher_detach=detach).train()
        model.decoder.requires_grad_(False)
        losses = model(batch)
        (losses["loss"] - losses["loss_task"]).backward()
        grads[detach] = model.lpam.key.weight.grad.clone()
    assert not torch.allclose(grads[True], grads[False])


def test_config_validates():
    with pytest.raises(UsageError, match="gram_axis"):
        from_dict(InfoClipConfig, {"gram_axis": "pixels"}, "infoclip")
    with pytest.raises(UsageError, match="alpha"):
        from_dict(InfoClipConfig, {"alpha": 0}, "infoclip")
    with pytest.raises(UsageError, match="lambda"):
        from_dict(InfoClipConfig, {"lambda_distill": -1}, "infoclip")
    with pytest.raises(UsageError, match="method catseg"):
        from_dict(InfoClipConfig, {"lambda_distill": 0, "lambda_compression": 0}, "infoclip")
