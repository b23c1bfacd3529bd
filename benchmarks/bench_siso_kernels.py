"""Mamba-3 SISO Triton kernels on one GPU: chunked prefill and decode step.

Prefill forward at nheads 64, headdim 64, d_state 128, one group, bf16, against the
official Triton kernel's published times; the decode step at batch 1 and 128 (fp32 and
bf16 state) against the memory bound (state read + written once at the measured copy
bandwidth). Prints tables, writes ``siso_kernels.json`` and ``siso_kernels.png``.

    python benchmarks/bench_siso_kernels.py [--out benchmarks/results] [--quick]
    python benchmarks/bench_siso_kernels.py --decode-check --out DIR   # ~1 minute

``--decode-check``: the one-row GEMV of the decode projections (variants against cuBLAS),
the step kernel at batch 128 (rows, warps, early state load, streaming hints), the fused
mixer step kernel at batch 1 (rows per program, warps, early load) and the whole mixer
step; each variant checked against a reference before it is timed. ``--step-tma off,on``
(the default): every step variant with its state tile through pointers and through TMA
tensor descriptors (Hopper; at every batch, ``tma_min_batch`` aside).

    python benchmarks/bench_siso_kernels.py --decode-only --step-only --step-variants \
        [--step-rounds 4] --out DIR

``--step-variants [LIST]``: named step paths (``STEP_PATHS``: the state tile by pointers
and by TMA) in turns at ``--step-batches``, each timed in a graph of 100 in-place steps
and in one of 20 ping-pong steps.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from mamba3_integrations.kernels import mamba3_siso_triton as siso
from mamba3_integrations.kernels import mamba3_siso_triton_step as siso_step
from mamba3_integrations.kernels.mamba3_siso_reference import (
    mamba3_scan_reference,
    mamba3_step_reference,
)

H, P, N, G, A = 64, 64, 128, 1, 32
OFFICIAL_PREFILL_MS = {(1, 16384): 2.79, (1, 65536): 11.06, (8, 4096): 2.75}
OFFICIAL_DECODE_US = {1: 91.0, 128: 212.0}


def median_ms(fn, warmup: int = 25, rep: int = 100) -> float:
    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second."""
    x = torch.randn(512 * 2**20, device="cuda")  # 2 GiB
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / (ms * 1e-3)


def prefill_inputs(batch: int, seqlen: int, seed: int = 0) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, generator=g, device="cuda").to(dtype)

    dt = torch.nn.functional.softplus(rand(batch, H, seqlen, dtype=torch.float32) - 3)
    return {
        "Q": rand(batch, seqlen, G, N),
        "K": rand(batch, seqlen, G, N),
        "V": rand(batch, seqlen, H, P),
        "Z": rand(batch, seqlen, H, P),
        "ADT": -dt * torch.rand(batch, H, seqlen, generator=g, device="cuda"),
        "DT": dt,
        "Trap": rand(batch, H, seqlen),
        "Q_bias": rand(H, N, dtype=torch.float32),
        "K_bias": rand(H, N, dtype=torch.float32),
        "Angles": rand(batch, seqlen, H, A, dtype=torch.float32),
        "D": rand(H, dtype=torch.float32),
    }


