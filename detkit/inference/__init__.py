"""Inference: ``Detector``, its inputs, ``Detections``, the ``infer`` verb, explanations and the
runtimes of exported files. Nothing is imported here, to keep importing light."""
