"""Benchmark the Mamba-3 MIMO Triton kernels on CUDA: chunked prefill forward and decode step.

Shapes: nheads 64, headdim 64, d_state 128, rank 4, ngroups 1, rope_fraction 0.5, bf16
activations with float32 states. First every prefill tile variant and every step variant
is checked on the GPU against the PyTorch reference (float32 and bf16, with initial and
final states, a length off the chunk, packed sequences, prefill then a decode step).
Then the prefill forward at (batch, seqlen) = (1, 16384) and (8, 4096) over the tile
variants (with a per-kernel breakdown of the default), and the decode step at batch 1
and 128 next to our SISO step, timed two ways: a CUDA graph holding one step (replayed,
so each step pays a graph launch) and a graph of 20 consecutive steps (time / 20: the
step inside a whole-model graph). ``--step-baseline FILE`` times the step of another
module file (e.g. the kernel before a change) in the same run. With ``--official DIR`` (a
folder holding ``mamba_ssm`` and TileLang) the official TileLang prefill runs beside
ours. Writes a table, ``mimo_kernels.json`` and ``mimo_kernels.png`` (``--step-only``:
``mimo_step.*``, ``--prefill-only``: ``mimo_prefill.*``).

    python benchmarks/bench_mimo_kernels.py --out benchmarks/results
    python benchmarks/bench_mimo_kernels.py --step-only --step-baseline OLD_STEP.py
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import torch
from bench_siso_kernels import capture_graph

from mamba3_integrations.kernels import mamba3_mimo_triton_step, mamba3_step
from mamba3_integrations.kernels.mamba3_mimo_reference import (
    mamba3_mimo_scan_reference,
    mamba3_mimo_step_reference,
)
from mamba3_integrations.kernels.mamba3_mimo_triton import (
    DEFAULT_CONFIG,
    LAST_KERNELS,
    FwdConfig,
    _forward,
    mamba3_mimo_scan_triton,
)
from mamba3_integrations.kernels.mamba3_mimo_triton_step import mamba3_mimo_step_triton

DEV = "cuda"
LOW = torch.bfloat16  # the 16-bit dtype of the checks
H, P, N, R, G = 64, 64, 128, 4, 1
A = N // 4  # rope_fraction 0.5
DTYPE = torch.bfloat16
PREFILL = [(1, 16384), (8, 4096)]
DECODE = [1, 128]
CONFIGS = [  # prefill: rows per chunk, tokens per program, warps and stages (scan / state)
    DEFAULT_CONFIG,  # r64 c512 w4/4 s1/2
    FwdConfig(rows=64, chunk=512, num_warps=8),
    FwdConfig(rows=32, chunk=512),
    FwdConfig(rows=64, chunk=512, whole_seq_programs=1 << 30),  # never whole sequences
]
# step variants: a name and the settings of ``mamba3_mimo_step_triton`` (those not given
# come from its STEP_CONFIG: rows 64 and 4 warps at every batch, every load first up to
# batch 16, no register cap above it)
STEP_VARIANTS = [
    ("default", {}),
    ("late", dict(early=False)),  # B=1 with the large-batch load order
    ("tma", dict(tma=True)),
]
STEP_GRAPH = 20  # steps in the many-steps CUDA graph
CHECK_SHAPE = (2, 333)  # (batch, seqlen) of the correctness checks: off the chunk


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


def prefill_inputs(batch: int, seqlen: int) -> dict:
    dev = DEV
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


def ours_prefill(x: dict, config: FwdConfig | None = None) -> torch.Tensor:
    """Our prefill forward with the final state (as a cached prefill runs it)."""
    return _forward(**x, initial_state=None, return_state=True, cu=None, out_dtype=DTYPE,
                    config=config)[0]


def label(config: FwdConfig) -> str:
    extra = "" if config.whole_seq_programs == DEFAULT_CONFIG.whole_seq_programs else " split"
    return (f"r{config.rows} c{config.chunk} w{config.num_warps}/{config.state_warps}"
            f" s{config.stages}/{config.state_stages}{extra}")


def resources(kernels: dict) -> dict[str, str]:
    """``regs/spills/shared`` of compiled kernels (``n_regs``, ``n_spills``,
    ``metadata.shared`` of the objects that ``kernel[grid](...)`` returns)."""
    out = {}
    for name, k in kernels.items():
        try:
            out[name] = f"{k.n_regs}r/{k.n_spills}sp/{k.metadata.shared // 1024}K"
        except Exception as exc:  # an older/newer Triton without these attributes
            out[name] = f"? ({type(exc).__name__})"
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def angle_err(a: torch.Tensor, b: torch.Tensor) -> float:
    d = torch.remainder(a.double() - b.double() + math.pi, 2 * math.pi) - math.pi
    return (d.norm() / b.double().norm().clamp_min(1e-30)).item()


def check_inputs(batch: int, seqlen: int, dtype: torch.dtype) -> tuple[dict, tuple]:
    """Benchmark-shaped inputs in ``dtype`` (parameters float32) with an initial state."""
    torch.manual_seed(1)
    x = prefill_inputs(batch, seqlen)
    low = {"Q", "K", "V", "Z", "Trap"}
    x = {k: v.to(dtype if k in low else torch.float32) if v is not None else None
         for k, v in x.items()}
    x["Norm_Weight"] = None
    state = (torch.rand(batch, H, A, device=DEV) * 6,
             torch.randn(batch, H, P, N, device=DEV) * 0.1,
             torch.randn(batch, R, H, N, device=DEV).to(dtype),
             torch.randn(batch, H, P, device=DEV).to(dtype))
    return x, state


def final_errs(ours: tuple, ref: tuple) -> float:
    return max([angle_err(ours[0], ref[0])]
               + [rel_err(a, b) for a, b in zip(ours[1:], ref[1:], strict=True)])


def check_prefill() -> list[dict]:
    """Every prefill variant against the float32 reference on the GPU."""
    rows = []
    batch, seqlen = CHECK_SHAPE
    for dtype in (torch.float32, LOW):
        x, state = check_inputs(batch, seqlen, dtype)
        ref_x = {k: v.float() if v is not None else None for k, v in x.items()}
        ref_state = tuple(s.float() for s in state)
        ref, ref_fin = mamba3_mimo_scan_reference(**ref_x, initial_state=ref_state,
                                                  return_final_state=True)
        configs = CONFIGS if dtype == LOW else CONFIGS[:1]
        for config in configs:
            try:
                out, fin = _forward(**x, initial_state=state, return_state=True, cu=None,
                                    out_dtype=dtype, config=config)
                row = dict(check="prefill", dtype=str(dtype), config=label(config),
                           out=rel_err(out, ref), final=final_errs(fin, ref_fin))
            except Exception as exc:
                row = dict(check="prefill", dtype=str(dtype), config=label(config),
                           error=f"{type(exc).__name__}: {exc}"[:300])
            rows.append(row)
            print(row, flush=True)
    # Packed sequences (with an empty one), per-rank output, a decode step after a prefill.
    x, state = check_inputs(1, 300, torch.float32)
    cu = torch.tensor([0, 77, 77, 78, 300], device=DEV, dtype=torch.int32)
    st4 = tuple(torch.cat([s, s, s, s]) for s in state)
    out, fin = mamba3_mimo_scan_triton(**{**x, "MIMO_O": None}, initial_state=st4,
                                       return_final_state=True, cu_seqlens=cu)
    errs = []
    for i, (lo, hi) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
        if lo == hi:
            continue
        part = {k: (v[:, lo:hi] if k in ("Q", "K", "V", "Z", "Angles") else
                    v[:, :, lo:hi] if k in ("ADT", "DT", "Trap") else v) for k, v in x.items()}
        ref, ref_fin = mamba3_mimo_scan_reference(**{**part, "MIMO_O": None},
                                                  initial_state=state, return_final_state=True)
        errs += [rel_err(out[:, lo:hi], ref), final_errs(tuple(f[i:i + 1] for f in fin), ref_fin)]
    rows.append(dict(check="packed_per_rank", dtype="torch.float32", out=max(errs), final=0.0))
    for dtype in (torch.float32, LOW):
        x, state = check_inputs(2, 257, dtype)
        full = _forward(**x, initial_state=state, return_state=False, cu=None, out_dtype=dtype)[0]
        head = {k: (v[:, :-1] if k in ("Q", "K", "V", "Z", "Angles") else
                    v[:, :, :-1] if k in ("ADT", "DT", "Trap") else v) for k, v in x.items()}
        _, fin = _forward(**head, initial_state=state, return_state=True, cu=None,
                          out_dtype=dtype)
        last = {k: (v[:, -1] if k in ("Q", "K", "V", "Z", "Angles") else
                    v[:, :, -1] if k in ("ADT", "DT", "Trap") else v) for k, v in x.items()}
        y, _ = mamba3_mimo_step_triton(**{k: v for k, v in last.items() if k != "Norm_Weight"},
                                       state=fin, inplace=True)
        rows.append(dict(check="prefill_then_step", dtype=str(dtype),
                         out=rel_err(y, full[:, -1]), final=0.0))
    for row in rows[-3:]:
        print(row, flush=True)
    return rows


def load_step(path: str):
    """``mamba3_mimo_step_triton`` and ``LAST_KERNELS`` of the module file ``path`` (the
    step kernel of another version, timed in the same run)."""
    spec = importlib.util.spec_from_file_location("mimo_step_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.mamba3_mimo_step_triton, module.LAST_KERNELS


def step_runs(baseline: str | None) -> list[tuple[str, object, dict]]:
    """(name, step function, LAST_KERNELS) of every MIMO step variant to check and time:
    ours, then the baseline module's default."""
    runs = [(f"mimo {name}", functools.partial(mamba3_mimo_step_triton, **kw),
             mamba3_mimo_triton_step.LAST_KERNELS) for name, kw in STEP_VARIANTS]
    if baseline:
        try:
            step, kernels = load_step(baseline)
            runs.append(("mimo baseline", step, kernels))
        except Exception as exc:  # a baseline that does not import: time the others
            print(f"step baseline {baseline} unavailable: {type(exc).__name__}: {exc}")
    return runs


