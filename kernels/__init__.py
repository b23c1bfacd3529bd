"""Mamba-3 kernels: Triton for CUDA and PyTorch references for everything else, behind one dispatch."""
