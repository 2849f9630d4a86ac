"""Deployment: every learner's result as files for a runtime (ExecuTorch ``.pte`` lowered to
XNNPACK, ONNX for onnxruntime), each checked against the PyTorch model in its own runtime."""
