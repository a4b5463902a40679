"""augment-preview: the decoded training images, then what train's augmentation makes of them."""
import torch

from imgclass.cli import main
from imgclass.evaluation import plots

from helpers import make_class_folders


def _capture(monkeypatch):
    seen = []
    real = plots.gallery_rows
    monkeypatch.setattr(plots, "gallery_rows", lambda rows, title, cols: seen.append((rows, title)) or real(rows, title, cols))
    return seen


def test_preview_shows_the_augmentation_train_would_use(tmp_path, monkeypatch, capsys):
    data = make_class_folders(tmp_path / "data", per_class=5)
    seen = _capture(monkeypatch)
    out = tmp_path / "none.png"
    assert main(["augment-preview", str(data), "--augment", "none", "--img-size", "16", "--images", "3",
                 "--draws", "2", "--preview", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG") and f"preview: {out}" in capsys.readouterr().out
    rows, title = seen[-1]
    assert [name for name, _, _ in rows] == ["decoded", "draw 1", "draw 2"] and len(rows[0][1]) == 3
    assert all(cap in ("cat", "dog", "fish") for cap in rows[0][2])
    for _, images, _ in rows[1:]:          # augment none: every draw is the decoded image
        assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(images, rows[0][1]))
    assert main(["augment-preview", str(data), "--augment", "none", "--rotate", "30", "--img-size", "16",
                 "--images", "3", "--draws", "2", "--preview", str(tmp_path / "rot.png")]) == 0
    rows, title = seen[-1]
    assert "rotate 30" in title
    assert not all(torch.allclose(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(rows[1][1], rows[0][1]))
    assert main(["augment-preview", str(data), "--images", "0"]) == 2
