"""Fused Triton paths (CUDA, or the interpreter with ``TRITON_INTERPRET=1``), one loss a file."""
