import itertools
import time

import open_clip
import pytest
import torch
import torch.nn.functional as F

from ovss_cli.clip.dense import DenseCLIP, prompt_runs, resize_pos_embed
from ovss_cli.clip.prompts import build_prompts, first_synonym, resolve_templates
from ovss_cli.clip.text import TextEncoder
from ovss_cli.clip.zoo import create_clip
from ovss_cli.errors import OvssError, UsageError


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_clip("ovss-tiny").eval()


def test_pos_embed_resize_keeps_values_at_original_size():
    pos = torch.randn(1 + 4 * 4, 8)
    assert torch.equal(resize_pos_embed(pos, (4, 4), (4, 4)), pos)
    # A bicubic resize of a constant field is that constant; the class slot is never touched.
    constant = torch.cat([torch.randn(1, 8), torch.full((16, 8), 0.7)])
    resized = resize_pos_embed(constant, (6, 5), (4, 4))
    assert resized.shape == (1 + 30, 8)
    assert torch.equal(resized[0], constant[0])
    assert torch.allclose(resized[1:], torch.full((30, 8), 0.7), atol=1e-6)


def test_dense_clip_at_native_size_keeps_positional_embedding(tiny):
    before = tiny.visual.positional_embedding.detach().clone()
    dense = DenseCLIP(tiny, 64)
    assert torch.equal(dense.clip.visual.positional_embedding, before)


def test_truncated_text_encoding_equals_open_clip(tiny):
    dense = DenseCLIP(tiny, 64)
    tokens = open_clip.get_tokenizer("ovss-tiny")(["a cat", "grass", "a photo of the sky above a very long road"])
    with torch.no_grad():
        assert torch.allclose(dense.encode_text(tokens), tiny.encode_text(tokens), atol=1e-5)


def tokens_of_lengths(lengths: list[int]) -> torch.Tensor:
    """Token rows whose end token (the largest id) sits at position length - 1."""
    tokens = torch.zeros(len(lengths), 77, dtype=torch.long)
    for row, length in enumerate(lengths):
        tokens[row, : length - 1] = torch.arange(1, length)
        tokens[row, length - 1] = 49407
    return tokens


def fewest_padded_tokens(lengths: list[int], runs: int) -> int:
    """Brute force over every way to cut the sorted lengths into at most `runs` contiguous groups."""
    ordered = sorted(lengths)
    best = None
    for count in range(1, runs + 1):
        for cuts in itertools.combinations(range(1, len(ordered)), count - 1):
            bounds = [0, *cuts, len(ordered)]
            tokens = sum(max(ordered[a:b]) * (b - a) for a, b in zip(bounds, bounds[1:]))
            best = tokens if best is None else min(best, tokens)
    return best


def test_prompt_runs_cover_the_sorted_prompts_with_the_fewest_padded_tokens():
    lengths = [9, 5, 12, 5, 20, 7, 9, 6, 9, 5]  # six distinct lengths for at most four runs
    runs = prompt_runs(tokens_of_lengths(lengths))
    ordered = sorted(lengths)
    assert [start for start, _, _ in runs] == [0] + [stop for _, stop, _ in runs[:-1]] and runs[-1][1] == len(lengths)
    assert all(length == max(ordered[start:stop]) for start, stop, length in runs)
    assert sum(length * (stop - start) for start, stop, length in runs) == fewest_padded_tokens(lengths, 4)
    coco = [10] * 122 + [11] * 18 + [12] * 31  # COCO-Stuff's 171 prompts in "A photo of a {} in the scene"
    assert prompt_runs(tokens_of_lengths(coco)) == [(0, 122, 10), (122, 140, 11), (140, 171, 12)]
    assert prompt_runs(tokens_of_lengths([4, 4, 4, 4, 4]), chunk=2) == [(0, 2, 4), (2, 4, 4), (4, 5, 4)]


def test_class_embeddings_in_length_runs_equal_open_clip_in_the_original_order(tiny):
    dense = DenseCLIP(tiny, 64)
    prompts = ["a photo of the sky above a very long road", "grass", "a cat", "the sea", "a red car on a bridge",
               "snow"]
    tokens = open_clip.get_tokenizer("ovss-tiny")(prompts)
    with torch.no_grad():
        ours = dense.class_text_embeddings(tokens, num_classes=3)  # 3 classes x 2 templates, class-major
        reference = tiny.encode_text(tokens).view(3, 2, -1)
    assert len(prompt_runs(tokens)) > 1 and torch.allclose(ours, reference, atol=1e-5)


