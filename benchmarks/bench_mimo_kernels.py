"""Benchmark the Mamba-3 MIMO Triton kernels on CUDA: chunked prefill forward and decode step.

Shapes: nheads 64, headdim 64, d_state 128, rank 4, ngroups 1, rope_fraction 0.5, bf16
activations with float32 states. Prefill at (batch, seqlen) = (1, 16384) and (8, 4096);
decode at batch 1 and 128, next to our SISO step at the same shapes. With
``--official DIR`` (a folder holding ``mamba_ssm`` and TileLang) the official TileLang
prefill runs beside ours. Writes a table, ``mimo_kernels.json`` and ``mimo_kernels.png``.

    python benchmarks/bench_mimo_kernels.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

import torch

from mamba3_integrations.kernels import mamba3_mimo_step, mamba3_step
from mamba3_integrations.kernels.mamba3_mimo_triton import _forward
from mamba3_integrations.kernels.mamba3_mimo_triton_step import mamba3_mimo_step_triton

H, P, N, R, G = 64, 64, 128, 4, 1
A = N // 4  # rope_fraction 0.5
DTYPE = torch.bfloat16
PREFILL = [(1, 16384), (8, 4096)]
DECODE = [1, 128]
CONFIGS = [(64, 8), (64, 4), (32, 8), (32, 4)]  # (rows per chunk, warps) of the prefill


def cuda_time(fn, reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` over ``reps`` timed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def graph_time(fn, steps: int = 100, reps: int = 10) -> float:
    """Median milliseconds per call of ``fn`` replayed from a CUDA graph of ``steps`` calls
    (the kernel time without Python and launch overhead)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(steps):
            fn()
    return cuda_time(graph.replay, reps=reps) / steps


def prefill_inputs(batch: int, seqlen: int) -> dict:
    dev = "cuda"
    dt = torch.nn.functional.softplus(torch.randn(batch, H, seqlen, device=dev) - 3)
    return dict(
        Q=torch.randn(batch, seqlen, R, G, N, device=dev, dtype=DTYPE),
        K=torch.randn(batch, seqlen, R, G, N, device=dev, dtype=DTYPE),
        V=torch.randn(batch, seqlen, H, P, device=dev, dtype=DTYPE),
        ADT=-dt * torch.rand_like(dt),
        DT=dt,
        Trap=torch.randn(batch, H, seqlen, device=dev, dtype=DTYPE),
        Q_bias=torch.randn(H, R, N, device=dev),
        K_bias=torch.randn(H, R, N, device=dev),
        Angles=torch.rand(batch, seqlen, H, A, device=dev),
        MIMO_V=torch.randn(H, R, P, device=dev) / R,
        MIMO_O=torch.randn(H, R, P, device=dev) / R,
        D=torch.randn(H, device=dev),
        Z=torch.randn(batch, seqlen, H, P, device=dev, dtype=DTYPE),
        MIMO_Z=torch.randn(H, R, P, device=dev),
        Norm_Weight=None,
    )


def prefill_flops(batch: int, seqlen: int) -> float:
    """Matrix-product FLOPs of the chunked form at 64 rows per chunk (scores, scores x V,
    q x state, state update), the measure the throughput figures use."""
    rows = seqlen * R
    per_row = 2 * (64 * N + 64 * P + N * P + N * P)
    return batch * H * rows * per_row


def ours_prefill(x: dict, chunk_rows: int, num_warps: int) -> torch.Tensor:
    """Our fused prefill forward with the final state (as a cached prefill runs it)."""
    return _forward(
        **x,
        initial_state=None,
        return_state=True,
        cu=None,
        out_dtype=DTYPE,
        rows=chunk_rows,
        num_warps=num_warps,
    )[0]


def official_prefill(folder: str):
    """The official ``mamba3_mimo`` (TileLang) from ``folder``, or None."""
    sys.path.insert(0, folder)
    from mamba_ssm.ops.tilelang.mamba3.mamba3_mimo import mamba3_mimo

    def run(x: dict, return_state: bool = False):
        return mamba3_mimo(
            Q=x["Q"],
            K=x["K"],
            V=x["V"],
            ADT=x["ADT"],
            DT=x["DT"],
            Trap=x["Trap"],
            Q_bias=x["Q_bias"],
            K_bias=x["K_bias"],
            MIMO_V=x["MIMO_V"],
            MIMO_Z=x["MIMO_Z"],
            MIMO_Out=x["MIMO_O"],
            Angles=x["Angles"],
            D=x["D"],
            Z=x["Z"],
            chunk_size=64 // R,
            rotary_dim_divisor=4,
            dtype=DTYPE,
            return_state=return_state,
        )

    return run


