"""Fused loss kernels, one folder per backend (``cpu/``, ``triton/``); see CONTRACT.md."""