def check_step(baseline: str | None = None) -> list[dict]:
    """Every step variant against the reference step: bf16 activations at batch 4 (every
    load first) and 20 (the large-batch settings), the default also with float32 ones."""
    rows = []
    runs = step_runs(baseline)
    for dtype, batch in ((torch.float32, 4), (LOW, 4), (LOW, 20)):
        x, state = decode_inputs(batch, R)
        x = {k: v.to(dtype) if v.dtype == DTYPE else v for k, v in x.items()}
        state = (torch.rand_like(state[0]) * 6, torch.randn_like(state[1]) * 0.1,
                 torch.randn_like(state[2], dtype=torch.float32).to(dtype),
                 torch.randn_like(state[3], dtype=torch.float32).to(dtype))
        ref_y, ref_state = mamba3_mimo_step_reference(
            **{k: v.float() for k, v in x.items()}, state=tuple(s.float() for s in state))
        for name, step, _ in runs[:1] if dtype == torch.float32 else runs:
            live = tuple(s.clone() for s in state)
            row = dict(check="step", dtype=str(dtype), config=f"{name} B={batch}")
            try:
                y, new = step(**x, state=live, inplace=True)
                row.update(out=rel_err(y, ref_y), final=final_errs(new, ref_state))
            except Exception as exc:  # e.g. a variant that does not compile here
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
            print(row, flush=True)
    return rows