def bench_prefill(official_dir: str | None) -> list[dict]:
    rows = []
    official = None
    if official_dir:
        try:
            official = official_prefill(official_dir)
        except Exception as exc:  # missing TileLang: report it and go on without
            print(f"official TileLang prefill unavailable: {type(exc).__name__}: {exc}")
    for batch, seqlen in PREFILL:
        x = prefill_inputs(batch, seqlen)
        flops = prefill_flops(batch, seqlen)
        baseline = None
        for chunk_rows, warps in CONFIGS:
            ours = functools.partial(ours_prefill, x, chunk_rows, warps)
            t0 = time.time()
            try:
                out = ours()
            except Exception as exc:  # e.g. out of shared memory for this tile
                print(f"config {(chunk_rows, warps)} failed: {type(exc).__name__}: {exc}")
                continue
            compile_s = time.time() - t0
            if baseline is None:
                baseline = out.float()
            diff = ((out.float() - baseline).norm() / baseline.norm()).item()
            ms = cuda_time(ours)
            rows.append(
                dict(
                    kernel="ours",
                    batch=batch,
                    seqlen=seqlen,
                    chunk_rows=chunk_rows,
                    num_warps=warps,
                    ms=ms,
                    tokens_per_s=batch * seqlen / ms * 1e3,
                    tflops=flops / ms / 1e9,
                    rel_diff_to_first_config=diff,
                    first_call_s=compile_s,
                )
            )
        if official is not None:
            try:
                t0 = time.time()
                out = official(x)
                compile_s = time.time() - t0
                diff = ((out.float() - baseline).norm() / baseline.norm()).item()
                ms = cuda_time(functools.partial(official, x))
                rows.append(
                    dict(
                        kernel="official_tilelang",
                        batch=batch,
                        seqlen=seqlen,
                        ms=ms,
                        tokens_per_s=batch * seqlen / ms * 1e3,
                        tflops=flops / ms / 1e9,
                        rel_diff_to_ours=diff,
                        first_call_s=compile_s,
                    )
                )
            except Exception as exc:
                print(f"official prefill failed at {(batch, seqlen)}: {type(exc).__name__}: {exc}")
                official = None
        torch.cuda.empty_cache()
    return rows


def decode_inputs(batch: int, rank: int | None) -> tuple[dict, tuple]:
    """Step inputs and a state; ``rank=None`` gives the SISO layout."""
    dev = "cuda"
    lead = (batch,) if rank is None else (batch, rank)
    bias = (H, N) if rank is None else (H, rank, N)
    dt = torch.nn.functional.softplus(torch.randn(batch, H, device=dev) - 3)
    x = dict(
        Q=torch.randn(*lead, G, N, device=dev, dtype=DTYPE),
        K=torch.randn(*lead, G, N, device=dev, dtype=DTYPE),
        V=torch.randn(batch, H, P, device=dev, dtype=DTYPE),
        ADT=-dt,
        DT=dt,
        Trap=torch.randn(batch, H, device=dev, dtype=DTYPE),
        Q_bias=torch.randn(*bias, device=dev),
        K_bias=torch.randn(*bias, device=dev),
        Angles=torch.rand(batch, H, A, device=dev),
        D=torch.randn(H, device=dev),
        Z=torch.randn(batch, H, P, device=dev, dtype=DTYPE),
    )
    if rank is not None:
        x.update(
            MIMO_V=torch.randn(H, rank, P, device=dev),
            MIMO_O=torch.randn(H, rank, P, device=dev),
            MIMO_Z=torch.randn(H, rank, P, device=dev),
        )
    k_shape = (batch, H, N) if rank is None else (batch, rank, H, N)
    state = (
        torch.zeros(batch, H, A, device=dev),
        torch.zeros(batch, H, P, N, device=dev),
        torch.zeros(*k_shape, device=dev, dtype=DTYPE),
        torch.zeros(batch, H, P, device=dev, dtype=DTYPE),
    )
    return x, state


