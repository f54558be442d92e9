"""CAT-Seg decoder: window geometry, equivariance, the pad_len rule, gradients, loss, sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovss_cli.config import from_dict
from ovss_cli.decoder.catseg import DROPPED_CLASS_LOGIT, CATSegDecoder, CostEmbedding
from ovss_cli.decoder.class_attention import ClassAggregation, elu_feature_map, linear_attention
from ovss_cli.decoder.config import DecoderConfig
from ovss_cli.decoder.swin import (
    GuidedSwinBlock,
    SpatialAggregation,
    shifted_window_mask,
    window_order,
    window_partition,
    window_reverse,
)
from ovss_cli.decoder.logit_head import LogitHead
from ovss_cli.decoder.upsample import GuidedUpStage, composition_taps
from ovss_cli.errors import UsageError
from ovss_cli.losses.segmentation import segmentation_bce_loss, softplus

EMBED, WIDTH, GRID = 32, 64, 8


def tiny_config(**overrides) -> DecoderConfig:
    values = dict(
        hidden_dim=32,
        heads=2,
        window_size=4,
        text_guidance_dim=16,
        appearance_guidance_dim=16,
        decoder_dims=[32, 16],
        decoder_guidance_dims=[24, 16],
        decoder_guidance_proj_dims=[8, 4],
        pad_len=8,
    )
    values.update(overrides)
    return DecoderConfig(**values)


def randomise(module: torch.nn.Module) -> None:
    """Give zero-initialised vectors (padding tokens, norms) random values so that they matter."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.5)


def inputs(batch: int, classes: int, templates: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, EMBED, GRID, GRID, generator=g)
    text = torch.randn(1, classes, templates, EMBED, generator=g)
    blocks = [torch.randn(batch, WIDTH, GRID, GRID, generator=g) for _ in range(2)]
    return image, text, blocks


def make_decoder(templates: int = 1, **overrides) -> CATSegDecoder:
    torch.manual_seed(0)
    decoder = CATSegDecoder(tiny_config(**overrides), EMBED, WIDTH, templates)
    randomise(decoder)
    return decoder


# ---- windows ---------------------------------------------------------------------------------


def test_window_partition_and_reverse_are_inverse():
    x = torch.randn(3, 8, 12, 5)
    windows = window_partition(x, 4)
    assert windows.shape == (3 * 2 * 3, 16, 5)
    # window 1 of image 0 is rows 0..3, columns 4..7, row-major
    assert torch.equal(windows[1], x[0, :4, 4:8].reshape(16, 5))
    assert torch.equal(window_reverse(windows, 4, 8, 12), x)


def test_shifted_window_mask_blocks_wrap_around_pairs():
    size, window, shift = 8, 4, 2
    mask = shifted_window_mask(size, size, window, shift)
    # original coordinates of the tokens in each window of the grid rolled by -shift
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    coords = torch.stack([(rows + shift) % size, (cols + shift) % size], dim=-1)
    coords = window_partition(coords[None], window)  # [nW, L, 2]
    # same window and no wrap-around: image distance below one window in both axes
    expected = ((coords[:, :, None] - coords[:, None, :]).abs() < window).all(dim=-1)
    assert torch.equal(mask, expected)
    assert not mask.all()  # some pairs really are blocked


