"""The torch-free model contract: step features and the onnxruntime step model. Never imports torch."""
