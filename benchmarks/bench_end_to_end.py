"""End-to-end on one GPU: a ~1.3B Mamba-3 hybrid against a Llama of the same size.

Both with random bf16 weights, batch 1. Per context length: prefill tokens/s and peak
memory, then single-stream decode tokens/s and memory (Mamba-3 through
``CudaGraphDecoder``; Llama through transformers with SDPA and its dynamic KV cache,
eager). Decode is compared with the bound "read every weight and the whole cache once
per token" at the measured copy bandwidth. Contexts that run out of memory are recorded
as such. Prints a table, writes ``e2e.json`` and ``e2e.png``.

    python benchmarks/bench_end_to_end.py [--contexts 4096 16384 65536 131072] [--out DIR]
    python benchmarks/bench_end_to_end.py --quick --out DIR   # decode check, ~2 minutes

``--tuning siso_kernels.json`` takes the kernel settings a ``bench_siso_kernels.py`` run
found fastest (prefill, step, fused step, GEMV per projection shape).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import time
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

from mamba3_integrations.kernels import linear_decode
from mamba3_integrations.kernels import mamba3_siso_fused_step as fused_step
from mamba3_integrations.kernels import mamba3_siso_triton as siso
from mamba3_integrations.kernels import mamba3_siso_triton_step as siso_step
from mamba3_integrations.modeling import Mamba3LMHeadModel
from mamba3_integrations.modeling.config import Mamba3Config
from mamba3_integrations.runtime.cuda_graph import CudaGraphDecoder

VOCAB = 50277
WINDOW = 4096


def mamba3_config(chunk_size: int = 64) -> Mamba3Config:
    """48 layers at d_model 2048: 44 Mamba-3 (64 heads of 64, d_state 128), two global and
    two sliding-window (4096) GQA attention layers; no MLP (official Mamba LM layout)."""
    return Mamba3Config(
        d_model=2048,
        d_intermediate=0,
        n_layer=48,
        vocab_size=VOCAB,
        ssm_cfg={
            "layer": "Mamba3",
            "d_state": 128,
            "headdim": 64,
            "expand": 2,
            "chunk_size": chunk_size,
        },
        attn_layer_idx=[11, 23, 35, 47],
        attn_window={11: WINDOW, 35: WINDOW},
        attn_cfg={
            "num_heads": 16,
            "num_heads_kv": 4,
            "head_dim": 128,
            "rotary_emb_dim": 128,
            "causal": True,
            "qkv_proj_bias": False,
            "out_proj_bias": False,
        },
        rms_norm=True,
        residual_in_fp32=True,
        fused_add_norm=False,
        tie_embeddings=True,
    )


def llama_model(max_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=26,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=128,
        vocab_size=VOCAB,
        max_position_embeddings=max_len,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return model.eval()


def copy_bandwidth() -> float:
    x = torch.randn(512 * 2**20, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), return_mode="median")
    return 2 * 512 * 2**20 * 4 / (ms * 1e-3)


def timed(fn, reps: int) -> tuple[float, object]:
    """Median seconds over ``reps`` calls (after the caller's warm-up) and the last result."""
    times, result = [], None
    for _ in range(reps):
        result = None  # free the previous result first (peak memory of one call)
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], result


def gib(n: float) -> float:
    return round(n / 2**30, 3)


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def graph_kernels(decoder: CudaGraphDecoder, token: torch.Tensor, top: int = 12) -> dict:
    """Kernels in one decode replay (profiler), and the GPU time of the largest groups."""
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            decoder.step(token)
            torch.cuda.synchronize()
    except Exception as exc:  # a profiler that cannot see into graphs
        return {"kernels_per_token": None, "profile_error": repr(exc)[:200]}
    counts, times = collections.Counter(), collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith("Memcpy"):
            counts[e.name[:70]] += 1
            times[e.name[:70]] += getattr(e, "device_time", getattr(e, "cuda_time", 0))
    return {
        "kernels_per_token": sum(counts.values()),
        "kernel_us_per_token": round(sum(times.values()), 1),
        "top_kernels": {k: [counts[k], round(v, 1)] for k, v in times.most_common(top)},
    }


