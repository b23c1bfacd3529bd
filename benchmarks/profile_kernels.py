"""Run one Mamba-3 kernel workload once, for Nsight Compute (``ncu``) to profile.

    ncu --section SpeedOfLight --section LaunchStats --section Occupancy \
        python benchmarks/profile_kernels.py siso-prefill --batch 1 --seqlen 16384

Workloads: ``siso-prefill``, ``siso-step``, ``mimo-prefill``, ``mimo-step`` at the shapes
of the benchmarks (nheads 64, headdim 64, d_state 128, bf16).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import bench_mimo_kernels as mimo
from benchmarks.bench_siso_kernels import prefill_inputs, step_inputs
from mamba3_integrations.kernels import mamba3_mimo_step
from mamba3_integrations.kernels import mamba3_siso_triton as siso


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workload", choices=["siso-prefill", "siso-step", "mimo-prefill",
                                             "mimo-step"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seqlen", type=int, default=16384)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--warps", type=int, default=8, help="SISO chunk kernels")
    parser.add_argument("--cpp", type=int, default=16, help="SISO chunks per program")
    parser.add_argument("--maxnreg", type=int, default=0, help="SISO register cap (0: none)")
    args = parser.parse_args()
    siso.CHUNK_WARPS[args.chunk] = args.warps
    siso.TUNING.update(chunks_per_program=args.cpp, maxnreg=args.maxnreg or None)
    if args.workload == "siso-prefill":
        x = prefill_inputs(args.batch, args.seqlen)
        siso.mamba3_scan_triton(**x, chunk_size=args.chunk)
    elif args.workload == "siso-step":
        x, state = step_inputs(args.batch, torch.float32)
        siso.mamba3_step_triton(**x, state=state, inplace=True)
    elif args.workload == "mimo-prefill":
        x = mimo.prefill_inputs(args.batch, args.seqlen)
        mimo.ours_prefill(x)
    else:
        x, state = mimo.decode_inputs(args.batch, mimo.R)
        mamba3_mimo_step(**x, state=state, inplace=True)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
