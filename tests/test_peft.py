"""ovss_cli.peft on a tiny random CLIP: identity at init, merging, gradients, H-CLIP properties."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.nn.utils import parametrize

from ovss_cli.config import from_dict
from ovss_cli.errors import UsageError
from ovss_cli.peft import FinetuneConfig, apply_finetune
from ovss_cli.peft.blockdiag import cayley
from ovss_cli.peft.hclip import HClipTransforms

pytestmark = pytest.mark.usefixtures("single_thread")


IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
TOKENS = torch.randint(1, 1000, (2, 77), generator=torch.Generator().manual_seed(2))


def tiny_clip(seed: int = 0):
    from ovss_cli.clip.zoo import create_clip

    torch.manual_seed(seed)
    return create_clip("ovss-tiny")


@functools.lru_cache(maxsize=1)
def plain_reference() -> tuple[list[torch.Tensor], frozenset[str], frozenset[str]]:
    """Outputs, state_dict keys and parameter names of the unadapted tiny CLIP (seed 0)."""
    model = tiny_clip()
    return outputs(model), frozenset(model.state_dict()), frozenset(n for n, _ in model.named_parameters())


def dense_tokens(model, images: torch.Tensor) -> torch.Tensor:
    """Image tokens with the last vision block in CAT-Seg's dense form (block.attn called directly)."""
    visual = model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        x = block(x)
    last = blocks[-1]
    y = last.ln_1(x)
    self_only = torch.full((y.shape[1], y.shape[1]), float("-inf")).fill_diagonal_(0.0)
    y = last.attn(y, y, y, need_weights=False, attn_mask=self_only)[0]
    x = x[:, :1] + last.ls_1(y)
    x = x + last.ls_2(last.mlp(last.ln_2(x)))
    return visual.ln_post(x) @ visual.proj


def outputs(model, handle=None) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        if handle is not None:
            handle.refresh()
        return [model.encode_image(IMAGES), dense_tokens(model, IMAGES), model.encode_text(TOKENS)]


def random_loss(model, seed: int) -> torch.Tensor:
    outs = [model.encode_image(IMAGES), dense_tokens(model, IMAGES), model.encode_text(TOKENS)]
    generator = torch.Generator().manual_seed(100 + seed)
    return sum((out * torch.randn(out.shape, generator=generator)).sum() for out in outs)


def train_steps(model, handle, steps: int = 2, lr: float = 1e-2) -> None:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0) if params else None
    for step in range(steps):
        handle.refresh()
        loss = random_loss(model, step)
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# (mode, extra options) cases; tiny CLIP widths are 64, so block-diagonal modes use 32-blocks
HCLIP_VARIANTS = [
    {},
    {"dcrc": "paper"},
    {"dcrc_order": "cayley_first"},
    {"dcrc_block_mixing": "per_slice"},
    {"dcrc": "none"},
    {"pop": False},
    {"text_orthogonal": False, "vision_orthogonal": True},
]
IDENTITY_CASES = (
    [("frozen", {}), ("attention", {}), ("full", {}), ("lora", {}), ("oft", {"block_size": 32})]
    + [("oft", {"block_size": 16, "targets": ["q", "v", "mlp_fc", "mlp_proj"]})]
    + [("adapter", {}), ("ssf", {}), ("lora", {"targets": ["k", "out", "mlp_proj"], "encoders": ["text"]})]
    + [("hclip", {"block_size": 32, **v}) for v in HCLIP_VARIANTS]
)
MERGEABLE_CASES = [case for case in IDENTITY_CASES if case[0] != "adapter"]


def _adapted(mode: str, options: dict, seed: int = 0):
    model = tiny_clip(seed)
    return model, apply_finetune(model, FinetuneConfig(mode=mode, **options))


def _case_id(case) -> str:
    return case[0] + "".join(f"-{k}={v}" for k, v in case[1].items())


@pytest.mark.parametrize("case", IDENTITY_CASES, ids=_case_id)
def test_adapted_model_equals_frozen_clip_at_init(case):
    reference = plain_reference()[0]
    model, handle = _adapted(*case)
    assert max_diff(outputs(model, handle), reference) < 1e-5


@pytest.mark.parametrize("case", MERGEABLE_CASES, ids=_case_id)
def test_merge_reproduces_trained_model_and_loads_in_plain_open_clip(case, tmp_path):
    import open_clip
    from safetensors.torch import save_file

    from ovss_cli.clip.zoo import register_ovss_configs

    model, handle = _adapted(*case)
    train_steps(model, handle)
    adapted = outputs(model, handle)
    assert case[0] == "frozen" or max_diff(adapted, plain_reference()[0]) > 1e-4  # training moved it
    handle.merge()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    state = model.state_dict()
    assert set(state) == plain_reference()[1]
    assert max_diff(outputs(model), adapted) < 1e-4
    path = tmp_path / ("merged.safetensors" if case[0] == "hclip" else "merged.pt")
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    register_ovss_configs()
    reloaded = open_clip.create_model("ovss-tiny", pretrained=str(path))
    assert max_diff(outputs(reloaded), adapted) < 1e-4