def fused_vs_unfused(model, cache, token: torch.Tensor, n_decode: int) -> dict:
    """Decode from copies of ``cache`` with the fused kernels and without them
    (``MAMBA3_FUSED_DECODE=0``): ms per token of each and the logits' relative difference
    over the same four tokens."""
    out, logits = {}, {}
    stream = [token, *torch.randint(0, VOCAB, (3, *token.shape), device=token.device)]
    for fused in ("0", "1"):
        os.environ["MAMBA3_FUSED_DECODE"] = fused
        decoder = CudaGraphDecoder(model, cache.clone())
        logits[fused] = torch.stack([decoder.step(t).float() for t in stream])
        seconds, _ = timed(lambda d=decoder: [d.step(token) for _ in range(n_decode)], 2)
        out[f"decode_ms_fused_{fused}"] = seconds / n_decode * 1e3
        decoder.close()
        del decoder
        torch.cuda.empty_cache()
    os.environ.pop("MAMBA3_FUSED_DECODE")
    diff = (logits["1"] - logits["0"]).norm() / logits["0"].norm()
    out["logits_rel_diff_fused_vs_unfused"] = diff.item()
    out["same_greedy_tokens"] = bool(torch.equal(logits["1"].argmax(-1), logits["0"].argmax(-1)))
    print(f"  fused vs unfused: {json.dumps(out)}", flush=True)
    return out


# Decode settings compared in one run (``decode_variants``): the GEMV launch settings of
# the run-8 decode (one for every shape: ``base``), the per-shape best of the one-row
# microbench (``tuned``: ``--tuning``'s ``gemv``; these from an H100 run when it has none),
# the library's defaults (``default``), the in_proj GEMV pulling the SSM state into L2,
# programmatic dependent launch, the add + RMSNorm fused into the GEMV after it
# (``+normgemv``: one kernel fewer per norm; ``-bnN``/``-wN``: its output rows per
# program / warps instead of ``linear_decode.NORM_GEMV_CONFIG``'s).
BASE_GEMV = {"block_n": 4, "block_k": 1024, "num_warps": 4, "num_stages": 1}
DECODE_SHAPES = ("8672x2048", "2048x4096", "3072x2048", "2048x2048", "50280x2048")
MICRO_GEMV = {
    "8672x2048": {"block_n": 4, "block_k": 4096, "num_warps": 8, "num_stages": 1},
    "2048x4096": {"block_n": 2, "block_k": 4096, "num_warps": 4, "num_stages": 1},
    "3072x2048": {"block_n": 4, "block_k": 4096, "num_warps": 8, "num_stages": 1},
    "2048x2048": {"block_n": 1, "block_k": 4096, "num_warps": 2, "num_stages": 1},
    "50280x2048": {"block_n": 4, "block_k": 4096, "num_warps": 8, "num_stages": 1},
}
TUNED_GEMV: dict = {}  # --tuning's per-shape GEMV settings (MICRO_GEMV without)
# name: (GEMV per shape: "base", "tuned" or "default", state prefetch, PDL, add + RMSNorm
# + GEMV: None for add_rms_norm and the GEMV, else its settings over NORM_GEMV_CONFIG)
VARIANTS = {
    "baseline": ("base", False, False, None),
    "bk4096": ("tuned", False, False, None),
    "bk4096+prefetch": ("tuned", True, False, None),
    "bk4096+prefetch+pdl": ("tuned", True, True, None),
    "bk4096+pdl": ("tuned", False, True, None),
    "baseline+pdl": ("base", False, True, None),
    "default+pdl": ("default", False, True, None),
    "default+pdl+normgemv": ("default", False, True, {}),
    "bk4096+normgemv": ("tuned", False, False, {}),
    "bk4096+pdl+normgemv": ("tuned", False, True, {}),
    "bk4096+pdl+normgemv-bn8": ("tuned", False, True, {"block_n": 8}),
    "bk4096+pdl+normgemv-bn8-w8": ("tuned", False, True, {"block_n": 8, "num_warps": 8}),
}


