"""Transfer learning with a tiny timm model whose weights, saved to a local file, stand in
for published weights (nothing is downloaded)."""
import json
import math

import pytest
import torch
from safetensors.torch import save_file

import imgclass
from imgclass.cli import main
from imgclass.core.errors import UserError
from imgclass.models.modelfile import load_model
from imgclass.models import create_model
from imgclass.models import pretrained
from imgclass.training.stages import transfer
from imgclass.models.inference import compute_features
from imgclass.training.stages.transfer import GradualUnfreeze, backbone_groups

from helpers import make_class_folders

ARCH = "timm:resnet10t"
OPTS = dict(model=ARCH, img_size=32, batch_size=8, epochs=1, head_epochs=2, verbose=False, tensorboard=False,
            evaluate=False, workers=1)


@pytest.fixture(scope="module")
def source_weights(tmp_path_factory):
    """A 'pretrained' backbone: timm's own state dict (its key names), saved as safetensors."""
    import timm
    torch.manual_seed(123)
    net = timm.create_model("resnet10t", num_classes=7)        # its classifier has 7 outputs: dropped on load
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("w") / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path, net.eval()


def test_weights_really_loaded(source_weights):
    path, net = source_weights
    model = create_model(ARCH, num_classes=3)
    transfer.apply_weights_file(model, path, ["a", "b", "c"])
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.features(x), net.forward_head(net.forward_features(x), pre_logits=True), atol=1e-6)


def test_pth_weights_only_and_mismatch(source_weights, tmp_path):
    path, net = source_weights
    pth = tmp_path / "w.pth"
    torch.save({"state_dict": net.state_dict()}, pth)
    model = create_model(ARCH, num_classes=2)
    assert "loaded" in transfer.apply_weights_file(model, pth, ["a", "b"])[0]
    with pytest.raises(UserError, match="do not fit this architecture"):
        transfer.apply_weights_file(create_model("timm:resnet18", num_classes=2), path, ["a", "b"])