def bench_decode() -> list[dict]:
    rows = []
    for batch in DECODE:
        steps = (
            ("mimo_r4", R, mamba3_mimo_step),
            ("mimo_r4_4warps", R, functools.partial(mamba3_mimo_step_triton, num_warps=4)),
            ("siso", None, mamba3_step),
        )
        for name, rank, step in steps:
            x, state = decode_inputs(batch, rank)
            run = functools.partial(step, **x, state=state, inplace=True)
            try:
                eager = cuda_time(run, reps=200) * 1e3
                graph = graph_time(run) * 1e3
            except Exception as exc:
                print(f"{name} step failed at batch {batch}: {type(exc).__name__}: {exc}")
                continue
            state_bytes = sum(s.numel() * s.element_size() for s in state)
            rows.append(
                dict(
                    kernel=name,
                    batch=batch,
                    eager_us=eager,
                    graph_us=graph,
                    state_gb_per_s=2 * state_bytes / graph / 1e3,
                )
            )
    return rows


def plot(prefill: list[dict], decode: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    best = {}
    for r in prefill:
        key = (r["kernel"], r["batch"], r["seqlen"])
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    shapes = sorted({(b, s) for _, b, s in best})
    kernels = sorted({k for k, _, _ in best})
    width = 0.8 / len(kernels)
    for j, kernel in enumerate(kernels):
        vals = [best.get((kernel, b, s), {}).get("tokens_per_s", math.nan) / 1e6 for b, s in shapes]
        ax1.bar([i + j * width for i in range(len(shapes))], vals, width, label=kernel)
    ax1.set_xticks(
        [i + width * (len(kernels) - 1) / 2 for i in range(len(shapes))],
        [f"B={b} L={s}" for b, s in shapes],
    )
    ax1.set_ylabel("prefill forward, M tokens/s")
    ax1.legend()
    names = sorted({r["kernel"] for r in decode})
    batches = sorted({r["batch"] for r in decode})
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        vals = [
            next(
                (r["graph_us"] for r in decode if r["kernel"] == name and r["batch"] == b), math.nan
            )
            for b in batches
        ]
        ax2.bar([i + j * width for i in range(len(batches))], vals, width, label=name)
    ax2.set_xticks(
        [i + width * (len(names) - 1) / 2 for i in range(len(batches))], [f"B={b}" for b in batches]
    )
    ax2.set_ylabel("decode step, µs (CUDA graph)")
    ax2.legend()
    fig.suptitle(
        f"Mamba-3 MIMO kernels, H={H} P={P} N={N} R={R} bf16, {torch.cuda.get_device_name()}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--official", help="folder with mamba_ssm and TileLang importable")
    args = parser.parse_args()
    torch.manual_seed(0)
    prefill = bench_prefill(args.official)
    decode = bench_decode()
    print(f"\nprefill forward ({torch.cuda.get_device_name()})")
    print(
        f"{'kernel':18} {'B':>3} {'L':>6} {'rows':>4} {'warps':>5} {'ms':>8} "
        f"{'Mtok/s':>8} {'TFLOP/s':>8}"
    )
    for r in prefill:
        print(
            f"{r['kernel']:18} {r['batch']:3d} {r['seqlen']:6d} {r.get('chunk_rows', ''):>4} "
            f"{r.get('num_warps', ''):>5} {r['ms']:8.3f} {r['tokens_per_s'] / 1e6:8.2f} "
            f"{r['tflops']:8.1f}"
        )
    print("\ndecode step (one launch per layer and token)")
    print(f"{'kernel':10} {'B':>4} {'eager µs':>9} {'graph µs':>9} {'state GB/s':>10}")
    for r in decode:
        print(
            f"{r['kernel']:10} {r['batch']:4d} {r['eager_us']:9.1f} {r['graph_us']:9.1f} "
            f"{r['state_gb_per_s']:10.0f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=__import__("triton").__version__,
        dtype=str(DTYPE),
        shape=dict(nheads=H, headdim=P, d_state=N, rank=R, ngroups=G, n_angles=A),
    )
    (args.out / "mimo_kernels.json").write_text(
        json.dumps(dict(meta=meta, prefill=prefill, decode=decode), indent=2) + "\n"
    )
    plot(prefill, decode, args.out / "mimo_kernels.png")


if __name__ == "__main__":
    main()