def variant_settings(name: str) -> dict:
    """The ``best`` entries (``apply_decode_tuning``) of a decode variant."""
    gemv, prefetch, pdl, norm = VARIANTS[name]
    table = {"base": {k: BASE_GEMV for k in DECODE_SHAPES}, "default": {},
             "tuned": TUNED_GEMV or MICRO_GEMV}[gemv]
    return {"gemv": {k: dict(v) if v else None for k, v in table.items()},
            "prefetch_state": prefetch, "pdl": pdl, "norm_linear": norm is not None,
            "norm_gemv": {**linear_decode.NORM_GEMV_CONFIG, **(norm or {})}}


def decode_variants(model, cache, token: torch.Tensor, n_decode: int, rounds: int = 5) -> dict:
    """Each of ``VARIANTS`` captured in its own graph on its own copy of ``cache``, then
    timed in turns (``rounds`` times ``n_decode`` tokens each, median): ms per token,
    kernels per token of each, and the top kernels of the fastest. The settings in force
    are restored."""
    env = ("MAMBA3_DECODE_PDL", "MAMBA3_DECODE_NORM_LINEAR")
    saved = (dict(linear_decode.GEMV_SHAPES), set(linear_decode.CUBLAS_SHAPES),
             fused_step.FUSED_CONFIG["prefetch_state"], {k: os.environ.get(k) for k in env},
             dict(linear_decode.NORM_GEMV_CONFIG))
    decoders = {}
    try:
        for name in VARIANTS:
            linear_decode.GEMV_SHAPES.clear()
            linear_decode.CUBLAS_SHAPES.clear()
            apply_decode_tuning(variant_settings(name))
            decoders[name] = CudaGraphDecoder(model, cache.clone())
            for _ in range(3):
                decoders[name].step(token)
    finally:
        linear_decode.GEMV_SHAPES.clear()
        linear_decode.GEMV_SHAPES.update(saved[0])
        linear_decode.CUBLAS_SHAPES.clear()
        linear_decode.CUBLAS_SHAPES.update(saved[1])
        fused_step.FUSED_CONFIG["prefetch_state"] = saved[2]
        for key, value in saved[3].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        linear_decode.NORM_GEMV_CONFIG.update(saved[4])
    times = {name: [] for name in decoders}
    for _ in range(rounds):
        for name, d in decoders.items():
            seconds, _ = timed(lambda d=d: [d.step(token) for _ in range(n_decode)], 1)
            times[name].append(seconds / n_decode * 1e3)
    ms = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    fastest = min(ms, key=ms.get)
    out = {"ms_per_token": ms, "fastest": fastest,
           "kernels_per_token": {name: graph_kernels(d, token, top=0)["kernels_per_token"]
                                 for name, d in decoders.items()},
           "fastest_kernels": graph_kernels(decoders[fastest], token)}
    for d in decoders.values():
        d.close()
    del decoders
    torch.cuda.empty_cache()
    print("  decode variants (ms/token, kernels/token): "
          + ", ".join(f"{k} {v:.3f} {out['kernels_per_token'][k]}" for k, v in ms.items())
          + f"; fastest {fastest}", flush=True)
    return out


def best_variant(rows: dict) -> str | None:
    """The variant with the least mean ms/token over the contexts that timed them all."""
    tables = [r["decode_variants"]["ms_per_token"] for r in rows.values()
              if "decode_variants" in r]
    if not tables:
        return None
    return min(VARIANTS, key=lambda n: sum(t[n] for t in tables) / len(tables))