def kernel_breakdown(fn) -> dict[str, float]:
    """GPU time (ms) per kernel name over one call, from the profiler."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            ms = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0)) / 1e3
            out[e.key[:60]] = round(ms, 4)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def bench_prefill(shapes, variants) -> list[dict]:
    """All ``variants`` (chunk, warps, chunks per program, pipelining stages) on the first
    shape, the three fastest of them on the others; each checked against the reference."""
    rows = []
    for n_shape, (batch, seqlen) in enumerate(shapes):
        x = prefill_inputs(batch, seqlen)
        n = min(seqlen, 4096)
        part = {
            k: (
                v[:1, :n]
                if k in ("Q", "K", "V", "Z", "Angles")
                else v[:1, :, :n]
                if k in ("ADT", "DT", "Trap")
                else v
            )
            for k, v in x.items()
        }
        ref = mamba3_scan_reference(**{k: v.float() for k, v in part.items()})
        if n_shape == 1:
            ranked = sorted(rows, key=lambda r: r["ms"])
            variants = [(r["chunk"], r["warps"], r["cpp"], r["stages"], r["maxnreg"],
                         r["state_warps"], r["state_stages"]) for r in ranked[:3]]
        for chunk, warps, cpp, stages, *extra in variants:
            maxnreg, state_warps, state_stages = (list(extra) + [0, 0, 0])[:3]
            siso.CHUNK_WARPS[chunk] = warps
            siso.TUNING.update(chunk=chunk, chunks_per_program=cpp, stages=stages,
                               maxnreg=maxnreg or None, state_warps=state_warps or None,
                               state_stages=state_stages or None)
            try:
                got = siso.mamba3_scan_triton(**part, chunk_size=chunk)
            except Exception as exc:  # e.g. a tile configuration out of shared memory
                print(f"variant {chunk, warps, cpp, stages, maxnreg} failed: {exc!r:.300}")
                continue
            err = ((got.float() - ref).norm() / ref.norm()).item()
            fn = functools.partial(siso.mamba3_scan_triton, **x, chunk_size=chunk)
            ms = median_ms(fn)
            official = OFFICIAL_PREFILL_MS[(batch, seqlen)]
            rows.append(
                {
                    "batch": batch,
                    "seqlen": seqlen,
                    "chunk": chunk,
                    "warps": warps,
                    "cpp": cpp,
                    "stages": stages,
                    "maxnreg": maxnreg,
                    "state_warps": state_warps,
                    "state_stages": state_stages,
                    "ms": ms,
                    "official_ms": official,
                    "speedup": official / ms,
                    "Mtok_per_s": batch * seqlen / ms / 1e3,
                    "rel_err_vs_ref": err,
                    "kernels_ms": kernel_breakdown(fn),
                }
            )
            print(
                f"prefill B={batch:<2} L={seqlen:<6} chunk={chunk:<4} warps={warps} cpp={cpp} "
                f"stages={stages} maxnreg={maxnreg} state_warps={state_warps} "
                f"state_stages={state_stages} "
                f"{ms:7.3f} ms  official {official:6.2f} ms  x{official / ms:5.2f}  "
                f"err {err:.1e}  kernels {rows[-1]['kernels_ms']}",
                flush=True,
            )
        del x
        torch.cuda.empty_cache()
    return rows


def step_inputs(batch: int, state_dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, generator=g, device="cuda").to(dtype)

    dt = torch.nn.functional.softplus(rand(batch, H, dtype=torch.float32) - 3)
    x = {
        "Q": rand(batch, G, N),
        "K": rand(batch, G, N),
        "V": rand(batch, H, P),
        "Z": rand(batch, H, P),
        "ADT": -dt * 0.5,
        "DT": dt,
        "Trap": rand(batch, H),
        "Q_bias": rand(H, N, dtype=torch.float32),
        "K_bias": rand(H, N, dtype=torch.float32),
        "Angles": rand(batch, 1, A, dtype=torch.float32).expand(batch, H, A),
        "D": rand(H, dtype=torch.float32),
    }
    state = (
        rand(batch, H, A, dtype=torch.float32),
        rand(batch, H, P, N, dtype=state_dtype),
        rand(batch, H, N),
        rand(batch, H, P),
    )
    return x, state


def step_bytes(batch: int, state_dtype: torch.dtype) -> int:
    """Bytes a step must move: state read and written, inputs and output once."""
    sb = torch.tensor([], dtype=state_dtype).element_size()
    per_head = 2 * (P * N * sb + A * 4 + N * 2 + P * 2) + 3 * P * 2 + 3 * 4 + A * 4
    return batch * (H * per_head + 2 * G * N * 2)


# (pblk, warps[, early state load, streaming hints])
STEP_VARIANTS = [(pblk, w) for pblk in (8, 16, 32, 64) for w in (1, 2, 4, 8)]
STEP_VARIANTS_QUICK = [(16, 4), (16, 2), (32, 4), (8, 2), (64, 4)]
STEP_VARIANTS_CHECK = [(64, 4, False, False), (64, 4, True, False), (64, 2, False, False),
                       (32, 2, False, False)]


def capture_graph(fn, steps: int, warmup: int = 1) -> torch.cuda.CUDAGraph:
    """A CUDA graph of ``steps`` calls of ``fn``, after ``warmup`` calls on a side stream."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(steps):
            fn()
    return graph


def graph_us(fn, steps: int) -> float:
    """Kernel time per call of ``fn`` from a CUDA graph of ``steps`` calls (microseconds)."""
    graph = capture_graph(fn, steps)
    us = median_ms(graph.replay) * 1e3 / steps
    graph.reset()
    return us


def step_error(batch: int, state_dtype: torch.dtype) -> float:
    """Largest relative error (y and the four state tensors) of one in-place step with the
    current ``STEP_CONFIG`` against the float64 reference."""
    x, state = step_inputs(batch, state_dtype, seed=3)
    want_y, want = mamba3_step_reference(**{k: v.double() for k, v in x.items()},
                                         state=tuple(t.double() for t in state))
    y, new = siso.mamba3_step_triton(**x, state=tuple(t.clone() for t in state), inplace=True)
    pairs = [(y, want_y), *zip(new, want, strict=True)]
    return max(((a.double() - b).norm() / b.norm()).item() for a, b in pairs)


def time_step(x: dict, state, batch: int, state_dtype: torch.dtype, bandwidth: float,
              steps_per_graph: int) -> tuple[float, float, float, float]:
    """The in-place step with the current ``STEP_CONFIG``: its error against float64
    (``step_error``), eager and graph (``steps_per_graph`` steps) us per step, bound us."""
    err = step_error(batch, state_dtype)
    step = functools.partial(siso.mamba3_step_triton, **x, state=state, inplace=True)
    return (err, median_ms(step) * 1e3, graph_us(step, steps_per_graph),
            step_bytes(batch, state_dtype) / bandwidth * 1e6)