def brute_force_swin_block(block: GuidedSwinBlock, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """Dense attention over the whole grid with an explicit pairwise mask, in image coordinates."""
    b, t, h, w, c = x.shape
    window, shift, heads = block.window, block.shift, block.attn.heads
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    # window index of every token in the rolled frame
    win = (((rows - shift) % h) // window) * (w // window) + ((cols - shift) % w) // window
    win, rows, cols = win.flatten(), rows.flatten(), cols.flatten()
    allowed = (win[:, None] == win[None, :]) & ((rows[:, None] - rows[None, :]).abs() < window)
    allowed &= (cols[:, None] - cols[None, :]).abs() < window
    tokens = block.norm1(x).reshape(b, t, h * w, c)
    g = guidance.reshape(b, 1, h * w, -1).expand(-1, t, -1, -1)
    joint = torch.cat([tokens, g], dim=-1)
    q, k, v = block.attn.q(joint), block.attn.k(joint), block.attn.v(tokens)
    split = lambda z: z.reshape(b, t, h * w, heads, -1).transpose(2, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(c // heads)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = (scores.softmax(dim=-1) @ v).transpose(2, 3).reshape(b, t, h, w, c)
    x = x + block.attn.proj(out)
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_block_matches_brute_force_masked_attention(shift):
    torch.manual_seed(0)
    block = GuidedSwinBlock(dim=16, guidance_dim=6, heads=2, window=4, shift=shift)
    randomise(block)
    x = torch.randn(2, 3, 8, 8, 16)
    guidance = torch.randn(2, 8, 8, 6)
    assert torch.allclose(block(x, guidance), brute_force_swin_block(block, x, guidance), atol=1e-5)


def rolled_swin_block(block: GuidedSwinBlock, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """The Swin recipe as written upstream: concatenate guidance, roll, partition, masked softmax, reverse, roll back."""
    b, t, h, w, c = x.shape
    window, shift, heads = block.window, block.shift, block.attn.heads
    tokens = block.norm1(x)
    joint = torch.cat([tokens, guidance[:, None].expand(-1, t, -1, -1, -1)], dim=-1)
    q, k, v = block.attn.q(joint), block.attn.k(joint), block.attn.v(tokens)
    if shift:
        q, k, v = (torch.roll(z, shifts=(-shift, -shift), dims=(2, 3)) for z in (q, k, v))
    q, k, v = (window_partition(z.reshape(b * t, h, w, c), window) for z in (q, k, v))  # [N*nW, L, C]
    split = lambda z: z.reshape(z.shape[0], -1, heads, c // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(c // heads)
    if shift:
        mask = shifted_window_mask(h, w, window, shift).repeat(b * t, 1, 1)  # [N*nW, L, L]
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
    out = (scores.softmax(dim=-1) @ split(v)).transpose(1, 2).reshape(-1, window * window, c)
    out = window_reverse(out, window, h, w)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    x = x + block.attn.proj(out.reshape(b, t, h, w, c))
    return x + block.mlp(block.norm2(x))


def test_window_order_is_roll_then_partition():
    h, w, window, shift = 8, 12, 4, 2
    grid = torch.arange(h * w).view(1, h, w, 1)
    rolled = window_partition(torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2)), window)  # [nW, L, 1]
    assert torch.equal(window_order(h, w, window, shift), rolled.squeeze(-1).t().flatten())


def test_spatial_aggregation_equals_the_rolled_reference_in_float64():
    torch.manual_seed(0)
    spatial = SpatialAggregation(dim=16, guidance_dim=6, heads=2, window=4).double()
    randomise(spatial)
    x = torch.randn(2, 3, 8, 12, 16, dtype=torch.float64)
    guidance = torch.randn(2, 8, 12, 6, dtype=torch.float64)
    expected, g = x, spatial.guidance_norm(guidance)
    for block in spatial.blocks:
        expected = rolled_swin_block(block, expected, g)
    assert (spatial(x, guidance) - expected).abs().max() < 1e-12


def test_class_chunks_at_inference_give_the_same_logits():
    decoder = make_decoder(pad_len=0).double().eval()
    image, text, blocks = inputs(batch=2, classes=7)
    image, text, blocks = image.double(), text.double(), [blk.double() for blk in blocks]
    with torch.no_grad():
        decoder.inference_class_chunk = 0
        whole = decoder(image, text, blocks)
        decoder.inference_class_chunk = 3  # 3 + 3 + 1 classes
        chunked = decoder(image, text, blocks)
    assert chunked.shape == whole.shape == (2, 7, 4 * GRID, 4 * GRID)
    assert (chunked - whole).abs().max() < 1e-12


# ---- class aggregation -------------------------------------------------------------------------


def test_closed_form_padding_equals_explicit_padding_tokens():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(5, 3, 2, 4, generator=g) for _ in range(3))
    pad_k, pad_v = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    n_pad = 6
    closed = linear_attention(q, k, v, pad_k, pad_v, n_pad)
    # reference: append the padding tokens and run plain (quadratic-form) linear attention
    k_all = torch.cat([k, pad_k.expand(5, n_pad, 2, 4)], dim=1)
    v_all = torch.cat([v, pad_v.expand(5, n_pad, 2, 4)], dim=1)
    phi_q, phi_k = F.elu(q) + 1, F.elu(k_all) + 1
    weights = torch.einsum("nlhd,nshd->nhls", phi_q, phi_k)
    reference = torch.einsum("nhls,nshd->nlhd", weights, v_all) / (weights.sum(-1).transpose(1, 2)[..., None] + 1e-6)
    assert torch.allclose(closed, reference, atol=1e-5)


def explicit_class_layer(layer: ClassAggregation, x: torch.Tensor, text: torch.Tensor, pool: bool) -> torch.Tensor:
    """Class aggregation with the padded class sequence materialised and plain concatenations."""
    b, t, h, w, c = x.shape
    grid = x.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w)
    pooled = F.avg_pool2d(grid, layer.pool_size) if pool else grid
    hp, wp = pooled.shape[-2:]
    seq = pooled.reshape(b, t, c, hp * wp).permute(0, 3, 1, 2).reshape(b * hp * wp, t, c)
    guide = text[:, None].expand(b, hp * wp, t, -1).reshape(b * hp * wp, t, -1)
    n_pad = layer.pad_len - t
    seq = torch.cat([seq, layer.padding_token.expand(b * hp * wp, n_pad, c)], dim=1)
    guide = torch.cat([guide, layer.padding_guidance.expand(b * hp * wp, n_pad, -1)], dim=1)
    normed = layer.norm1(seq)
    q = layer.q(torch.cat([normed, guide], -1)).unflatten(-1, (layer.heads, -1))
    k = layer.k(torch.cat([normed, guide], -1)).unflatten(-1, (layer.heads, -1))
    v = layer.v(normed).unflatten(-1, (layer.heads, -1))
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    weights = torch.einsum("nlhd,nshd->nhls", phi_q, phi_k)
    attended = torch.einsum("nhls,nshd->nlhd", weights, v) / (weights.sum(-1).transpose(1, 2)[..., None] + 1e-6)
    seq = seq + attended.flatten(-2)
    seq = (seq + layer.mlp(layer.norm2(seq)))[:, :t]
    grid = seq.reshape(b, hp * wp, t, c).permute(0, 2, 3, 1).reshape(b * t, c, hp, wp)
    grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True)
    return x + grid.reshape(b, t, c, h, w).permute(0, 1, 3, 4, 2)


def test_elu_feature_map_equals_elu_plus_one_with_its_gradient_in_float64():
    x = torch.cat([torch.linspace(-30, 30, 1001, dtype=torch.float64), torch.tensor([0.0, -1e-300, 1e-300],
                                                                                   dtype=torch.float64)])
    x.requires_grad_()
    weight = torch.linspace(-1, 1, x.numel(), dtype=torch.float64)
    ours = elu_feature_map(x)
    values = x.detach().numpy()
    exact = np.where(values > 0, values + 1, np.exp(np.minimum(values, 0)))
    assert np.allclose(ours.detach().numpy(), exact, rtol=1e-15, atol=0)
    reference = F.elu(x) + 1  # expm1(x) + 1 cancels to absolute, not relative, precision far below zero
    assert torch.allclose(ours, reference, rtol=0, atol=1e-15)
    (grad,) = torch.autograd.grad((ours * weight).sum(), x)
    (expected,) = torch.autograd.grad((reference * weight).sum(), x)
    assert torch.allclose(grad, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("training", [True, False])
def test_class_aggregation_matches_explicit_padded_reference(training):
    torch.manual_seed(0)
    layer = ClassAggregation(16, 6, heads=2, pad_len=7, pool_size=2, pool_in_training=True, pool_at_test=False)
    randomise(layer)
    layer.train(training)
    x, text = torch.randn(2, 3, 6, 6, 16), torch.randn(2, 3, 6)
    with torch.no_grad():
        assert torch.allclose(layer(x, text), explicit_class_layer(layer, x, text, pool=training), atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_permuting_classes_permutes_logits(training):
    decoder = make_decoder().train(training)
    image, text, blocks = inputs(batch=2, classes=5)  # 5 < pad_len: padding tokens take part
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        logits = decoder(image, text, blocks)
        permuted = decoder(image, text[:, perm], blocks)
    assert torch.allclose(permuted, logits[:, perm], atol=1e-5)


def test_more_classes_than_pad_len_keeps_top_classes_by_max_similarity():
    decoder = make_decoder(templates=2, pad_len=4).eval()
    image, text, blocks = inputs(batch=2, classes=7, templates=2, seed=3)
    with torch.no_grad():
        logits = decoder(image, text, blocks)
    dropped = (logits == DROPPED_CLASS_LOGIT).all(dim=-1).all(dim=-1)  # [B, T]
    assert dropped.sum(dim=1).tolist() == [3, 3]

    cosine = torch.einsum(
        "bchw,tpc->btphw", F.normalize(image, dim=1), F.normalize(text[0], dim=-1)
    ).amax(dim=(2, 3, 4))
    for i in range(2):
        lowest = set(cosine[i].argsort()[:3].tolist())
        assert set(dropped[i].nonzero().flatten().tolist()) == lowest
        # the kept classes get exactly the logits of a run on those classes alone
        kept = (~dropped[i]).nonzero().flatten()
        with torch.no_grad():
            alone = decoder(image[i : i + 1], text[:, kept], [b[i : i + 1] for b in blocks])
        assert torch.allclose(logits[i, kept], alone[0], atol=1e-5)


@pytest.mark.parametrize("templates", [1, 3])
def test_cost_embedding_by_unfolded_patches_equals_the_7x7_conv(templates):
    embed = CostEmbedding(templates, 160)  # one template unfolds to 49 patch columns, three to 147
    cost = torch.randn(2, 5, templates, GRID, GRID)
    expected = F.conv2d(cost.flatten(0, 1), embed.weight, embed.bias, padding=3)
    assert torch.allclose(embed(cost), expected.unflatten(0, (2, 5)).permute(0, 1, 3, 4, 2), atol=1e-5)


# ---- upsampling ---------------------------------------------------------------------------------


def literal_up_stage(stage: GuidedUpStage, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """CAT-Seg's Up block as written: transposed conv, concat the guidance repeated per class, DoubleConv."""
    up = stage.up(x)
    repeated = guidance.repeat_interleave(x.shape[0] // guidance.shape[0], dim=0)
    y = F.relu(stage.norm1(stage.conv1(torch.cat([up, repeated], dim=1))))
    return F.relu(stage.norm2(stage.conv2(y)))


@pytest.mark.parametrize("grid", [(3, 5), (4, 4)])
def test_up_stage_equals_the_literal_concat_form_in_float64(grid):
    torch.manual_seed(0)
    stage = GuidedUpStage(width=12, out_dim=16, guidance_dim=4).double()
    randomise(stage)  # a non-zero transposed-conv bias shows the zero padding of the upsampled map
    h, w = grid
    x = torch.randn(6, 12, h, w, dtype=torch.float64, requires_grad=True)  # 2 images x 3 classes
    guidance = torch.randn(2, 4, 2 * h, 2 * w, dtype=torch.float64, requires_grad=True)
    outputs, grads = [], []
    for forward in (stage, lambda a, b: literal_up_stage(stage, a, b)):
        stage.zero_grad()
        x.grad = guidance.grad = None
        out = forward(x, guidance)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        outputs.append(out)
        grads.append([x.grad, guidance.grad, *(p.grad for p in stage.parameters())])
    assert outputs[0].shape == (6, 16, 2 * h, 2 * w)
    assert torch.allclose(outputs[0], outputs[1], atol=1e-12)
    for fused, literal in zip(*grads):
        assert torch.allclose(fused, literal, atol=1e-10)


def test_composition_taps_send_each_sub_pixel_and_tap_to_one_kernel_tap():
    taps = composition_taps()
    assert torch.equal(taps.sum(dim=0), torch.ones(3, 2))
    # the outer taps of the 4x4 kernel come from one (dy, p) pair, the inner two from two pairs each
    assert taps.sum(dim=(1, 2)).tolist() == [1, 2, 2, 1]
    assert taps[0, 2, 0] == 1 and taps[3, 0, 1] == 1


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_logit_head_by_taps_equals_the_library_conv_in_float64(memory_format):
    torch.manual_seed(0)
    head = LogitHead(6).double()
    x = torch.randn(4, 6, 5, 7, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_()
    weight = torch.randn(4, 1, 5, 7, dtype=torch.float64)  # a non-uniform gradient reaches every tap
    results = []
    for forward in (head, lambda a: F.conv2d(a, head.weight, head.bias, padding=1)):
        out = forward(x)
        results.append((out, *torch.autograd.grad((out * weight).sum(), (x, head.weight, head.bias))))
    assert results[0][0].shape == (4, 1, 5, 7)
    for taps, conv in zip(*results):
        assert torch.allclose(taps, conv, atol=1e-12)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace is what the ONNX exporter uses
def test_logit_head_stays_one_conv_node_when_traced():
    head = LogitHead(4)
    graph = torch.jit.trace(head, torch.randn(1, 4, 6, 6)).inlined_graph
    assert "aten::_convolution" in str(graph) and "PythonOp" not in str(graph)


# ---- shapes, gradients, checkpointing ---------------------------------------------------------


def test_output_shape_and_gradient_reaches_every_parameter():
    decoder = make_decoder(templates=2).train()
    image, text, blocks = inputs(batch=2, classes=3, templates=2)
    logits = decoder(image, text, blocks)
    assert logits.shape == (2, 3, 4 * GRID, 4 * GRID)
    labels = torch.randint(0, 3, (2, 48, 48))
    segmentation_bce_loss(logits, labels).backward()
    missing = [n for n, p in decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_activation_checkpointing_gives_the_same_gradients():
    image, text, blocks = inputs(batch=1, classes=3)
    labels = torch.randint(0, 3, (1, 32, 32))
    grads = []
    for use_checkpoint in (False, True):
        decoder = make_decoder().train()
        decoder.use_checkpoint = use_checkpoint
        segmentation_bce_loss(decoder(image, text, blocks), labels).backward()
        grads.append(torch.cat([p.grad.flatten() for p in decoder.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_bfloat16_autocast_stays_close_to_fp32():
    decoder = make_decoder().eval()
    image, text, blocks = inputs(batch=1, classes=4)
    with torch.no_grad():
        reference = decoder(image, text, blocks)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = decoder(image, text, blocks)
    assert mixed.dtype == torch.bfloat16
    assert (mixed.float() - reference).abs().max() < 0.05 * reference.abs().max()


# ---- loss ---------------------------------------------------------------------------------------


def numpy_bce(logits: np.ndarray, labels: np.ndarray, ignore: int, mask_ignore: bool) -> float:
    b, t, h, w = logits.shape
    total, count = 0.0, 0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                label = labels[i, y, x]
                if label == ignore and mask_ignore:
                    continue
                for k in range(t):
                    target = 1.0 if label == k else 0.0
                    p = 1.0 / (1.0 + math.exp(-logits[i, k, y, x]))
                    total += -(target * math.log(p) + (1 - target) * math.log(1 - p))
                    count += 1
    return total / count


@pytest.mark.parametrize("mask_ignore", [True, False])
def test_bce_loss_matches_per_element_reference(mask_ignore):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=g) * 3
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)
    labels[0, 0, :3] = 255
    labels[1, 2, 4] = 255
    loss = segmentation_bce_loss(logits, labels, ignore_index=255, mask_ignore=mask_ignore)
    expected = numpy_bce(logits.double().numpy(), labels.numpy(), 255, mask_ignore)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_bce_loss_upsamples_logits_bilinearly_to_the_label_size():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 2, 3, 3, generator=g)
    labels = torch.randint(0, 2, (1, 6, 6), generator=g)
    labels[0, 5] = 7  # ignore row
    upsampled = F.interpolate(logits, size=(6, 6), mode="bilinear", align_corners=False)
    expected = numpy_bce(upsampled.double().numpy(), labels.numpy(), 7, True)
    assert segmentation_bce_loss(logits, labels, ignore_index=7).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("mask_ignore", [True, False])
def test_bce_loss_gradient_equals_autograd_of_the_one_hot_bce_in_float64(mask_ignore):
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64) * 4).requires_grad_()
    labels = torch.randint(0, 4, (2, 6, 10), generator=g)
    labels[1, :2] = 255
    loss = segmentation_bce_loss(logits, labels, ignore_index=255, mask_ignore=mask_ignore)
    (grad,) = torch.autograd.grad(loss, logits)

    upsampled = F.interpolate(logits, size=(6, 10), mode="bilinear", align_corners=False)
    valid = labels != 255
    target = F.one_hot(labels.masked_fill(~valid, 0), 4).permute(0, 3, 1, 2).double() * valid[:, None]
    per_element = F.binary_cross_entropy_with_logits(upsampled, target, reduction="none")
    reference = per_element[valid[:, None].expand_as(per_element)].mean() if mask_ignore else per_element.mean()
    (expected,) = torch.autograd.grad(reference, logits)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-15)


def test_softplus_is_within_a_few_float32_ulps_of_the_float64_value():
    # down to -80: below about -87 the value itself leaves float32's normal range (torch's softplus too)
    x = torch.cat([torch.linspace(-80, 110, 200_001), torch.tensor([0.0, 1e-30, -1e-30, 1e-7, -1e-7, 17.0, -17.0])])
    exact = F.softplus(x.double(), threshold=1000)
    relative = (softplus(x).double() - exact).abs() / exact.clamp(min=1e-300)
    assert relative.max() < 4 * 2.0**-23  # torch's own float32 softplus is within about 1 ulp here
    assert softplus(torch.tensor([-40.0, 0.0, 200.0])).tolist() == pytest.approx([math.exp(-40.0), math.log(2), 200.0], rel=1e-6)


def test_bce_loss_of_a_batch_with_only_ignore_pixels_is_zero_with_a_gradient():
    logits = torch.randn(2, 3, 2, 2, requires_grad=True)
    loss = segmentation_bce_loss(logits, torch.full((2, 4, 4), 255), ignore_index=255, mask_ignore=True)
    assert loss.item() == 0.0  # the clamped denominator: 0 / 1, not 0 / 0 = NaN
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ---- sizes and config ---------------------------------------------------------------------------


def official_parameter_count(embed: int, width: int) -> int:
    """Parameters of the official ViT recipe (hidden 128, 2 layers, P = 1), layer by layer.

    Counted from the shapes in the official aggregator plus the two guidance transposed convs
    of the meta-architecture; the spec's "about 4.7M (B) / 5.8M (L)" rounds these numbers.
    """
    linear = lambda i, o: i * o + o  # noqa: E731
    norm = 2 * 128
    swin_block = 2 * norm + 2 * linear(256, 128) + 2 * linear(128, 128) + linear(128, 512) + linear(512, 128)
    spatial = 2 * swin_block + norm  # two blocks + guidance LayerNorm
    classes = 2 * linear(256, 128) + linear(128, 128) + linear(128, 512) + linear(512, 128) + 2 * norm + 128 + 128
    stem = (49 * 128 + 128) + (9 * embed * 128 + 128) + linear(embed, 128)
    guidance = (4 * width * 256 + 256) + (16 * width * 128 + 128) + (9 * 256 * 32 + 32) + (9 * 128 * 16 + 16)
    stage1 = (4 * 128 * 96 + 96) + 9 * 128 * 64 + 9 * 64 * 64 + 2 * 128
    stage2 = (4 * 64 * 48 + 48) + 9 * 64 * 32 + 9 * 32 * 32 + 2 * 64
    head = 9 * 32 + 1
    return 2 * (spatial + classes) + stem + guidance + stage1 + stage2 + head


@pytest.mark.parametrize(
    ("embed", "width", "guidance_layers", "about"), [(512, 768, [3, 7], 4.7e6), (768, 1024, [7, 15], 5.8e6)]
)
def test_official_recipe_parameter_count(embed, width, guidance_layers, about):
    decoder = CATSegDecoder(DecoderConfig(guidance_layers=guidance_layers), embed, width, 1)
    count = sum(p.numel() for p in decoder.parameters())
    print(f"CAT-Seg decoder parameters (embed {embed}, width {width}): {count:,}")
    assert count == official_parameter_count(embed, width)
    assert abs(count - about) < 0.05e6


def test_config_loads_strictly_and_validates():
    cfg = from_dict(DecoderConfig, {"hidden_dim": 64, "heads": 4, "guidance_layers": [7, 15]}, "decoder")
    assert (cfg.hidden_dim, cfg.guidance_layers) == (64, [7, 15])
    with pytest.raises(UsageError, match="did you mean 'pad_len'"):
        from_dict(DecoderConfig, {"pad_lenn": 3}, "decoder")
    with pytest.raises(UsageError, match="divisible by decoder.heads"):
        from_dict(DecoderConfig, {"hidden_dim": 130}, "decoder")
    with pytest.raises(UsageError, match="one per upsampling stage"):
        from_dict(DecoderConfig, {"guidance_layers": [3]}, "decoder")


def test_grid_not_divisible_by_the_window_is_a_usage_error():
    block = GuidedSwinBlock(dim=8, guidance_dim=4, heads=2, window=4, shift=2)
    with pytest.raises(UsageError, match="multiple of decoder.window_size"):
        block(torch.zeros(1, 1, 10, 10, 8), torch.zeros(1, 10, 10, 4))
