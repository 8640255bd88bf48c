"""Detector models: the grid-cell family (``yolo``) and SSD (``ssd``), with their building blocks.

Every model maps ``[B, 3, H, W]`` float images in [0, 1] to one raw tensor ``[B, N, 5 + C]`` and
has ``priors(h, w, device)``, ``feature_sizes(h, w)`` and ``decode(raw, priors) -> (boxes xyxy
input px, objectness c, class probabilities p)``.
"""