def test_dense_last_block_is_value_path_plus_cls(tiny):
    """The dense last block computes out_proj(v_proj(ln_1(x))) + x_cls, then the MLP residual."""
    dense = DenseCLIP(tiny, 64)
    images = torch.randn(2, 3, 64, 64)
    captured = {}
    last = tiny.visual.transformer.resblocks[-1]
    hook = tiny.visual.transformer.resblocks[-2].register_forward_hook(lambda m, i, o: captured.update(x=o))
    with torch.no_grad():
        features = dense.encode_image_dense(images, guidance_layers=[0, 1])
    hook.remove()
    x = captured["x"]
    attn = last.attn
    width = x.shape[-1]
    v = F.linear(last.ln_1(x), attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
    y = F.linear(v, attn.out_proj.weight, attn.out_proj.bias) + x[:, :1]
    y = y + last.mlp(last.ln_2(y))
    expected = (tiny.visual.ln_post(y) @ tiny.visual.proj)[:, 1:].transpose(1, 2).reshape(2, -1, 4, 4)
    assert torch.allclose(features.tokens, expected, atol=1e-5)
    assert [g.shape for g in features.guidance] == [(2, 64, 4, 4), (2, 64, 4, 4)]
    assert torch.equal(features.guidance[1], x[:, 1:].transpose(1, 2).reshape(2, 64, 4, 4))


def test_dense_features_at_other_sizes(tiny):
    dense = DenseCLIP(tiny, 64)
    with torch.no_grad():
        assert dense.encode_image_dense(torch.randn(1, 3, 96, 48)).tokens.shape == (1, 32, 6, 3)


def test_prompts_and_synonyms():
    assert first_synonym("building, edifice") == "building"
    assert build_prompts(["building, edifice", "sky"], ["a {}.", "the {}"]) == ["a building.", "the building", "a sky.", "the sky"]
    assert len(resolve_templates("imagenet80")) == 80
    assert resolve_templates("single") == ["A photo of a {} in the scene"]
    with pytest.raises(UsageError):
        resolve_templates(["no placeholder"])


def test_text_cache_roundtrip_and_keys(tiny, tmp_path):
    dense = DenseCLIP(tiny, 64)
    encoder = TextEncoder("ovss-tiny", ["a {}."], model_id="tiny|test", cache_dir=tmp_path)
    first = encoder.embed_classes(dense, ["cat", "dog"])
    assert first.shape == (2, 1, 32)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    # A poisoned model would change outputs; the cache must return the stored tensor unchanged.
    with torch.no_grad():
        tiny.text_projection.add_(1.0)
    cached = encoder.embed_classes(dense, ["cat", "dog"])
    with torch.no_grad():
        tiny.text_projection.sub_(1.0)
    assert torch.equal(cached, first)
    # Another vocabulary or template set is another key.
    TextEncoder("ovss-tiny", ["the {}"], model_id="tiny|test", cache_dir=tmp_path).embed_classes(dense, ["cat", "dog"])
    encoder.embed_classes(dense, ["cat"])
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    # Random-init models have no identity and are never cached.
    TextEncoder("ovss-tiny", ["a {}."], model_id=None, cache_dir=tmp_path / "none").embed_classes(dense, ["cat"])
    assert not (tmp_path / "none").exists()


def test_zoo_errors(tmp_path):
    with pytest.raises(UsageError, match="did you mean 'ViT-B-16'"):
        create_clip("ViT-B-61")
    with pytest.raises(OvssError, match="not found"):
        create_clip("ovss-tiny", str(tmp_path / "missing.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(OvssError, match="cannot read CLIP weights .*neither a TorchScript archive"):
        create_clip("ovss-tiny", str(corrupt))
    with pytest.raises(UsageError, match="unknown pretrained tag"):
        create_clip("ovss-tiny", "openai")


def test_uncached_tag_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(OvssError, match="pass the file"):
        create_clip("ViT-B-16", "openai")
    assert time.monotonic() - start < 60


def test_local_weights_file_loads(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny.state_dict(), path)
    loaded = create_clip("ovss-tiny", str(path)).eval()
    tokens = open_clip.get_tokenizer("ovss-tiny")(["a cat"])
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(tokens), tiny.encode_text(tokens))


@pytest.mark.parametrize("mode", ["adapter", "lora", "hclip"])
def test_text_encoding_with_fine_tuning_attached_equals_open_clip(mode):
    """The last text block runs at the end tokens only; adapters (hooks) and parametrised weights still act."""
    from ovss_cli.peft import apply_finetune
    from ovss_cli.peft.config import FinetuneConfig

    model = create_clip("ovss-tiny").eval()
    options = {"block_size": 16} if mode == "hclip" else {}
    handle = apply_finetune(model, FinetuneConfig(mode=mode, **options))
    tokens = open_clip.get_tokenizer("ovss-tiny")(["a cat", "grass", "a photo of the sky above a very long road"])
    with torch.no_grad():
        untrained = model.encode_text(tokens)
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))  # away from the identity they start at
        handle.refresh()
        dense = DenseCLIP(model, 64)
        with handle.scope():
            ours, reference = dense.encode_text(tokens), model.encode_text(tokens)
    assert (reference - untrained).abs().max() > 1e-3  # the fine-tuning acts
    assert (ours - reference).abs().max() < 1e-5


def test_text_encoding_gradients_equal_open_clip_in_float64():
    model = create_clip("ovss-tiny").double()
    dense = DenseCLIP(model, 64)
    tokens = open_clip.get_tokenizer("ovss-tiny")(["a cat", "grass", "a photo of the sky above a very long road"])
    weights = torch.randn(3, model.text_projection.shape[1], dtype=torch.float64)
    grads = []
    for encode in (dense.encode_text, model.encode_text):
        model.zero_grad()
        (encode(tokens) * weights).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.transformer.parameters()]))
    assert (grads[0] - grads[1]).abs().max() < 1e-10
