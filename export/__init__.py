"""The model contract between training and the runtime, and the exporter that fulfils it.

- `export.runtime` is torch-free: the features a step model takes (`features`) and the ONNX step
  model as the predictor runs it (`step_model`). Nodes, the evaluator's baseline and training import it.
- `export.torch_export` needs torch: checkpoint to ONNX (`onnx_export`), verification against the
  checkpoint (`verify`), the model card (`model_card`) and the checks all three share (`parity`).
"""
