#!/bin/bash
# Profile the Mamba-3 kernels with Nsight Compute on the lent GPU; text reports under $OUT.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/prof}; mkdir -p $OUT
S="--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats"
P="python3 benchmarks/profile_kernels.py"
run() { name=$1; shift; timeout 240 ncu --kernel-name regex:'^_' $S "$@" > $OUT/ncu_$name.txt 2>&1; echo "$name rc=$?"; }
run siso_prefill $P siso-prefill --batch 1 --seqlen 16384 --chunk 128
run siso_step $P siso-step --batch 128
run mimo_step $P mimo-step --batch 128
run mimo_prefill $P mimo-prefill --batch 8 --seqlen 4096
for f in $OUT/ncu_*.txt; do echo "== $f"; grep -E "^  _|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Memory Throughput|DRAM Throughput|Compute \(SM\) Th|Block Limit Reg|Block Limit Shared|Dynamic Shared|Local|Stall|Warp Cycles Per Issued|Issued Warp|No Eligible" $f | head -80; done
