"""Detector models: the grid-cell family (``yolo``) and SSD (``ssd``), with their building blocks;
each maps ``[B, 3, H, W]`` float images in [0, 1] to one raw ``[B, N, 5 + C]`` and decodes it
(:class:`detkit.core.protocols.DetectionModel`)."""
