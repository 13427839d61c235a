"""Export a run directory to checked ONNX / TFLite / CoreML / ExecuTorch bundles."""