def bench_decode(batches, bandwidth: float, variants=STEP_VARIANTS, steps_per_graph: int = 100,
                 dtypes=(torch.float32, torch.bfloat16), tmas=(False, True)):
    """The step kernel at every (PBLK, warps[, early, evict]) variant and state tile path
    (``tmas``: pointers, TMA descriptors where the device has them): checked, then timed
    in a graph."""
    rows = []
    default = dict(siso_step.STEP_CONFIG)
    for batch in batches:
        for state_dtype, variant, tma in itertools.product(dtypes, variants, tmas):
            pblk, num_warps, early, evict = (*variant, False, False)[:4]
            siso_step.STEP_CONFIG.update(pblk=pblk, num_warps=num_warps, early_load=early,
                                         evict=evict, tma=tma, tma_min_batch=0)
            x, state = step_inputs(batch, state_dtype)
            pb = siso_step.step_split(P, pblk)[0]
            if tma and not siso_step.step_tma((state[1],), P, pb, batch):
                print(f"decode B={batch} pblk={pblk}: no TMA here, skipped", flush=True)
                continue
            err, eager_us, g_us, bound_us = time_step(x, state, batch, state_dtype, bandwidth,
                                                      steps_per_graph)
            name = "fp32" if state_dtype == torch.float32 else "bf16"
            rows.append({"batch": batch, "state": name, "pblk": pblk, "warps": num_warps,
                         "early": early, "evict": evict, "tma": tma, "graph_us": g_us,
                         "eager_us": eager_us, "bound_us": bound_us,
                         "graph_over_bound": g_us / bound_us, "rel_err_vs_fp64": err,
                         "official_us": OFFICIAL_DECODE_US[batch]})
            print(f"decode B={batch:<3} state={name} pblk={pblk:<2} warps={num_warps} "
                  f"early={int(early)} evict={int(evict)} tma={int(tma)}  graph "
                  f"{g_us:7.2f} us  eager {eager_us:7.2f} us  bound {bound_us:7.2f} us  "
                  f"(x{g_us / bound_us:4.2f})  err {err:.1e}", flush=True)
            del x, state
    siso_step.STEP_CONFIG.update(default)
    return rows


# Named step paths for --step-variants: the state tile by pointers or by TMA.
STEP_PATHS = "pointer,tma"


def step_path_config(name: str) -> dict:
    """``STEP_CONFIG`` settings of a named step path (every batch takes it)."""
    if name not in ("pointer", "tma"):
        raise ValueError(f"unknown step path {name!r} (pointer, tma)")
    return {"pblk": 64, "num_warps": 4, "early_load": True, "evict": False,
            "tma": name == "tma", "tma_min_batch": 0}


def pingpong_us(x: dict, state, steps: int = 20) -> float:
    """Kernel time per step from a CUDA graph of ``steps`` consecutive steps that read one
    state and write another, in turns (the launch of the graph shared by ``steps``)."""
    other = tuple(torch.empty_like(t) for t in state)
    y = torch.empty_like(x["V"])
    args = [x[k] for k in ("Q", "K", "V", "ADT", "DT", "Trap", "Q_bias", "K_bias", "Angles",
                           "D", "Z")]

    def run():
        src, dst = state, other
        for _ in range(steps):
            siso_step.launch_step(*args, src, dst, y)
            src, dst = dst, src

    return graph_us(run, 1) / steps


def bench_step_paths(batches, bandwidth: float, names: list[str], rounds: int = 1,
                     steps_per_graph: int = 100,
                     dtypes=(torch.float32, torch.bfloat16)) -> list[dict]:
    """Each named step path (``STEP_PATHS``) at each batch and state dtype, in turns in one
    run, ``rounds`` times over: checked against float64, then timed eager, in a CUDA graph
    of 100 in-place steps and in a graph of 20 ping-pong steps (``pingpong_us``). A path
    that fails (compile, launch, layout) is reported and the others go on."""
    rows = []
    default = dict(siso_step.STEP_CONFIG)
    for rnd, batch, state_dtype, name in itertools.product(range(rounds), batches, dtypes,
                                                           names):
        sname = "fp32" if state_dtype == torch.float32 else "bf16"
        tag = f"step {name:<16} B={batch:<3} state={sname} round {rnd}"
        if any(r.get("error") and r["variant"] == name for r in rows):
            continue  # failed in an earlier round or batch: reported once
        try:
            siso_step.STEP_CONFIG.update(default)
            siso_step.STEP_CONFIG.update(step_path_config(name))
            x, state = step_inputs(batch, state_dtype)
            pblk = siso_step.step_split(P)[0]
            tma = siso_step.step_tma((state[1],), P, pblk, batch)
            if siso_step.STEP_CONFIG["tma"] and not tma:
                print(f"{tag}: no TMA here, skipped", flush=True)
                continue
            err, eager_us, g_us, bound_us = time_step(x, state, batch, state_dtype, bandwidth,
                                                      steps_per_graph)
            g20_us = pingpong_us(x, state)
        except Exception as exc:  # noqa: BLE001 (report the path, time the others)
            print(f"{tag}: FAILED {type(exc).__name__}: {str(exc)[:600]}", flush=True)
            rows.append({"batch": batch, "state": sname, "variant": name,
                         "error": f"{type(exc).__name__}: {str(exc)[:2000]}"})
            continue
        finally:
            siso_step.STEP_CONFIG.update(default)
        config = step_path_config(name)
        rows.append({"batch": batch, "state": sname, "variant": name, "round": rnd,
                     "pblk": pblk, "warps": config["num_warps"],
                     "early": config["early_load"], "evict": config["evict"], "tma": tma,
                     "graph_us": g_us, "graph20_pingpong_us": g20_us, "eager_us": eager_us,
                     "bound_us": bound_us, "graph_over_bound": g_us / bound_us,
                     "graph20_over_bound": g20_us / bound_us, "rel_err_vs_fp64": err,
                     "official_us": OFFICIAL_DECODE_US.get(batch)})
        print(f"{tag}: graph {g_us:7.2f} us  graph20 {g20_us:7.2f} us  eager {eager_us:7.2f} "
              f"us  bound {bound_us:7.2f} us  (x{g_us / bound_us:5.3f}, graph20 "
              f"x{g20_us / bound_us:5.3f})  err {err:.1e}  [pblk {pblk}, tma {int(tma)}]",
              flush=True)
        del x, state
        torch.cuda.empty_cache()
    return rows


