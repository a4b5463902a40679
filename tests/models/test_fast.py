import pytest
import torch

from imgclass.models import create_model
from imgclass.models.fast import FastNet
from imgclass.models.tta import tta_logits


def test_whitening_layer_whitens_patches():
    torch.manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.randn(100, 3, 34, 34), 3, 1)   # strongly correlated pixels
    m = FastNet(10)
    m.init_from_data(x)
    out = m.whiten(x)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    out = out - out.mean(0)
    cov = out.T @ out / len(out)
    assert torch.allclose(torch.diag(cov), torch.ones(12), atol=0.05)
    assert (cov - torch.diag(torch.diag(cov))).abs().max() < 1e-3
    assert not m.whiten.weight.requires_grad


@pytest.mark.parametrize("size,classes", [(16, 2), (32, 10), (50, 101)])
def test_any_size_any_classes(size, classes):
    m = create_model("fast", num_classes=classes, width=8).eval()
    assert m(torch.randn(2, 3, size, size)).shape == (2, classes)


def test_tta_modes():
    torch.manual_seed(0)
    m = create_model("fast", num_classes=3, width=8).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(tta_logits(m, x, "none"), m(x))
        assert torch.allclose(tta_logits(m, x, "flip"), (m(x) + m(x.flip(3))) / 2, atol=1e-6)
        full = tta_logits(m, x, "flip_translate")
    assert full.shape == (4, 3) and not torch.allclose(full, tta_logits(m, x, "flip"))
