import pytest
import torch

from imgclass.core.errors import UserError
from imgclass.models import create_model, list_models, register


@pytest.mark.parametrize("name", [s.name for s in list_models()])
def test_every_builtin_model_builds_and_runs(name):
    model = create_model(name, num_classes=5, dropout=0.1, **({"img_size": 16} if name == "mlp" else {}))
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    assert model(x).shape == (2, 5)
    feats = model.features(x)
    assert feats.shape == (2, model.num_features)
    model.reset_head(7)
    assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", ["torchvision:resnet18", "torchvision:mobilenet_v3_small", "timm:resnet10t",
                                  "timm:efficientnet_b0", "timm:vit_tiny_patch16_224"])
def test_zoo_sample_builds_with_new_head(name):
    model = create_model(name, num_classes=3).eval()
    size = 224 if "vit" in name else 64
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 3)
    assert model.head.out_features == 3


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register("cnn", "again")(lambda **kw: None)


@pytest.mark.parametrize("name,msg", [("resnt", "did you mean 'resnet'"), ("timm:no_such_net", "timm has no model"),
                                      ("torchvision:nope", "torchvision has no model"), ("keras:x", "unknown model")])
def test_unknown_names(name, msg):
    with pytest.raises(UserError, match=msg):
        create_model(name, num_classes=2)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "fast"])
@pytest.mark.parametrize("act,layer", [("relu", torch.nn.ReLU), ("leaky_relu", torch.nn.LeakyReLU),
                                       ("gelu", torch.nn.GELU)])
def test_activation_of_the_builtin_networks(name, act, layer):
    extra = {"fast": {}, "mlp": {"img_size": 16, "head": (8,)}}.get(name, {"head": (8,)})  # a hidden head layer
    model = create_model(name, num_classes=3, activation=act, **extra)
    kinds = {type(m) for m in model.modules()} & {torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.GELU}
    assert kinds == {layer}                       # every activation, the head's hidden layer's too
    assert model.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    model.reset_head(4)
    assert {type(m) for m in model.modules()} & {torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.GELU} == {layer}
