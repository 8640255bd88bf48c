"""Writing a checkpoint as a deployable file: ONNX (``onnx``), TorchScript and OpenVINO
(``formats``). Kept light: nothing is imported here."""
