"""Checkpoints as deployable files: ONNX (``onnx``), TorchScript and OpenVINO (``formats``)."""
