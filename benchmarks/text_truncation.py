"""Text encoder cost: full 77-token context vs. ovss's run up to the longest prompt's end token.

Same model, same prompts (the 171 COCO-Stuff classes in CAT-Seg's template), same run; prints
both times, their ratio, and the largest difference between the two embeddings.

    python benchmarks/text_truncation.py [--model ViT-B-16] [--repeats 3] [--backward]
"""

from __future__ import annotations

import argparse
import time

import torch

from ovss_cli.clip.dense import DenseCLIP
from ovss_cli.clip.prompts import SINGLE_TEMPLATE
from ovss_cli.clip.text import TextEncoder
from ovss_cli.clip.zoo import create_clip
from ovss_cli.data.vocab import load_vocabulary


def timed(function, repeats: int, backward: bool) -> tuple[float, torch.Tensor]:
    best, output = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.set_grad_enabled(backward):
            output = function()
            if backward:
                output.float().pow(2).mean().backward()
        best = min(best, time.perf_counter() - start)
    return best, output.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backward", action="store_true", help="time forward + backward (text encoder trained)")
    args = parser.parse_args()
    clip = create_clip(args.model)
    dense = DenseCLIP(clip, int(clip.visual.image_size[0]))
    classes = list(load_vocabulary("coco_stuff171"))
    tokens = TextEncoder(args.model, SINGLE_TEMPLATE).tokens(classes)
    full_time, full = timed(lambda: clip.encode_text(tokens), args.repeats, args.backward)
    short_time, short = timed(lambda: dense.encode_text(tokens), args.repeats, args.backward)
    length = int(tokens.argmax(dim=-1).max()) + 1
    print(f"{args.model}, {len(classes)} prompts, context {tokens.shape[1]} -> {length} tokens, "
          f"{'forward+backward' if args.backward else 'forward'}")
    print(f"full context: {1000 * full_time:.1f} ms   truncated: {1000 * short_time:.1f} ms   "
          f"speed-up x{full_time / short_time:.2f}   max |difference| {float((full - short).abs().max()):.2e}")


if __name__ == "__main__":
    main()