@pytest.mark.parametrize("mode", ["vpt", "adapter"])
def test_unmergeable_modes_refuse_merge_but_restore_from_state_dict(mode):
    model, handle = _adapted(mode, {})
    train_steps(model, handle)
    assert not handle.mergeable
    with pytest.raises(UsageError):
        handle.merge()
    fresh, fresh_handle = _adapted(mode, {}, seed=5)
    fresh.load_state_dict(model.state_dict())
    assert max_diff(outputs(fresh, fresh_handle), outputs(model, handle)) < 1e-6


@pytest.mark.parametrize("case", IDENTITY_CASES + [("vpt", {})], ids=_case_id)
def test_gradients_reach_exactly_the_trainable_parameters(case):
    model, handle = _adapted(*case)
    handle.refresh()
    loss = random_loss(model, 0)
    if loss.requires_grad:
        loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable - {"logit_scale"}  # the only parameter the image/text encoders never use
    assert handle.trainable_parameter_count() == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if case[0] == "frozen":
        assert not trainable
    elif case[0] == "full":
        assert trainable == plain_reference()[2]
    else:
        # only new parameters train; every original CLIP tensor stays frozen
        frozen_inside = [n for n, p in model.named_parameters() if not p.requires_grad and "parametrizations" in n]
        assert all(n.endswith(".original") for n in frozen_inside)
        assert trainable and not trainable & plain_reference()[2]


def test_attention_mode_trains_only_q_and_v_rows():
    model, handle = _adapted("attention", {})
    before = tiny_clip().state_dict()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.endswith((".q", ".v")) for n in names)
    assert len(names) == 2 * (3 + 2)
    train_steps(model, handle)
    handle.merge()
    after = model.state_dict()
    for key, value in before.items():
        if key.endswith("in_proj_weight"):
            q0, k0, v0 = value.chunk(3)
            q1, k1, v1 = after[key].chunk(3)
            assert torch.equal(k0, k1) and not torch.equal(q0, q1) and not torch.equal(v0, v1)
        else:
            assert torch.equal(value, after[key]), key


def test_lora_weight_matches_hand_computed_update():
    model, handle = _adapted("lora", {"lora_rank": 4, "lora_alpha": 8.0})
    attn = model.transformer.resblocks[1].attn
    update = attn.parametrizations.in_proj_weight[0]
    with torch.no_grad():
        update.up.normal_()
    original = attn.parametrizations.in_proj_weight.original
    expected = original.clone()
    for i in range(3):
        expected[64 * i : 64 * (i + 1)] += 2.0 * update.up[i] @ update.down[i]
    assert torch.allclose(attn.in_proj_weight, expected, atol=1e-5)


def _hclip_layer_reference(source: HClipTransforms, original_in, original_out, layer: int, encoder: str):
    """Effective weights from the raw POP tensor via explicit block_diag and inverse (no DCRC)."""
    slots = range(source.text_slots) if encoder == "text" else range(source.text_slots, source.pop.shape[-1])
    orthogonal = source.groups[0 if encoder == "text" else 1][2]

    def block(index: int, slot: int) -> torch.Tensor:
        raw = source.pop[:, :, index, slot].double()
        if not orthogonal:
            return raw
        skew = (raw - raw.T) / 2
        eye = torch.eye(raw.shape[0], dtype=raw.dtype)
        return (eye - skew) @ torch.linalg.inv(eye + skew)

    d = [torch.block_diag(*[block(4 * layer + p, s) for s in slots]) for p in range(4)]
    q, k, v = original_in.double().chunk(3)
    return torch.cat([q @ d[0], k @ d[1], v @ d[2]]), d[3] @ original_out.double()


@pytest.mark.parametrize("orthogonal_text", [True, False])
def test_hclip_weights_match_explicit_block_diagonal_reference(orthogonal_text):
    model, handle = _adapted("hclip", {"block_size": 32, "dcrc": "none", "text_orthogonal": orthogonal_text})
    with torch.no_grad():
        model.hclip.pop.add_(0.1 * torch.randn_like(model.hclip.pop))
    handle.refresh()
    for encoder, blocks in (("text", model.transformer.resblocks), ("vision", model.visual.transformer.resblocks)):
        for layer, block in enumerate(blocks):
            in_ref, out_ref = _hclip_layer_reference(
                model.hclip,
                block.attn.parametrizations.in_proj_weight.original,
                block.attn.out_proj.parametrizations.weight.original,
                layer,
                encoder,
            )
            assert torch.allclose(block.attn.in_proj_weight.double(), in_ref, atol=1e-5)
            assert torch.allclose(block.attn.out_proj.weight.double(), out_ref, atol=1e-5)


