"""Fused CPU paths: plain torch ops arranged to read the logits once (no compiled extension)."""