def timed_prefill(prefill, context: int) -> tuple[dict, object]:
    """Time ``prefill()`` (already run once) from an emptied cache allocator: its figures
    and the result of its last call."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    seconds, result = timed(prefill, 3 if context <= 16384 else 2)
    row = {
        "prefill_s": seconds,
        "prefill_tok_s": context / seconds,
        "prefill_peak_gib": gib(torch.cuda.max_memory_allocated()),
    }
    return row, result


@torch.inference_mode()
def run_mamba3(model, context: int, n_decode: int, bandwidth: float,
               compare_unfused: bool = False) -> dict:
    ids = torch.randint(0, VOCAB, (1, context), device="cuda")

    def prefill():
        # Room for every decode step below: warm-ups, timed repeats, the comparisons.
        cache = model.allocate_cache(1, capacity=context + 24 * n_decode + 64)
        logits = model(ids, cache=cache, num_last_tokens=1).logits
        return cache, logits

    prefill()  # compiles the kernels for this length
    row, (cache, logits) = timed_prefill(prefill, context)

    token = logits[:, -1].argmax(-1)
    if compare_unfused:
        row.update(fused_vs_unfused(model, cache, token, n_decode))
    decoder = CudaGraphDecoder(model, cache)
    for _ in range(3):
        token = decoder.step(token).argmax(-1)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    seconds, _ = timed(lambda: [decoder.step(token) for _ in range(n_decode)], 3)
    row.update(graph_kernels(decoder, token))
    if compare_unfused:
        row["decode_variants"] = decode_variants(model, cache, token, n_decode)
    cache_bytes = cache.nbytes()
    # Bound: every weight, the Mamba-3 states (read and written) and the attention caches.
    read = (
        param_bytes(model)
        + 2 * cache_bytes["mamba3"]
        + cache_bytes["sliding_window"]
        + cache_bytes["kv"]
    )
    row.update(
        {
            "decode_tok_s": n_decode / seconds,
            "decode_ms": seconds / n_decode * 1e3,
            "decode_bound_ms": read / bandwidth * 1e3,
            "decode_peak_gib": gib(torch.cuda.max_memory_allocated()),
            "decode_mem_growth_bytes": torch.cuda.memory_allocated() - before,
            "cache_gib": {k: gib(v) for k, v in cache_bytes.items()},
        }
    )
    decoder.close()
    return row


@torch.inference_mode()
def run_llama(model, context: int, n_decode: int, bandwidth: float) -> dict:
    ids = torch.randint(0, VOCAB, (1, context), device="cuda")

    def prefill():
        out = model(ids, use_cache=True, logits_to_keep=1)
        return out.past_key_values, out.logits

    prefill()
    row, (cache, logits) = timed_prefill(prefill, context)
    del cache
    torch.cuda.empty_cache()
    cache, logits = prefill()
    token = logits[:, -1:].argmax(-1)
    torch.cuda.reset_peak_memory_stats()

    def decode():
        nonlocal token
        for _ in range(n_decode):
            out = model(token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)

    seconds, _ = timed(decode, 1)
    kv_bytes = 2 * model.config.num_hidden_layers * (context + n_decode) * 4 * 128 * 2
    row.update(
        {
            "decode_tok_s": n_decode / seconds,
            "decode_ms": seconds / n_decode * 1e3,
            "decode_bound_ms": (param_bytes(model) + kv_bytes) / bandwidth * 1e3,
            "decode_peak_gib": gib(torch.cuda.max_memory_allocated()),
            "cache_gib": {"kv": gib(kv_bytes)},
        }
    )
    return row


def guarded(fn, *args) -> dict:
    try:
        return fn(*args)
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        return {"oom": str(exc).splitlines()[0]}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in ("mamba3", "llama"):
        rows = [(int(c), r) for c, r in result[name].items() if "oom" not in r]
        ctx = [c for c, _ in rows]
        axes[0].plot(ctx, [r["prefill_tok_s"] for _, r in rows], "o-", label=name)
        axes[1].plot(ctx, [r["decode_tok_s"] for _, r in rows], "o-", label=name)
        axes[1].plot(
            ctx, [1e3 / r["decode_bound_ms"] for _, r in rows], "x--", label=f"{name} bound"
        )
        axes[2].plot(ctx, [r["prefill_peak_gib"] for _, r in rows], "o-", label=f"{name} prefill")
        axes[2].plot(ctx, [r["decode_peak_gib"] for _, r in rows], "s--", label=f"{name} decode")
    titles = ("prefill tokens/s", "decode tokens/s (batch 1)", "peak memory GiB")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def apply_decode_tuning(best: dict) -> None:
    """The fused step's small-batch split and the GEMV settings per shape (shapes where
    cuBLAS was faster keep ``F.linear``) from a ``--decode-check`` run; the state prefetch,
    PDL and add + RMSNorm + GEMV switches and the latter's settings (an ``e2e.json``'s
    ``best``, from ``decode_variants``)."""
    if "fused" in best:
        pb = best["fused"]["pblk"]
        # 64 heads of 64 at batch 1 split into exactly ``pb`` rows per program.
        fused_step.FUSED_CONFIG.update(min_pblk=pb, min_programs=64 * triton.cdiv(64, pb),
                                       small_warps=best["fused"]["warps"],
                                       early_load=best["fused"]["early"])
    if "prefetch_state" in best:
        fused_step.FUSED_CONFIG["prefetch_state"] = bool(best["prefetch_state"])
    if "pdl" in best:  # programmatic dependent launch (read when a graph is captured)
        os.environ["MAMBA3_DECODE_PDL"] = "1" if best["pdl"] else "0"
    if "norm_linear" in best:  # add + RMSNorm + GEMV (read when a graph is captured)
        os.environ["MAMBA3_DECODE_NORM_LINEAR"] = "1" if best["norm_linear"] else "0"
    if "norm_gemv" in best:
        linear_decode.NORM_GEMV_CONFIG.update(best["norm_gemv"])
    for shape, cfg in best.get("gemv", {}).items():
        n, k = (int(v) for v in shape.split("x"))
        if cfg is None:
            linear_decode.CUBLAS_SHAPES.add((n, k))
        else:
            linear_decode.GEMV_SHAPES[(n, k)] = cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[4096, 16384, 65536, 131072])
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--llama-decode-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument("--tuning", type=Path, help="siso_kernels.json: use its best kernels")
    parser.add_argument("--compare-unfused", action="store_true",
                        help="also time decode without the fused kernels, check the logits")
    parser.add_argument("--quick", action="store_true",
                        help="contexts 4096 and 131072, 32 decode tokens, no Llama, compare "
                        "with the unfused decode")
    args = parser.parse_args()
    if args.quick:
        args.contexts, args.decode_tokens = [4096, 131072], 32
        args.skip_llama = args.compare_unfused = True
    args.out.mkdir(parents=True, exist_ok=True)
    chunk = 64
    best = {}
    if args.tuning is not None and args.tuning.exists():
        best = json.loads(args.tuning.read_text())["best"]
        if "chunk" in best:  # prefill settings (absent from a --decode-only run)
            chunk = best["chunk"]
            siso.CHUNK_WARPS[chunk] = best["warps"]
            siso.TUNING["chunks_per_program"] = best["cpp"]
            siso.TUNING["chunk"] = chunk
            siso.TUNING["stages"] = best.get("stages", siso.TUNING["stages"])
            siso.TUNING["maxnreg"] = best.get("maxnreg") or None
            siso.TUNING["state_warps"] = best.get("state_warps") or None
            siso.TUNING["state_stages"] = best.get("state_stages") or None
        if "step_pblk" in best:
            siso_step.STEP_CONFIG.update(pblk=best["step_pblk"], num_warps=best["step_warps"],
                                         early_load=best.get("step_early", False),
                                         evict=best.get("step_evict", False))
        apply_decode_tuning(best)
        TUNED_GEMV.update({k: v for k, v in best.get("gemv", {}).items()})
        print("kernel settings", best, flush=True)
    bandwidth = copy_bandwidth()
    torch.manual_seed(0)
    mamba = Mamba3LMHeadModel(mamba3_config(chunk), device="cuda", dtype=torch.bfloat16)
    mamba.init_weights()
    mamba.eval()
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "chunk_size": chunk,
        "triton": triton.__version__,
        "date": datetime.date.today().isoformat(),
        "copy_bandwidth_TBps": bandwidth / 1e12,
        "mamba3_params": sum(p.numel() for p in mamba.parameters()),
        "mamba3": {},
        "llama": {},
    }
    print(
        f"{result['device']}, torch {torch.__version__}, copy {bandwidth / 1e12:.2f} TB/s; "
        f"Mamba-3 hybrid {result['mamba3_params'] / 1e9:.2f} B params",
        flush=True,
    )
    for context in args.contexts:
        row = guarded(run_mamba3, mamba, context, args.decode_tokens, bandwidth,
                      args.compare_unfused)
        result["mamba3"][context] = row
        print("mamba3", context, json.dumps(row), flush=True)
        winner = best_variant(result["mamba3"])
        if winner is not None:  # the settings to run with: --tuning e2e.json applies them
            result["best_decode_variant"] = winner
            result["best"] = {**best, **variant_settings(winner)}
        (args.out / "e2e.json").write_text(json.dumps(result, indent=1) + "\n")
    del mamba
    torch.cuda.empty_cache()
    if not args.skip_llama:
        llama = llama_model(max(args.contexts) + 64)
        result["llama_params"] = sum(p.numel() for p in llama.parameters())
        for context in args.contexts:
            row = guarded(run_llama, llama, context, args.llama_decode_tokens, bandwidth)
            result["llama"][context] = row
            print("llama", context, json.dumps(row), flush=True)
            (args.out / "e2e.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "e2e.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "e2e.png")
    print("\n| Mamba-3 decode | ms/token | bound ms | / bound | kernels/token | unfused "
          "ms/token | logits rel diff fused vs unfused |")
    print("|---|---|---|---|---|---|---|")
    for context, r in result["mamba3"].items():
        if "oom" not in r:
            print(f"| {context} | {r['decode_ms']:.3f} | {r['decode_bound_ms']:.3f} | "
                  f"{r['decode_ms'] / r['decode_bound_ms']:.2f} | {r.get('kernels_per_token')} "
                  f"| {r.get('decode_ms_fused_0', float('nan')):.3f} | "
                  f"{r.get('logits_rel_diff_fused_vs_unfused', float('nan')):.1e} |")
    variants = [(c, r["decode_variants"]) for c, r in result["mamba3"].items()
                if "decode_variants" in r]
    if variants:
        print("\n| decode variant (ms/token) | " + " | ".join(str(c) for c, _ in variants)
              + " | kernels/token |")
        print("|---|" + "---|" * (len(variants) + 1))
        for name in VARIANTS:
            print(f"| {name} | " + " | ".join(f"{v['ms_per_token'][name]:.3f}"
                                              for _, v in variants)
                  + f" | {variants[0][1].get('kernels_per_token', {}).get(name)} |")
        print(f"winner (mean over contexts): {result.get('best_decode_variant')}; best: "
              f"{json.dumps(result.get('best'))}")
        for context, v in variants:
            k = v["fastest_kernels"]
            if k.get("top_kernels"):
                print(f"\ntop kernels per token at {context}, fastest variant {v['fastest']} "
                      f"(calls, us); total {k['kernel_us_per_token']} us in "
                      f"{k['kernels_per_token']} kernels:")
                for name, (calls, us) in k["top_kernels"].items():
                    print(f"  {us:8.1f} us  {calls:4d}  {name}")
    for context, r in result["mamba3"].items():
        if "oom" not in r and r.get("top_kernels"):
            print(f"\ntop kernels per token at {context} (calls, us); total "
                  f"{r['kernel_us_per_token']} us in {r['kernels_per_token']} kernels:")
            for name, (calls, us) in r["top_kernels"].items():
                print(f"  {us:8.1f} us  {calls:4d}  {name}")
    print(
        "\n| model | context | prefill tok/s | prefill peak GiB | decode tok/s | "
        "decode bound tok/s | decode peak GiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in ("mamba3", "llama"):
        for context, r in result[name].items():
            if "oom" in r:
                print(f"| {name} | {context} | OOM | | | | |")
                continue
            print(
                f"| {name} | {context} | {r['prefill_tok_s']:.0f} | {r['prefill_peak_gib']} "
                f"| {r['decode_tok_s']:.1f} | {1e3 / r['decode_bound_ms']:.1f} | "
                f"{r['decode_peak_gib']} |"
            )


if __name__ == "__main__":
    main()