def kernel_breakdown(x: dict, config: FwdConfig) -> dict[str, float]:
    """CUDA milliseconds per kernel of one prefill (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    ours_prefill(x, config=config)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            ours_prefill(x, config=config)
        torch.cuda.synchronize()
    times: dict[str, float] = {}
    for event in prof.key_averages():
        if event.device_type.name == "CUDA" or "kernel" in event.key:
            total = getattr(event, "device_time_total", None)
            if total is None:
                total = getattr(event, "cuda_time_total", 0.0)
            if total:
                times[event.key[:40]] = total / 3 / 1e3
    return dict(sorted(times.items(), key=lambda kv: -kv[1])[:6])


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


def bench_prefill(official_dir: str | None) -> tuple[list[dict], dict]:
    rows, breakdown = [], {}
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
        for config in CONFIGS:
            ours = functools.partial(ours_prefill, x, config=config)
            t0 = time.time()
            try:
                out = ours()
                torch.cuda.synchronize()
            except Exception as exc:  # e.g. out of shared memory for this tile
                print(f"config {label(config)} failed: {type(exc).__name__}: {exc}"[:400])
                continue
            compile_s = time.time() - t0
            res = resources(LAST_KERNELS)
            if baseline is None:
                baseline = out.float()
            diff = rel_err(out.float(), baseline)
            ms = cuda_time(ours)
            rows.append(dict(kernel="ours", config=label(config), batch=batch, seqlen=seqlen,
                             ms=ms, tokens_per_s=batch * seqlen / ms * 1e3,
                             tflops=flops / ms / 1e9, rel_diff_to_first_config=diff,
                             first_call_s=compile_s, resources=res))
            print(rows[-1], flush=True)
        try:
            breakdown[f"B={batch} L={seqlen}"] = kernel_breakdown(x, CONFIGS[0])
        except Exception as exc:
            print(f"profiler breakdown failed: {type(exc).__name__}: {exc}")
        if official is not None:
            try:
                t0 = time.time()
                out = official(x)
                compile_s = time.time() - t0
                diff = rel_err(out.float(), baseline)
                ms = cuda_time(functools.partial(official, x))
                rows.append(dict(kernel="official_tilelang", config="", batch=batch,
                                 seqlen=seqlen, ms=ms, tokens_per_s=batch * seqlen / ms * 1e3,
                                 tflops=flops / ms / 1e9, rel_diff_to_ours=diff,
                                 first_call_s=compile_s))
            except Exception as exc:
                print(f"official prefill failed at {(batch, seqlen)}: {type(exc).__name__}: {exc}")
                official = None
        del x
        torch.cuda.empty_cache()
    return rows, breakdown


def decode_inputs(batch: int, rank: int | None) -> tuple[dict, tuple]:
    """Step inputs and a state; ``rank=None`` gives the SISO layout."""
    dev = DEV
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


def bench_decode(baseline: str | None = None) -> list[dict]:
    """Every step variant (and the SISO step) at each batch of DECODE: microseconds per
    step in a graph of one step (replayed) and in a graph of STEP_GRAPH steps."""
    rows = []
    runs = [(name, R, step, kernels) for name, step, kernels in step_runs(baseline)]
    runs.append(("siso", None, mamba3_step, {}))
    for batch in DECODE:
        for name, rank, step, kernels in runs:
            x, state = decode_inputs(batch, rank)
            run = functools.partial(step, **x, state=state, inplace=True)
            try:
                run()
                res = resources(kernels).get("step", "")
                one = cuda_time(capture_graph(run, 1, warmup=3).replay, reps=50) * 1e3
                many = cuda_time(capture_graph(run, STEP_GRAPH, warmup=3).replay,
                                 reps=10) * 1e3 / STEP_GRAPH
            except Exception as exc:  # a variant that fails here must not stop the others
                print(f"{name} step failed at batch {batch}: {type(exc).__name__}: {exc}"[:400])
                continue
            state_bytes = sum(s.numel() * s.element_size() for s in state)
            rows.append(dict(kernel=name, batch=batch, graph1_us=one, graph_us=many,
                             resources=res, state_gb_per_s=2 * state_bytes / many / 1e3,
                             bound_us_at_3tbps=2 * state_bytes / 3.0e6))
            print(rows[-1], flush=True)
            del x, state
        torch.cuda.empty_cache()
    for r in rows:  # MIMO / SISO in the same run
        siso = next((s for s in rows if s["kernel"] == "siso" and s["batch"] == r["batch"]), None)
        if siso:
            r["vs_siso"] = r["graph_us"] / siso["graph_us"]
            r["vs_siso_graph1"] = r["graph1_us"] / siso["graph1_us"]
    return rows


def plot(prefill: list[dict], decode: list[dict], path: Path, device: str) -> None:
    """Prefill throughput (best variant per kernel and shape) and step time over the SISO
    step, a panel for each of them that was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [f for f, rows in ((prefill_bars, prefill), (decode_bars, decode)) if rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1, 4), squeeze=False)
    for ax, draw in zip(axes[0], panels, strict=True):
        draw(ax, prefill if draw is prefill_bars else decode)
    fig.suptitle(f"Mamba-3 MIMO kernels, H={H} P={P} N={N} R={R} bf16, {device}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def prefill_bars(ax, prefill: list[dict]) -> None:
    """M tokens/s of the fastest variant of each kernel per shape."""
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
        ax.bar([i + j * width for i in range(len(shapes))], vals, width, label=kernel)
    ax.set_xticks(
        [i + width * (len(kernels) - 1) / 2 for i in range(len(shapes))],
        [f"B={b} L={s}" for b, s in shapes],
    )
    ax.set_ylabel("prefill forward, M tokens/s")
    ax.legend()


def decode_bars(ax, decode: list[dict]) -> None:
    """Step time per variant and batch over the SISO step's in the same graph mode (graph
    of STEP_GRAPH steps; the one-step graph as outlines), microseconds on the bars, and
    the target ratio 1.3."""
    names = list(dict.fromkeys(r["kernel"] for r in decode))
    batches = sorted({r["batch"] for r in decode})
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        rows = [next((r for r in decode if r["kernel"] == name and r["batch"] == b), {})
                for b in batches]
        xs = [i + j * width for i in range(len(batches))]
        ax.bar(xs, [r.get("vs_siso", math.nan) for r in rows], width, label=name, color=f"C{j}")
        ax.bar(xs, [r.get("vs_siso_graph1", math.nan) for r in rows], width, fill=False,
               edgecolor=f"C{j}", linestyle="--")
        for x, r in zip(xs, rows, strict=True):
            if "graph_us" in r:
                ax.text(x, 0.02, f"{r['graph_us']:.1f}", rotation=90, ha="center",
                        va="bottom", fontsize=6)
    ax.axhline(1.3, color="k", linestyle=":", linewidth=1, label="target 1.3")
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(batches))],
                  [f"B={b}" for b in batches])
    ax.set_ylabel(f"step time / SISO step (graph of {STEP_GRAPH}; dashed: of 1)")
    ax.legend(fontsize=7)


