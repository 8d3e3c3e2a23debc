"""GGUF export figures: size, export time and llama.cpp agreement per file, as a markdown table.

    .venv/bin/python benchmarks/gguf_export.py --model bundled:smollm2-135m-instruct
    .venv/bin/python benchmarks/gguf_export.py --random-lfm2-350m    # LFM2-350M's shapes, random weights

The second builds LFM2-350M's architecture (from measured-facts: 16 layers, hidden 1024, ...) with random
weights and the SmolLM2 tokenizer padded to 65536 tokens, to compare file sizes with what llama.cpp wrote for
the real model in the original project (F16 678.5, Q8_0 361.7, Q5_K_M 248.3, Q4_K_M 218.7 MiB). Random
weights have flat logits, so only sizes and times mean anything there (verification is off).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from bgwork import gguf_export as gx


def random_lfm2_350m(out: Path) -> Path:
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM

    from bgwork.models import BUNDLED_SMOLLM2, load_tokenizer, model_path

    tok = load_tokenizer(model_path(BUNDLED_SMOLLM2))
    layer_types = ["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)]
    config = Lfm2Config(vocab_size=65536, hidden_size=1024, intermediate_size=6656, num_hidden_layers=16,
                        layer_types=layer_types, num_attention_heads=16, num_key_value_heads=8,
                        block_auto_adjust_ff_dim=True, block_ff_dim=6656, block_multiple_of=256,
                        block_ffn_dim_multiplier=1.0, conv_L_cache=3, rope_theta=1e6, norm_eps=1e-5,
                        tie_word_embeddings=True, max_position_embeddings=128000,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Lfm2ForCausalLM(config).to(torch.bfloat16)
    print(f"random LFM2-350M shape: {sum(p.numel() for p in model.parameters()):,} parameters")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled:smollm2-135m-instruct", help="checkpoint dir or model spec")
    ap.add_argument("--random-lfm2-350m", action="store_true", help="LFM2-350M shapes with random weights")
    ap.add_argument("--out", default=None, help="where the files go (default: a temporary folder)")
    ap.add_argument("--min-cosine", type=float, default=0.99)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bgwork-bench-gguf-") as tmp:
        model = str(random_lfm2_350m(Path(tmp) / "lfm2-350m-random")) if args.random_lfm2_350m else args.model
        t0 = time.time()
        rows = gx.export_checkpoint(model, Path(args.out or Path(tmp) / "gguf"), verify=not args.random_lfm2_350m,
                                    min_cosine=args.min_cosine, strict=False)
        total = time.time() - t0
    print(f"\n{model} on {platform.node()} ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}); "
          f"export + verification {total:.0f} s\n")
    print("| file | MB | MiB | export s | llama.cpp load s | least logits cosine | top token | greedy same | ok |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mib = r["MB"] * 1e6 / 2**20
        print(f"| {r['quant']} | {r['MB']:.1f} | {mib:.1f} | {r['export_s']:.1f} | {r.get('load_s', float('nan')):.1f} "
              f"| {r.get('min_cosine', float('nan')):.4f} | {r.get('top_token_same', '-')} "
              f"| {r.get('greedy_same', '-')} | {r.get('ok', '-')} |")


if __name__ == "__main__":
    main()
