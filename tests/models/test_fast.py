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


def test_optimizer_groups_follow_airbench():
    from imgclass.models.fast import BatchNorm
    from imgclass.training.loop.optim import make_optimizer, set_lr
    m = FastNet(10, widths=(8, 16, 16))
    opt = make_optimizer(m, "sgd", 1.5, 1e-3, 0.85)
    plain, norm_biases, whiten_bias = opt.param_groups
    bn = [mod.bias for mod in m.modules() if isinstance(mod, BatchNorm)]
    assert {id(p) for p in norm_biases["params"]} == {id(p) for p in bn}
    assert norm_biases["lr_scale"] == 64 and norm_biases["weight_decay"] == 1e-3 / 64
    assert whiten_bias["params"] == [m.whiten.bias] and whiten_bias["active_until"] == 0.3
    assert all(p.ndim > 1 for p in plain["params"]) and id(m.whiten.weight) not in {id(p) for p in plain["params"]}
    set_lr(opt, 1.0, progress=0.1)
    assert [g["lr"] for g in opt.param_groups] == [1.0, 64.0, 1.0]
    set_lr(opt, 0.5, progress=0.3)   # the whitening bias is frozen from 30% of training on
    assert [g["lr"] for g in opt.param_groups] == [0.5, 32.0, 0.0]


def test_pooling_floors_like_airbench(tmp_path):
    m = FastNet(3, widths=(8, 16, 16)).eval()
    sizes = []
    for group in [m.layers[1], m.layers[2], m.layers[3]]:
        group.register_forward_hook(lambda mod, inp, out: sizes.append(out.shape[-1]))
    m(torch.zeros(1, 3, 32, 32))
    assert sizes == [15, 7, 3]          # 31 after the 2x2 whitening conv, then floor halvings
    sizes.clear()
    m(torch.zeros(1, 3, 9, 9))
    assert sizes == [4, 2, 1]           # the smallest input it takes
    import imgclass
    from imgclass.core.errors import UserError
    from helpers import make_class_folders
    data = make_class_folders(tmp_path / "d", per_class=4)
    with pytest.raises(UserError, match="needs inputs of at least 9 px, not 8"):
        imgclass.train(data, model="fast", img_size=8, out=str(tmp_path / "run"), verbose=False)