def step_path_table(rows: list[dict]) -> None:
    """Median over rounds (and its range) per step path, batch and state."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["batch"], r["state"], r["variant"]), []).append(r)

    def med(rs, key):
        vals = sorted(r[key] for r in rs)
        return vals[len(vals) // 2], vals[0], vals[-1]

    print("\n| step path | batch | state | pblk | graph us (100 in place; median, min-max) | "
          "graph20 us (ping-pong) | eager us | bound us | graph / bound | graph20 / bound | "
          "rel err vs fp64 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (batch, state, name), rs in sorted(groups.items(), key=lambda kv: kv[0][:2]):
        g, g_lo, g_hi = med(rs, "graph_us")
        g20, g20_lo, g20_hi = med(rs, "graph20_pingpong_us")
        bound = rs[0]["bound_us"]
        print(f"| {name} | {batch} | {state} | {rs[0]['pblk']} | {g:.2f} ({g_lo:.2f}-{g_hi:.2f})"
              f" | {g20:.2f} ({g20_lo:.2f}-{g20_hi:.2f}) | {med(rs, 'eager_us')[0]:.2f} | "
              f"{bound:.2f} | {g / bound:.3f} | {g20 / bound:.3f} | "
              f"{max(r['rel_err_vs_fp64'] for r in rs):.1e} |")


GEMV_SHAPES = {  # (out_features, in_features) of the 1.3B hybrid's decode projections
    "mamba in_proj": (8672, 2048),
    "mamba out_proj": (2048, 4096),
    "attn in_proj": (3072, 2048),
    "attn out_proj": (2048, 2048),
    "lm_head": (50280, 2048),
}
# (BLOCK_N, BLOCK_K, warps, stages)
# (BLOCK_K 4096 is the whole row for K <= 4096: every weight byte of a program in flight
# at once, no serial K loop; the earlier variants with the K loop wait for each tile.)
GEMV_VARIANTS = [(4, 1024, 4, 1), (8, 512, 4, 1), (1, 4096, 2, 1), (2, 4096, 4, 1),
                 (2, 4096, 8, 1), (4, 4096, 8, 1), (8, 4096, 8, 1)]
GEMV_VARIANTS_QUICK = [(4, 1024, 4, 1), (1, 4096, 2, 1), (2, 4096, 4, 1), (4, 4096, 8, 1)]
NOMINAL_TBPS = 3.0  # the H100's bandwidth the targets are stated against


def bench_gemv(bandwidth: float, variants=GEMV_VARIANTS) -> tuple[list[dict], dict]:
    """The one-row bf16 GEMV at each variant and cuBLAS (``F.linear``) on the model's
    projection shapes, each checked against float32; the weights cycle through copies
    worth 256 MiB so that no call finds its weight in L2 (as in the model's decode).
    Returns the rows and the fastest settings per shape (``None``: cuBLAS is faster).
    The variants launch with programmatic dependent launch where the decode does
    (``decode_pdl``); the fastest is also timed without it (the graph's GEMVs overlap)."""
    from mamba3_integrations.kernels import linear_decode

    rows, best = [], {}
    for name, (n, k) in GEMV_SHAPES.items():
        nbytes = n * k * 2
        copies = max(2, -(-256 * 2**20 // nbytes))
        g = torch.Generator(device="cuda").manual_seed(n + k)
        ws = [torch.randn(n, k, generator=g, device="cuda").to(torch.bfloat16) * k**-0.5
              for _ in range(copies)]
        x = torch.randn(1, k, generator=g, device="cuda").to(torch.bfloat16)
        ref = F.linear(x.float(), ws[0].float())

        def err_of(y, ref=ref):
            return ((y.float() - ref).norm() / ref.norm()).item()

        def cycle(fn, ws=ws, x=x):
            for w in ws:
                fn(x, w)

        cublas_us = graph_us(lambda: cycle(F.linear), 4) / copies  # graph_us: per cycle
        cublas_err = err_of(F.linear(x, ws[0]))
        timed = [("cublas", cublas_us, cublas_err, None)]
        for bn, bk, nw, st in variants:
            cfg = dict(block_n=bn, block_k=bk, num_warps=nw, num_stages=st)
            err = err_of(linear_decode.linear_decode_triton(x, ws[0], **cfg))
            if not err < 1e-2:
                raise AssertionError(f"GEMV {name} {cfg}: rel err {err:.1e} vs float32")
            us = graph_us(lambda c=cfg: cycle(
                lambda a, w: linear_decode.linear_decode_triton(a, w, **c)), 4) / copies
            timed.append((f"bn={bn} bk={bk} w={nw} st={st}", us, err, cfg))
        for label, us, err, cfg in timed:
            gbs = nbytes / (us * 1e-6) / 1e9
            row = {"shape": name, "n": n, "k": k, "variant": label, "us": us, "GBps": gbs,
                   "of_nominal": gbs / (NOMINAL_TBPS * 1e3), "of_copy": gbs * 1e9 / bandwidth,
                   "rel_err_vs_fp32": err, "config": cfg}
            rows.append(row)
            print(f"gemv {name:14} N={n:<5} K={k:<4} {label:26} {us:7.2f} us "
                  f"{gbs:6.0f} GB/s  {row['of_nominal']:5.1%} of {NOMINAL_TBPS} TB/s  "
                  f"{row['of_copy']:5.1%} of copy  err {err:.1e}", flush=True)
        fastest = min(timed[1:], key=lambda t: t[1])
        no_pdl = dict(fastest[3], pdl=False)
        us = graph_us(lambda c=no_pdl: cycle(
            lambda a, w: linear_decode.linear_decode_triton(a, w, **c)), 4) / copies
        timed.append((f"{fastest[0]} no PDL", us, fastest[2], None))
        gbs = nbytes / (us * 1e-6) / 1e9
        rows.append({"shape": name, "n": n, "k": k, "variant": timed[-1][0], "us": us,
                     "GBps": gbs, "of_nominal": gbs / (NOMINAL_TBPS * 1e3),
                     "of_copy": gbs * 1e9 / bandwidth, "rel_err_vs_fp32": fastest[2],
                     "config": no_pdl})
        print(f"gemv {name:14} {timed[-1][0]:36} {us:7.2f} us {gbs:6.0f} GB/s", flush=True)
        best[f"{n}x{k}"] = fastest[3] if fastest[1] < cublas_us else None
        print(f"gemv {name}: fastest {fastest[0]} {fastest[1]:.2f} us vs cuBLAS "
              f"{cublas_us:.2f} us", flush=True)
        del ws
        torch.cuda.empty_cache()
    return rows, best


FUSED_VARIANTS = [(4, 1, True), (8, 1, True), (8, 2, True), (16, 2, True), (8, 1, False)]
FUSED_VARIANTS_QUICK = [(8, 1, True), (8, 2, True)]


def bench_fused_step(batch: int = 1, layers: int = 44,
                     variants=FUSED_VARIANTS) -> tuple[list[dict], dict]:
    """The fused SISO mixer step kernel alone (d_model 2048, bf16, fp32 state) at each
    (rows per program, warps, early load): checked against its PyTorch twin, then timed
    over ``layers`` states in turn (as the model's decode, no state found in L2); the
    fastest also without programmatic dependent launch (``pdl``)."""
    from mamba3_integrations.kernels.mamba3_siso_fused_step import (
        mamba3_fused_step_reference,
        mamba3_fused_step_triton,
    )
    from mamba3_integrations.modeling.mamba3_mixer import Mamba3Mixer

    torch.manual_seed(0)
    mixer = Mamba3Mixer(2048, d_state=N, headdim=P, device="cuda", dtype=torch.bfloat16)
    w = mixer.step_weights()
    zx = torch.randn(batch, mixer.in_proj.out_features, device="cuda").to(torch.bfloat16)
    caches = [mixer.allocate_cache(batch) for _ in range(layers)]
    for c in caches:
        for t in c.as_tuple():
            t.copy_(torch.randn(t.shape, device="cuda").to(t.dtype))
    states = [(c.angle, c.ssm, c.k[:, 0], c.v) for c in caches]
    nbytes = 2 * sum(t.numel() * t.element_size() for t in states[0])
    rows, best = [], None
    for pblk, nw, early in variants:
        ref_state = tuple(t.clone() for t in states[0])
        mine = tuple(t.clone() for t in states[0])
        want = mamba3_fused_step_reference(zx, ref_state, w)
        got = mamba3_fused_step_triton(zx, mine, w, pblk=pblk, num_warps=nw, early_load=early)
        err = max(((a.float() - b.float()).norm() / b.float().norm()).item()
                  for a, b in [(got, want), *zip(mine, ref_state, strict=True)])
        if not err < 1e-2:
            raise AssertionError(f"fused step pblk={pblk} warps={nw}: rel err {err:.1e}")

        def run(p=pblk, n=nw, e=early):
            for s in states:
                mamba3_fused_step_triton(zx, s, w, pblk=p, num_warps=n, early_load=e)

        us = graph_us(run, 2) / layers  # graph_us: per run (all layers)
        row = {"batch": batch, "pblk": pblk, "warps": nw, "early": early, "us": us,
               "state_bytes": nbytes, "rel_err_vs_reference": err}
        rows.append(row)
        if best is None or us < best["us"]:
            best = row
        print(f"fused step B={batch} pblk={pblk:<2} warps={nw} early={int(early)}  {us:6.2f} us"
              f"  (state r+w {nbytes / 2**20:.1f} MiB: {nbytes / (us * 1e-6) / 1e9:5.0f} GB/s)"
              f"  err {err:.1e}", flush=True)
    def run_no_pdl(p=best["pblk"], n=best["warps"], e=best["early"]):
        for s in states:
            mamba3_fused_step_triton(zx, s, w, pblk=p, num_warps=n, early_load=e, pdl=False)

    us = graph_us(run_no_pdl, 2) / layers
    rows.append({**best, "us": us, "pdl": False})
    print(f"fused step B={batch} pblk={best['pblk']:<2} warps={best['warps']} early="
          f"{int(best['early'])}  {us:6.2f} us without PDL", flush=True)
    return rows, {"pblk": best["pblk"], "warps": best["warps"], "early": best["early"]}


def bench_mixer_step(batches, steps_per_graph: int = 20) -> list[dict]:
    """A whole SISO mixer decode step (d_model 2048, bf16) in a CUDA graph: the fused
    kernel path (in_proj, one kernel, out_proj) against the unfused one."""
    import os

    from mamba3_integrations.modeling.mamba3_mixer import Mamba3Mixer

    torch.manual_seed(0)
    mixer = Mamba3Mixer(2048, d_state=N, headdim=P, device="cuda", dtype=torch.bfloat16)
    rows = []
    for batch in batches:
        u = torch.randn(batch, 2048, device="cuda", dtype=torch.bfloat16)
        result = {}
        for fused in ("0", "1"):
            os.environ["MAMBA3_FUSED_DECODE"] = fused
            cache = mixer.allocate_cache(batch)
            with torch.inference_mode():
                outs = [mixer.step(u, cache) for _ in range(3)]
                us = graph_us(lambda c=cache, x=u: mixer.step(x, c), steps_per_graph)
            result[fused] = (us, outs)
        os.environ.pop("MAMBA3_FUSED_DECODE")
        err = max(((a.float() - b.float()).norm() / b.float().norm()).item()
                  for a, b in zip(result["1"][1], result["0"][1], strict=True))
        rows.append({"batch": batch, "unfused_us": result["0"][0], "fused_us": result["1"][0],
                     "rel_err_fused_vs_unfused": err})
        print(f"mixer step B={batch:<3} unfused {result['0'][0]:8.2f} us  fused "
              f"{result['1'][0]:8.2f} us  err {err:.1e}", flush=True)
    return rows


def bf16_state_error(batch: int = 8, steps: int = 2000) -> dict:
    """Outputs of fp32-state and bf16-state decoding of the same token stream."""
    torch.manual_seed(0)
    _, s32 = step_inputs(batch, torch.float32, seed=1)
    s32 = tuple(torch.zeros_like(s) for s in s32)
    s16 = (s32[0].clone(), s32[1].to(torch.bfloat16), s32[2].clone(), s32[3].clone())
    errs = []
    for t in range(steps):
        x, _ = step_inputs(batch, torch.float32, seed=100 + t)
        y32, _ = siso.mamba3_step_triton(**x, state=s32, inplace=True)
        y16, _ = siso.mamba3_step_triton(**x, state=s16, inplace=True)
        errs.append(((y16.float() - y32.float()).norm() / y32.float().norm()).item())
    state_err = ((s16[1].float() - s32[1]).norm() / s32[1].norm()).item()
    return {
        "steps": steps,
        "batch": batch,
        "y_rel_err_mean": sum(errs) / len(errs),
        "y_rel_err_max": max(errs),
        "y_rel_err_last": errs[-1],
        "state_rel_err_last": state_err,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    best = {}
    for r in result["prefill"]:
        key = (r["batch"], r["seqlen"])
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    labels = [f"B={b} L={s}" for b, s in best]
    xs = range(len(best))
    ax1.bar(
        [i - 0.2 for i in xs],
        [r["official_ms"] for r in best.values()],
        0.4,
        label="official Triton (published)",
    )
    ax1.bar([i + 0.2 for i in xs], [r["ms"] for r in best.values()], 0.4, label="ours")
    ax1.set_xticks(list(xs), labels)
    ax1.set_ylabel("ms")
    ax1.set_title("prefill forward (H=64, P=64, N=128, bf16)")
    ax1.legend()
    fastest = {}
    for r in result.get("decode", []):
        key = (r["batch"], r["state"])
        if key not in fastest or r["graph_us"] < fastest[key]["graph_us"]:
            fastest[key] = r
    dec = list(fastest.values())
    labels = [f"B={r['batch']} {r['state']}" for r in dec]
    xs = range(len(dec))
    ax2.bar([i - 0.27 for i in xs], [r["bound_us"] for r in dec], 0.27, label="memory bound")
    ax2.bar(list(xs), [r["graph_us"] for r in dec], 0.27, label="ours (CUDA graph)")
    ax2.bar([i + 0.27 for i in xs], [r["eager_us"] for r in dec], 0.27, label="ours (eager)")
    ax2.set_xticks(list(xs), labels)
    ax2.set_yscale("log")
    ax2.set_ylabel("us per step")
    ax2.set_title("decode step")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--quick", action="store_true", help="one variant per shape")
    parser.add_argument("--prefill-only", action="store_true", help="skip the decode step")
    parser.add_argument("--shapes", default="1x16384,1x65536,8x4096",
                        help="prefill shapes BxL; all variants run on the first")
    parser.add_argument("--variants",
                        help="chunk:warps:chunks_per_program:stages"
                        "[:maxnreg[:state_warps[:state_stages]]],...")
    parser.add_argument("--decode-only", action="store_true", help="skip the prefill")
    parser.add_argument("--decode-check", action="store_true",
                        help="decode only: GEMV, step at B=128, fused step at B=1, mixer step")
    parser.add_argument("--step-tma", default="off,on",
                        help="state tile paths of the step variants: off (pointers), on (TMA)")
    parser.add_argument("--step-variants", nargs="?", const=STEP_PATHS,
                        help="decode: time these named step paths in turns instead of the "
                        f"(pblk, warps) sweep; alone: {STEP_PATHS} (the state tile by "
                        "pointers, by TMA)")
    parser.add_argument("--step-batches", default="1,128", help="batches of --step-variants")
    parser.add_argument("--step-rounds", type=int, default=1,
                        help="--step-variants: time every path this many times, in turns")
    parser.add_argument("--step-only", action="store_true",
                        help="decode: the step alone (no mixer step, no bf16-state drift)")
    args = parser.parse_args()
    tmas = tuple({"off": False, "on": True}[v] for v in args.step_tma.split(","))
    if args.decode_check:
        args.decode_only = True
    args.out.mkdir(parents=True, exist_ok=True)
    bandwidth = copy_bandwidth()
    print(
        f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
        f"{triton.__version__}; copy bandwidth {bandwidth / 1e12:.2f} TB/s",
        flush=True,
    )
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    variants = [(32, 4, 32, 3, 0, 2, 2)]
    if args.variants:
        variants = [tuple(int(v) for v in s.split(":")) for s in args.variants.split(",")]
    elif not args.quick:
        variants += [(32, 4, cpp, st, 0, sw, 2) for cpp in (16, 32, 64) for st in (2, 3)
                     for sw in (2, 4) if (cpp, st, sw) != (32, 3, 2)]
        variants += [(64, 4, 16, 2), (64, 8, 8, 2), (16, 4, 32, 2), (32, 8, 16, 2)]
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.date.today().isoformat(),
        "copy_bandwidth_TBps": bandwidth / 1e12,
        "prefill": [] if args.decode_only else bench_prefill(shapes, variants),
    }
    if args.decode_check:
        result["gemv"], result["gemv_best"] = bench_gemv(
            bandwidth, GEMV_VARIANTS_QUICK if args.quick else GEMV_VARIANTS)
        result["decode"] = bench_decode([128], bandwidth, variants=STEP_VARIANTS_CHECK[:2]
                                        if args.quick else STEP_VARIANTS_CHECK,
                                        dtypes=(torch.float32,), tmas=tmas)
        if not args.quick:
            result["decode"] += bench_decode([128], bandwidth, variants=[(64, 4), (32, 4)],
                                             dtypes=(torch.bfloat16,), tmas=tmas)
        result["fused_step"], result["fused_best"] = bench_fused_step(
            1, variants=FUSED_VARIANTS_QUICK if args.quick else FUSED_VARIANTS)
        result["mixer_step"] = bench_mixer_step([1])
    elif not args.prefill_only:
        if args.step_variants:
            batches = [int(b) for b in args.step_batches.split(",")]
            result["decode"] = bench_step_paths(batches, bandwidth,
                                                args.step_variants.split(","),
                                                rounds=args.step_rounds)
        else:
            step_variants = STEP_VARIANTS_QUICK if args.quick else STEP_VARIANTS
            result["decode"] = bench_decode([1, 128], bandwidth, variants=step_variants,
                                            tmas=tmas)
        if not args.step_only:
            result["mixer_step"] = bench_mixer_step([1, 128])
            result["bf16_state"] = bf16_state_error(steps=500 if args.quick else 2000)
            print(json.dumps(result["bf16_state"]))
    result["best"] = {}
    if result["prefill"]:
        first = (result["prefill"][0]["batch"], result["prefill"][0]["seqlen"])
        fastest = min((r for r in result["prefill"] if (r["batch"], r["seqlen"]) == first),
                      key=lambda r: r["ms"])
        result["best"].update({k: fastest[k] for k in ("chunk", "warps", "cpp", "stages",
                                                       "maxnreg", "state_warps",
                                                       "state_stages")})
    failed = [r for r in result.get("decode", []) if "error" in r]
    result["decode"] = [r for r in result.get("decode", []) if "error" not in r]
    if failed:
        result["decode_failed"] = failed
    if result.get("decode"):
        # Fastest at B=128 fp32 among the variants within 25% of the fastest at B=1 (the
        # fused step, not this kernel, runs the model's small batches: with --decode-check
        # only B=128 is measured).
        # Named step paths (--step-variants) need no such filter: TMA runs from
        # tma_min_batch on only.
        keys = ("pblk", "warps", "early", "evict", "tma")
        b1 = {tuple(r[k] for k in keys): r["graph_us"] for r in result["decode"]
              if r["batch"] == 1 and r["state"] == "fp32" and "variant" not in r}
        ok = [r for r in result["decode"] if r["batch"] == 128 and r["state"] == "fp32"
              and (not b1 or b1.get(tuple(r[k] for k in keys), 1e9)
                   <= 1.25 * min(b1.values()))]
        top = min(ok or [r for r in result["decode"] if r["batch"] == 128] or [None],
                  key=lambda r: r["graph_us"] if r else 0)
    if result.get("decode") and top:
        result["best"].update(step_pblk=top["pblk"], step_warps=top["warps"],
                              step_early=top["early"], step_evict=top["evict"],
                              step_tma=top["tma"])
        if "variant" in top:
            result["best"]["step_variant"] = top["variant"]
    if result.get("gemv_best") is not None:
        result["best"]["gemv"] = result["gemv_best"]
    if result.get("fused_best") is not None:
        result["best"]["fused"] = result["fused_best"]
    (args.out / "siso_kernels.json").write_text(json.dumps(result, indent=1) + "\n")
    if result["prefill"]:
        plot(result, args.out / "siso_kernels.png")
    print("\n| shape | ms (best) | official ms | speed-up |")
    print("|---|---|---|---|")
    best = {}
    for r in result["prefill"]:
        key = (r["batch"], r["seqlen"])
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    for (b, s), r in best.items():
        print(
            f"| B={b} L={s} (chunk {r['chunk']}, {r['warps']} warps, {r['cpp']} per program) "
            f"| {r['ms']:.3f} | "
            f"{r['official_ms']} | {r['speedup']:.2f} |"
        )
    if result.get("gemv"):
        print("\n| GEMV (one row, bf16) | fastest variant | us | GB/s | of 3.0 TB/s | cuBLAS us "
              "| cuBLAS of 3.0 TB/s |")
        print("|---|---|---|---|---|---|---|")
        for name in GEMV_SHAPES:
            mine = [r for r in result["gemv"] if r["shape"] == name]
            cub = next(r for r in mine if r["variant"] == "cublas")
            top = min((r for r in mine if r["variant"] != "cublas"
                       and not r["variant"].endswith("no PDL")), key=lambda r: r["us"])
            print(f"| {name} | {top['variant']} | {top['us']:.2f} | {top['GBps']:.0f} | "
                  f"{top['of_nominal']:.1%} | {cub['us']:.2f} | {cub['of_nominal']:.1%} |")
    if result.get("fused_step"):
        top = min((r for r in result["fused_step"] if r.get("pdl", True)),
                  key=lambda r: r["us"])
        print(f"\nfused step B=1: fastest pblk={top['pblk']} warps={top['warps']} "
              f"early={top['early']}: {top['us']:.2f} us")
    print("\n| decode (fastest variant) | pblk | warps | early | evict | tma | graph us | "
          "eager us | bound us | graph / bound | max rel err vs fp64 | official us |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    fastest_step = {}
    for r in result.get("decode", []):
        key = (r["batch"], r["state"], r["tma"])
        if key not in fastest_step or r["graph_us"] < fastest_step[key]["graph_us"]:
            fastest_step[key] = r
    for r in fastest_step.values():
        print(
            f"| B={r['batch']} {r['state']} | {r['pblk']} | {r['warps']} | {int(r['early'])} | "
            f"{int(r['evict'])} | {int(r['tma'])} | {r['graph_us']:.2f} "
            f"| {r['eager_us']:.2f} | {r['bound_us']:.2f} | {r['graph_over_bound']:.3f} | "
            f"{max(x['rel_err_vs_fp64'] for x in result['decode']):.1e} | {r['official_us']} |"
        )
    if any("variant" in r for r in result.get("decode", [])):
        step_path_table([r for r in result["decode"] if "variant" in r])
    for r in result.get("decode_failed", []):
        print(f"FAILED step path {r['variant']} B={r['batch']} {r['state']}: {r['error']}")
    for r in result.get("mixer_step", []):
        print(f"mixer step B={r['batch']}: unfused {r['unfused_us']:.1f} us, fused "
              f"{r['fused_us']:.1f} us, rel err {r['rel_err_fused_vs_unfused']:.1e}")
    print("best:", json.dumps(result["best"]))


if __name__ == "__main__":
    main()