def summary(checks: list[dict], prefill: list[dict], breakdown: dict,
            decode: list[dict]) -> None:
    device = torch.cuda.get_device_name() if DEV == "cuda" else DEV
    print(f"\ncorrectness on {device}, relative errors")
    for r in checks:
        err = r.get("error")
        vals = err if err else f"out {r['out']:.2e}  final {r['final']:.2e}"
        print(f"  {r['check']:18} {r['dtype'][6:]:9} {r.get('config', ''):22} {vals}")
    print(f"\nprefill forward\n  {'kernel':18} {'config':22} {'B':>3} {'L':>6} {'ms':>8} "
          f"{'Mtok/s':>7} {'TFLOP/s':>7} {'diff':>8}")
    for r in prefill:
        diff = r.get("rel_diff_to_first_config", r.get("rel_diff_to_ours", 0.0))
        res = " ".join(f"{k} {v}" for k, v in r.get("resources", {}).items())
        print(f"  {r['kernel']:18} {r['config']:22} {r['batch']:3d} {r['seqlen']:6d} "
              f"{r['ms']:8.3f} {r['tokens_per_s'] / 1e6:7.2f} {r['tflops']:7.1f} {diff:8.1e}"
              f"  {res}")
    for shape, times in breakdown.items():
        print(f"  per kernel, {label(CONFIGS[0])}, {shape}: "
              + ", ".join(f"{k} {v:.3f} ms" for k, v in times.items()))
    print(f"\ndecode step, us per step: a CUDA graph of one step (replayed) and of "
          f"{STEP_GRAPH} steps (/ {STEP_GRAPH}); x SISO = over the SISO step of the same "
          f"batch and graph; bound: state in + out at 3 TB/s\n"
          f"  {'kernel':16} {'B':>4} {'graph1':>8} {'x SISO':>7} {f'graph{STEP_GRAPH}':>8} "
          f"{'x SISO':>7} {'bound':>6} {'GB/s':>6}")
    for r in decode:
        print(f"  {r['kernel']:16} {r['batch']:4d} {r['graph1_us']:8.2f} "
              f"{r.get('vs_siso_graph1', math.nan):7.2f} {r['graph_us']:8.2f} "
              f"{r.get('vs_siso', math.nan):7.2f} {r['bound_us_at_3tbps']:6.1f} "
              f"{r['state_gb_per_s']:6.0f}  {r['resources']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--official", help="folder with mamba_ssm and TileLang importable")
    parser.add_argument("--step-only", action="store_true",
                        help="every check, then only the decode step timings (no prefill "
                             "timings; results in mimo_step.json)")
    parser.add_argument("--prefill-only", action="store_true",
                        help="the prefill checks and timings only (results in "
                             "mimo_prefill.json)")
    parser.add_argument("--step-baseline", metavar="FILE",
                        help="a module file with mamba3_mimo_step_triton (e.g. the step "
                        "kernel before a change): checked and timed beside ours")
    parser.add_argument("--configs", help="prefill variants instead of CONFIGS, comma-"
                        "separated: rows:chunk:warps:state_warps:stages:state_stages"
                        "[:whole_seq_programs] (the FwdConfig fields in order)")
    args = parser.parse_args()
    if args.configs:
        CONFIGS[:] = [FwdConfig(*map(int, c.split(":"))) for c in args.configs.split(",")]
    torch.manual_seed(0)
    t0 = time.time()
    checks = check_prefill() + ([] if args.prefill_only else check_step(args.step_baseline))
    prefill, breakdown = ([], {}) if args.step_only else bench_prefill(args.official)
    decode = [] if args.prefill_only else bench_decode(args.step_baseline)
    summary(checks, prefill, breakdown, decode)
    print(f"\ntotal {time.time() - t0:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=__import__("triton").__version__,
        dtype=str(DTYPE),
        shape=dict(nheads=H, headdim=P, d_state=N, rank=R, ngroups=G, n_angles=A),
    )
    name = ("mimo_step" if args.step_only else "mimo_prefill" if args.prefill_only
            else "mimo_kernels")
    (args.out / f"{name}.json").write_text(
        json.dumps(dict(meta=meta, checks=checks, prefill=prefill, kernels=breakdown,
                        decode=decode), indent=2) + "\n"
    )
    plot(prefill, decode, args.out / f"{name}.png", meta["device"])


if __name__ == "__main__":
    main()
