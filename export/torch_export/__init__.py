"""Checkpoint to ONNX, verification and the model card. Needs torch (the `[train]` extra)."""