@pytest.mark.parametrize("block_mixing", ["per_layer", "per_slice"])
def test_released_dcrc_matches_the_released_algorithm(block_mixing):
    """Released code: for layer l, mix the block axis of the whole tensor with M_l, mix slices, read 4l..4l+3."""
    cfg = FinetuneConfig(mode="hclip", block_size=4, dcrc_block_mixing=block_mixing, text_orthogonal=False)
    source = HClipTransforms(text_width=8, text_layers=3, vision_width=12, vision_layers=3, cfg=cfg)
    with torch.no_grad():
        for param in source.parameters():
            param.add_(0.3 * torch.randn_like(param))
    got = source.build()  # [S, B, q, q]
    tensor, layer_mix, block_mix = source.pop, source.dcrc.layer_mixing, source.dcrc.block_mixing
    for out_slice in range(12):
        group = out_slice if block_mixing == "per_slice" else out_slice // 4
        block_mixed = torch.einsum("pqsb,cb->pqsc", tensor, block_mix[group])
        expected = torch.einsum("pqsc,s->pqc", block_mixed, layer_mix[out_slice])
        assert torch.allclose(got[out_slice], expected.permute(2, 0, 1), atol=1e-5)


def _text_blocks(source: HClipTransforms) -> torch.Tensor:
    used = source.groups[0][3]
    return source.transforms()[:used, : source.text_slots]


def test_hclip_text_blocks_stay_orthogonal_and_vision_blocks_do_not():
    model, handle = _adapted("hclip", {"block_size": 32})
    train_steps(model, handle, steps=4, lr=5e-2)
    with torch.no_grad():
        handle.refresh()
        text = _text_blocks(model.hclip)
        vision = model.hclip.transforms()[:, model.hclip.text_slots :]
        eye = torch.eye(32)
    assert (text.transpose(-1, -2) @ text - eye).abs().max() < 1e-5
    assert (text - eye).abs().max() > 1e-3  # they did rotate
    assert (vision.transpose(-1, -2) @ vision - eye).abs().max() > 1e-3


def test_hclip_cayley_first_lets_dcrc_break_text_orthogonality():
    model, handle = _adapted("hclip", {"block_size": 32, "dcrc_order": "cayley_first"})
    train_steps(model, handle, steps=4, lr=5e-2)
    with torch.no_grad():
        text = _text_blocks(model.hclip)
    assert (text.transpose(-1, -2) @ text - torch.eye(32)).abs().max() > 1e-4


def hyperspherical_energy(weight: torch.Tensor) -> float:
    """HE(W) = sum_{i != j} 1 / ||w_i - w_j|| over the L2-normalised rows w_i."""
    unit = torch.nn.functional.normalize(weight.double(), dim=1)
    dist = torch.cdist(unit, unit)
    off_diagonal = ~torch.eye(len(unit), dtype=torch.bool)
    return (1.0 / dist[off_diagonal]).sum().item()


def test_pop_without_dcrc_keeps_text_hyperspherical_energy_and_changes_vision():
    model, handle = _adapted("hclip", {"block_size": 32, "dcrc": "none"})

    def energies(blocks):
        # q/k/v act on the input side (neurons = rows); out acts on the output side (neurons = columns)
        found = []
        for block in blocks:
            found += [hyperspherical_energy(w) for w in block.attn.in_proj_weight.detach().chunk(3)]
            found.append(hyperspherical_energy(block.attn.out_proj.weight.detach().T))
        return torch.tensor(found)

    handle.refresh()
    text_before, vision_before = energies(model.transformer.resblocks), energies(model.visual.transformer.resblocks)
    train_steps(model, handle, steps=4, lr=5e-2)
    with torch.no_grad():
        handle.refresh()
        text_after, vision_after = energies(model.transformer.resblocks), energies(model.visual.transformer.resblocks)
    assert torch.allclose(text_after, text_before, rtol=1e-6)
    assert ((vision_after - vision_before).abs() / vision_before).max() > 1e-4


def _perturbed_hclip():
    model, handle = _adapted("hclip", {"block_size": 32})
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # off identity, so every path carries gradient
        for param in model.hclip.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model, handle


def test_hclip_gradient_accumulation_matches_one_combined_backward():
    model_a, handle_a = _perturbed_hclip()
    model_b, handle_b = _perturbed_hclip()
    for micro_batch in range(2):  # refresh + backward per micro-batch, no optimizer step between
        handle_a.refresh()
        random_loss(model_a, 10 + micro_batch).backward()
    handle_b.refresh()
    (random_loss(model_b, 10) + random_loss(model_b, 11)).backward()
    grads_b = dict(model_b.named_parameters())
    for name, param in model_a.named_parameters():
        if param.requires_grad:
            assert param.grad.abs().max() > 0, name
            assert torch.allclose(param.grad, grads_b[name].grad, atol=1e-5), name


