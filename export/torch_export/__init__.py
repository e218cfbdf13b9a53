"""Checkpoint to ONNX, verification and the model card. Needs torch (the `[train]` extra).

Imports run one way: `onnx_export` -> `model_card` -> `verify` -> `parity`, and `onnx_export` -> `parity`.
"""