def test_cached_feature_head_gradients_equal_uncached(source_weights):
    path, _ = source_weights
    model = create_model(ARCH, num_classes=3, head=[16])
    transfer.apply_weights_file(model, path, ["a", "b", "c"])
    from imgclass.data.preprocess import Preprocessing
    pre = Preprocessing(img_size=32)
    images = torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    feats = compute_features(model, images, pre, 4, torch.device("cpu"))
    model.eval()                         # the frozen backbone runs in inference mode in both paths
    torch.nn.functional.cross_entropy(model.forward_head(feats), y).backward()
    cached = [p.grad.clone() for p in model.head.parameters()]
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(pre.normalize(images)), y).backward()
    for a, p in zip(cached, model.head.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_gradual_unfreeze_schedule():
    model = create_model(ARCH, num_classes=2)
    groups = backbone_groups(model.backbone)
    cb = GradualUnfreeze(groups)

    class T:
        epochs = 4
    t = T()
    t.model = model
    for epoch in range(4):
        t.epoch = epoch
        cb.before_epoch(t)
        flags = [all(p.requires_grad for p in g.parameters()) for g in groups]
        k = math.ceil(len(groups) * (epoch + 1) / 4)
        assert flags == [False] * (len(groups) - k) + [True] * k   # the top k groups, and only they
    assert len(groups) >= 4


def _backbone_changed(run_dir, path):
    """Whether the last weights trained (the model file may be the head stage's) differ from the source's."""
    from safetensors.torch import load_file
    src = load_file(str(path))
    last = load_file(str(run_dir / "checkpoints" / "last.safetensors"))
    state = {k[len("model.backbone."):]: v for k, v in last.items() if k.startswith("model.backbone.")}
    return any(not torch.equal(state[k], src[k]) for k in state if k in src and state[k].dtype.is_floating_point
               and "running" not in k)


def test_staged_fine_tuning_freezes_what_it_says(source_weights, tmp_path):
    path, _ = source_weights
    data = make_class_folders(tmp_path / "data", per_class=10, ext=".png")
    frozen = imgclass.train(data, out=str(tmp_path / "frozen"), weights=str(path), unfreeze="none", **OPTS)
    assert not _backbone_changed(frozen.dir, path)                 # backbone exactly as loaded
    assert (frozen.dir / "head_metrics.csv").read_text().count("\n") == 3   # header + 2 head epochs
    tuned = imgclass.train(data, out=str(tmp_path / "tuned"), weights=str(path), unfreeze="all", **OPTS)
    assert _backbone_changed(tuned.dir, path)


def test_imgclass_model_file_as_weights(source_weights, tmp_path):
    path, _ = source_weights
    data = make_class_folders(tmp_path / "data", per_class=8)
    first = imgclass.train(data, out=str(tmp_path / "a"), weights=str(path), **OPTS)
    other = make_class_folders(tmp_path / "other", classes=("x", "y"), per_class=8, seed=5)
    second = imgclass.train(other, out=str(tmp_path / "b"), weights=str(first.dir / "model.safetensors"),
                            unfreeze="none", **dict(OPTS, head_epochs=1))
    m1, _ = load_model(first.dir)
    m2, h2 = load_model(second.dir)
    assert h2.classes == ("x", "y")
    for k, v in m1.backbone.state_dict().items():
        if v.dtype.is_floating_point and "running" not in k:
            assert torch.equal(v, m2.backbone.state_dict()[k]), k


def test_offline_pretrained_error_is_exact(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(pretrained, "timm_pretrained_file", lambda arch: None)
    monkeypatch.setattr(pretrained, "_online", lambda host, timeout=3.0: False)
    data = make_class_folders(tmp_path / "data", per_class=4)
    code = main(["train", str(data), "--model", "timm:resnet18", "--pretrained", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("imgclass: error: pretrained weights for timm:resnet18 (hf-hub:timm/resnet18.a1_in1k) "
                          "are not available: no network and no cached copy in ")
    assert "--weights FILE" in err


def test_head_layers(tmp_path):
    model = create_model("timm:resnet10t", num_classes=4, head=[16, 8], dropout=0.2)
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(model.num_features, 16), (16, 8), (8, 4)]
    assert any(isinstance(m, torch.nn.Dropout) for m in model.head.modules())


def test_course_head_layout_drops_each_once():
    """--head 100 --dropout 0.2: Linear(100) -> ReLU -> Dropout(0.2) -> Linear(classes), as the Keras course
    builds it; the features are not dropped a second time. Without --head: one dropout before the Linear."""
    model = create_model("timm:resnet10t", num_classes=5, head=[100], dropout=0.2)
    layers = list(model.head)
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert layers[2].p == 0.2 and layers[0].out_features == 100 and layers[3].out_features == 5
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 1
    model.reset_head(3)
    assert [type(m).__name__ for m in model.head] == ["Linear", "ReLU", "Dropout", "Linear"]
    plain = create_model("timm:resnet10t", num_classes=5, dropout=0.3)
    assert isinstance(plain.dropout, torch.nn.Dropout) and plain.dropout.p == 0.3
    assert sum(isinstance(m, torch.nn.Dropout) for m in plain.modules()) == 1
    # dropout acts in training only, and really on the hidden layer's output
    model.train()
    torch.manual_seed(0)
    feats = torch.ones(64, model.num_features)
    hidden = model.head[:2](feats)
    assert not torch.equal(model.head[:3](feats), hidden)
    model.eval()
    assert torch.equal(model.head[:3](feats), hidden)


def test_pretrained_from_hub_cache_file(tmp_path, monkeypatch, capsys):
    """--pretrained and predict --pretrained read the hub-cached weights (a local stand-in here)."""
    import timm
    torch.manual_seed(7)
    net = timm.create_model("resnet10t", num_classes=1000).eval()
    cached = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(cached))
    monkeypatch.setattr(pretrained, "timm_pretrained_file", lambda arch: str(cached))
    img = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (40, 30), (200, 30, 30)).save(img)
    assert main(["predict", ARCH, "--pretrained", str(img), "--format", "json", "--top-k", "2"]) == 0
    result = json.loads(capsys.readouterr().out)[0]["top_k"]
    from imgclass.data.preprocess import Preprocessing
    cfg = timm.get_pretrained_cfg("resnet10t")
    pre = Preprocessing(img_size=cfg.input_size[-1], mean=cfg.mean, std=cfg.std)
    with torch.no_grad():
        probs = torch.softmax(net(pre.normalize(torch.from_numpy(pre.load(img)).permute(2, 0, 1)[None])), 1)[0]
    from timm.data import ImageNetInfo
    assert result[0]["label"] == ImageNetInfo().index_to_description(int(probs.argmax()))
    assert abs(result[0]["probability"] - float(probs.max())) < 1e-5

    data = make_class_folders(tmp_path / "data", per_class=6)
    run = imgclass.train(data, out=str(tmp_path / "run"), pretrained=True, **dict(OPTS, head_epochs=1, unfreeze="none"))
    model, header = load_model(run.dir)
    assert header.preprocessing.mean == tuple(cfg.mean)           # the backbone's own statistics
    for k, v in model.backbone.state_dict().items():
        if v.dtype.is_floating_point and "running" not in k:
            assert torch.equal(v, net.state_dict()[k]), k           # frozen backbone = published weights
