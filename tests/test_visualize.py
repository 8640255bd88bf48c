"""detkit.core.visualize.draw_boxes: the one drawer behind Detections.draw, the error gallery and the
dataset mosaics."""

from __future__ import annotations

import numpy as np

from detkit.core.visualize import draw_boxes

RED, GREEN = (255, 0, 0), (0, 255, 0)


def test_outline_and_tag_in_the_boxes_colour_input_untouched():
    image = np.zeros((100, 100, 3), np.uint8)
    out = draw_boxes(image, [[20, 40, 80, 90], [5, 5, 15, 15]], [RED, GREEN], ["cat", None])
    assert not image.any()  # a copy is drawn on
    for y, x in ((40, 50), (65, 20)):  # top and left edges (anti-aliased: red, maybe dimmer)
        assert out[y, x, 0] > 100 and not out[y, x, 1:].any()
    tag = out[25:38, 21:40].reshape(-1, 3)  # above the red box's top-left corner
    assert (tag == RED).all(axis=1).sum() > 50 and (tag[:, 1] > 100).any()  # white text on red
    assert out[15, 10, 1] > 100 and not out[15, 10, [0, 2]].any()
    assert not out[0:4, 5:30].any()  # no text: no tag above the green box


def test_thickness_and_no_texts(tmp_path):
    out = draw_boxes(
        np.zeros((50, 50, 3), np.uint8), np.array([[10.0, 10, 40, 40]]), [RED], thickness=3
    )
    assert (out[11, 25] == RED).all() and not out[14, 25].any()  # 3 px line, centred on y=10
    assert not out[:5].any()  # nothing but the line


def test_the_gallery_and_mosaics_draw_through_it(monkeypatch):
    import torch

    import detkit.data.stats as stats
    import detkit.eval.gallery as gallery
    from detkit.eval.gallery import ImageErrors

    calls = []
    monkeypatch.setattr(gallery, "draw_boxes", lambda *a, **k: calls.append(a[2:4]) or a[0])
    monkeypatch.setattr(stats, "draw_boxes", lambda *a, **k: calls.append(a[2:4]) or a[0])
    item = ImageErrors(image_id=1)
    item.truth.append(np.array([1.0, 1, 9, 9]))
    item.dets.append((np.array([2.0, 2, 8, 8]), 0.9, 3, "tp"))
    gallery.draw_image_errors(np.zeros((300, 300, 3), np.uint8), item, {3: "cat"})
    sample = {"image": torch.zeros(3, 32, 32, dtype=torch.uint8),
              "boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([0])}  # fmt: skip
    stats._draw_item(sample, ["dog"])
    assert [texts for _, texts in calls] == [[None, "tp: cat 0.90"], ["dog"]]


def test_save_figure_by_suffix_atomically(tmp_path):
    from matplotlib.figure import Figure

    from detkit.core.visualize import save_figure

    fig = Figure(figsize=(2, 1), dpi=50)
    fig.add_subplot().plot([0, 1], [1, 0])
    png = save_figure(fig, tmp_path / "out" / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert save_figure(fig, tmp_path / "out" / "a.svg").read_text().lstrip().startswith("<?xml")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "a.svg"]
