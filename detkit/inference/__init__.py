"""Inference: :class:`~detkit.inference.predict.Detector` (letterbox -> network -> decode ->
``c * p`` -> NMS -> image pixels), its inputs (images, folders, videos), results
(:class:`~detkit.inference.detections.Detections`), the ``infer`` verb (``run``), explanations,
and the runtimes that execute exported files. Kept light: nothing is imported here."""
