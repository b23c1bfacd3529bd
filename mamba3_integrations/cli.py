"""``mamba3-rag`` command line (also ``python -m mamba3_integrations``).

``demo`` builds a small Mamba-3 hybrid checkpoint in the official format (tokenizer
trained on the package's own sources, random weights), loads it back with
``from_pretrained`` and streams a generation, reporting prefill and decode speed and
the decode-state memory as the context grows. ``generate`` streams a completion
from any model folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from mamba3_integrations.modeling.config import Mamba3Config
from mamba3_integrations.runtime.causal_lm import Mamba3ForCausalLM

DEMO_PROMPT = "A state space model reads a long document"


def demo_config(vocab_size: int) -> Mamba3Config:
    """6 layers: Mamba-3 mixers, one global and one sliding-window attention layer."""
    return Mamba3Config(
        d_model=128, d_intermediate=256, n_layer=6, vocab_size=vocab_size,
        ssm_cfg={"layer": "Mamba3", "d_state": 32, "headdim": 32},
        attn_layer_idx=[2, 5], attn_window={5: 64},
        attn_cfg={"num_heads": 4, "head_dim": 32, "rotary_emb_dim": 32, "causal": True},
        rms_norm=True, residual_in_fp32=True, fused_add_norm=False, tie_embeddings=True,
    )


def build_demo_checkpoint(folder: Path) -> Path:
    """Train a tokenizer on this package's sources and save a random-weight model."""
    from mamba3_integrations.runtime.tokenizer import train_bpe_tokenizer

    sources = sorted(Path(__file__).resolve().parent.rglob("*.py"))
    tokenizer = train_bpe_tokenizer((p.read_text(encoding="utf-8") for p in sources),
                                    vocab_size=2048)
    torch.manual_seed(0)
    model = Mamba3ForCausalLM(demo_config(len(tokenizer)), tokenizer=tokenizer)
    model.init_weights()
    model.save_pretrained(folder)
    return folder


def stream_completion(model: Mamba3ForCausalLM, prompt: str, max_new_tokens: int,
                      **kwargs) -> None:
    print(prompt, end="", flush=True)
    for delta in model.stream_text(prompt, max_new_tokens=max_new_tokens, **kwargs):
        print(delta, end="", flush=True)
    print()


def report_speed_and_memory(model: Mamba3ForCausalLM, contexts: list[int]) -> None:
    """Prefill and decode timing and the cache size per layer kind at several contexts."""
    vocab = model.config.vocab_size
    print(f"\n{'context':>8} {'prefill tok/s':>14} {'decode tok/s':>13} "
          f"{'mamba3 state':>13} {'window ring':>12} {'global kv':>10}")
    for n in contexts:
        ids = torch.randint(0, vocab, (1, n))
        cache = model.allocate_cache(1, capacity=n + 32)
        with torch.inference_mode():
            t0 = time.perf_counter()
            logits = model(ids, cache=cache, num_last_tokens=1).logits[:, -1]
            t1 = time.perf_counter()
            for _ in range(32):
                logits = model.step(logits.argmax(-1), cache)
            t2 = time.perf_counter()
        size = cache.nbytes()
        print(f"{n:>8} {n / (t1 - t0):>14.0f} {32 / (t2 - t1):>13.1f} "
              f"{size['mamba3'] / 1024:>11.0f}Ki {size['sliding_window'] / 1024:>10.0f}Ki "
              f"{size['kv'] / 1024:>8.0f}Ki")


def run_demo(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_demo_checkpoint(Path(tmp) / "mamba3-demo")
        files = ", ".join(sorted(p.name for p in folder.iterdir()))
        print(f"saved a Mamba-3 hybrid checkpoint (official format) to {folder}: {files}")
        model = Mamba3ForCausalLM.from_pretrained(folder)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"loaded it back: {n_params / 1e6:.2f}M parameters, layers "
              f"{[type(b.mixer).__name__ for b in model.backbone.layers]}, "
              f"sliding windows {model.config.attn_window}")
        print("\nstreaming a greedy completion (random weights: the text is noise, the "
              "machinery is real):")
        stream_completion(model, DEMO_PROMPT, args.max_new_tokens)
        report_speed_and_memory(model, [256, 1024, 4096])


def run_generate(args: argparse.Namespace) -> None:
    model = Mamba3ForCausalLM.from_pretrained(args.model, dtype=args.dtype, device=args.device)
    stream_completion(model, args.prompt, args.max_new_tokens, do_sample=args.temperature > 0,
                      temperature=args.temperature or 1.0, stop_strings=args.stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mamba3-rag", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build, reload and run a small Mamba-3 hybrid model")
    demo.add_argument("--max-new-tokens", type=int, default=48)
    demo.set_defaults(run=run_demo)
    gen = sub.add_parser("generate", help="stream a completion from a model folder")
    gen.add_argument("--model", required=True, help="model folder (config.json + weights)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--dtype", default=None)
    gen.add_argument("--device", default=None)
    gen.set_defaults(run=run_generate)
    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