def test_hclip_transforms_rebuild_after_an_optimizer_step_without_refresh():
    model, handle = _adapted("hclip", {"block_size": 32})
    train_steps(model, handle, steps=2)  # the last step updated parameters after the last refresh
    model.eval()
    with torch.no_grad():
        stale_free = [model.encode_image(IMAGES), model.encode_text(TOKENS)]
    refreshed = outputs(model, handle)
    assert max_diff(stale_free, [refreshed[0], refreshed[2]]) == 0.0


def test_scope_transforms_each_weight_once_per_pass():
    model, handle = _adapted("hclip", {"block_size": 32})
    attn = model.transformer.resblocks[0].attn
    with handle.scope():
        assert attn.in_proj_weight is attn.in_proj_weight  # cached for the pass
        inside = outputs(model)
    assert attn.in_proj_weight is not attn.in_proj_weight
    assert max_diff(inside, outputs(model, handle)) < 1e-5


def test_hclip_unused_text_slots_never_train():
    """More vision than text layers (the ViT-L case): text slots past the text layers get no gradient."""
    cfg = FinetuneConfig(mode="hclip", block_size=4)
    source = HClipTransforms(text_width=8, text_layers=1, vision_width=12, vision_layers=2, cfg=cfg)
    assert list(source.pop.shape) == [4, 4, 8, 5]
    with torch.no_grad():
        source.dcrc.layer_mixing.add_(0.3 * torch.randn(8, 8))
    built = source.build()
    used = torch.cat([built[:4, :2].flatten(), built[:, 2:].flatten()])
    (used * torch.randn_like(used)).sum().backward()
    assert source.pop.grad[:, :, 4:, :2].abs().max() == 0
    assert source.pop.grad[:, :, :4, :2].abs().max() > 0


def test_cayley_is_fp32_and_orthogonal_under_autocast():
    skew = torch.randn(3, 16, 16)
    skew = skew - skew.transpose(-1, -2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rotation = cayley(skew)
    assert rotation.dtype == torch.float32
    assert (rotation.transpose(-1, -2) @ rotation - torch.eye(16)).abs().max() < 1e-5


def test_vpt_matches_manual_prompt_insertion():
    model, handle = _adapted("vpt", {"vpt_length": 3})
    blocks = model.visual.transformer.resblocks
    assert [hasattr(b, "vpt_prompt") for b in blocks] == [True, True, False]  # the dense last block has none
    model.eval()
    with torch.no_grad():
        got = dense_tokens(model, IMAGES)
        visual = model.visual
        x = visual.conv1(IMAGES).flatten(2).transpose(1, 2)
        x = visual.ln_pre(torch.cat([visual.class_embedding.expand(2, 1, -1), x], 1) + visual.positional_embedding)
        for block in blocks[:-1]:
            x = torch.cat([x[:, :1], block.vpt_prompt.expand(2, -1, -1), x[:, 1:]], dim=1)
            x = x + block.attention(block.ln_1(x))
            x = x + block.mlp(block.ln_2(x))
            x = torch.cat([x[:, :1], x[:, 4:]], dim=1)
        last = blocks[-1]
        v_weight, v_bias = last.attn.in_proj_weight.chunk(3)[2], last.attn.in_proj_bias.chunk(3)[2]
        x = x[:, :1] + last.attn.out_proj(torch.nn.functional.linear(last.ln_1(x), v_weight, v_bias))
        x = x + last.mlp(last.ln_2(x))
        expected = visual.ln_post(x) @ visual.proj
    assert got.shape == (2, 17, 32)
    assert torch.allclose(got, expected, atol=1e-5)


def test_apply_twice_and_bad_block_size_are_usage_errors():
    model, _ = _adapted("lora", {})
    with pytest.raises(UsageError, match="already fine-tuned"):
        apply_finetune(model, FinetuneConfig(mode="lora"))
    with pytest.raises(UsageError, match="does not divide"):
        apply_finetune(tiny_clip(), FinetuneConfig(mode="hclip", block_size=48))


def test_recipe_section_is_built_strictly():
    cfg = from_dict(FinetuneConfig, {"mode": "hclip", "block_size": 64, "dcrc": "paper"}, "finetune")
    assert (cfg.mode, cfg.block_size, cfg.dcrc, cfg.dcrc_order) == ("hclip", 64, "paper", "mixing_first")
    for bad in (
        {"mode": "hclip", "pop": False, "dcrc": "none"},
        {"targets": ["q", "z"]},
        {"encoders": []},
        {"lora_rank": 0},
        {"dcrc": "fancy"},
    ):
        with pytest.raises(UsageError):
            from_dict(FinetuneConfig, bad, "finetune")
