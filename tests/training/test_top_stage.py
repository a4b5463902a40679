"""The top stage of fine-tuning (training/stages/top_stage.py): its split is the backbone's own forward, its cached
activations are the frozen bottom's output, it trains only the top blocks, the planner's choice, resume."""
import pytest
import torch
from safetensors.torch import load_file, save_file

import imgclass
from imgclass.cli import main
from imgclass.data.images import ImageTensors
from imgclass.data.preprocess import Preprocessing
from imgclass.core.errors import UserError
from imgclass.models import create_model
from imgclass.training.stages import budget
from imgclass.training.loop.fit import Callback
from imgclass.training.stages import top_stage
from imgclass.training.stages.top_stage import TopForward, bottom_activations, split_backbone

from helpers import make_class_folders

ARCH = "timm:tf_efficientnet_lite0"
OPTS = dict(model=ARCH, img_size=32, batch_size=8, epochs=2, head_epochs=2, finetune="top", verbose=False,
            tensorboard=False, evaluate=False, workers=1)
BOTTOM = ("backbone.conv_stem.", "backbone.bn1.", *(f"backbone.blocks.{i}." for i in range(5)))
TOP = ("backbone.blocks.5.", "backbone.blocks.6.", "backbone.conv_head.")


@pytest.fixture(scope="module")
def lite0_weights(tmp_path_factory):
    """Random EfficientNet-Lite0 weights in timm's key names: a stand-in for the published ones."""
    import timm
    torch.manual_seed(7)
    net = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    for name, p in net.named_parameters():
        if "bn" not in name:
            p.data.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("w") / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_bottom_then_top_is_the_backbone():
    torch.manual_seed(0)
    model = create_model(ARCH, num_classes=3).eval()
    split = split_backbone(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(TopForward(model, split)(split.bottom(x)), model(x), atol=1e-5)
    trained = {id(p) for g in split.groups for p in g.parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in trained}
    assert names and all(n.startswith(TOP) or n.startswith("backbone.bn2.") for n in names)
    assert split_backbone(create_model("timm:resnet10t", num_classes=3)) is None  # no known cut: full fine-tuning


def test_cached_activations_are_the_frozen_bottoms_output():
    torch.manual_seed(0)
    model = create_model(ARCH, num_classes=3)
    split = split_backbone(model)
    images = torch.randint(0, 256, (5, 3, 48, 48), dtype=torch.uint8)
    pre = Preprocessing(img_size=48, mean=(0.5,) * 3, std=(0.5,) * 3)
    data = ImageTensors(images=images, labels=torch.arange(5), paths=[f"{i}.png" for i in range(5)])
    model.train()  # the cache is computed in inference mode whatever the model's mode
    acts = bottom_activations(split, data, pre, 2, torch.device("cpu"), bf16=False)
    split.bottom.eval()
    with torch.no_grad():
        expected = split.bottom(pre.normalize(images))
    assert acts.images.dtype == torch.bfloat16 and acts.images.shape == expected.shape
    assert torch.allclose(acts.images.float(), expected, rtol=1e-2, atol=1e-2)  # (bf16 keeps 8 bits of mantissa)
    assert torch.equal(acts.labels, data.labels) and acts.paths == data.paths


def test_the_top_stages_views_differ_and_the_loop_draws_among_them():
    """issue 41, item 2: the top stage trained on maps cached from the plain images, so the --augment preset's shift
    never reached it. Its extra views are the images under random draws of the augmentation at the input: view 0 is
    the plain cache, every view differs from every other, the same seed gives the same views (resume), and an epoch
    draws different views for different images."""
    from imgclass.data.augment import BatchAugment
    torch.manual_seed(0)
    model = create_model(ARCH, num_classes=3)
    split = split_backbone(model)
    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    images = torch.stack([torch.stack([(xx * (3 + i) + yy * c) % 256 for c in range(3)]) for i in range(6)]).to(torch.uint8)
    pre = Preprocessing(img_size=48, mean=(0.5,) * 3, std=(0.5,) * 3)
    data = ImageTensors(images=images, labels=torch.arange(6) % 3, paths=[f"{i}.png" for i in range(6)])
    plain = bottom_activations(split, data, pre, 4, torch.device("cpu"), bf16=False)
    augment = BatchAugment("light", hflip=True)
    views = top_stage.augmented_views(split, data, plain, pre, augment, 3, 4, torch.device("cpu"), False, seed=5)
    assert views.images.shape == (6, 3, *plain.images.shape[1:]) and views.images.dtype == torch.bfloat16
    assert torch.equal(views.images[:, 0], plain.images)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        for i in range(6):  # every image's views differ from one another
            assert (views.images[i, a].float() - views.images[i, b].float()).abs().mean() > 1e-3, (i, a, b)
    again = top_stage.augmented_views(split, data, plain, pre, augment, 3, 4, torch.device("cpu"), False, seed=5)
    assert torch.equal(again.images, views.images)
    assert top_stage.augmented_views(split, data, plain, pre, augment, 1, 4, torch.device("cpu"), False, 5) is plain
    assert top_stage.views_that_fit(100.0, 10.0, 1000, 1000, BatchAugment("none", hflip=False)) == 1
    assert top_stage.views_that_fit(100.0, 10.0, 1000, 1000, augment) == top_stage.MAX_VIEWS  # 35 s: 3 more views
    assert top_stage.views_that_fit(100.0, 20.0, 1000, 1000, augment) == 2                    # 35 s: 1 more view
    from imgclass.training.loop import fit as loop_module
    seen = []
    trainer = loop_module.Trainer(
        model=model, optimizer=torch.optim.SGD(split.groups[0].parameters(), lr=0.0), train_data=views,
        val_data=None, pre=pre, augment=BatchAugment("none", hflip=False), epochs=1, batch_size=6, peak_lr=0.0,
        warmup_epochs=0, label_smoothing=0, seed=0, device=torch.device("cpu"), cached_inputs=True,
        train_forward=TopForward(model, split))
    real_loss = trainer.task.loss
    trainer.task = type("T", (), {"loss": lambda self, m, f, x, *a: (seen.append(x.clone()), real_loss(m, f, x, *a))[1],
                                  "correct": lambda self, logits, y: 0, "score": trainer.task.score})()
    trainer.fit()
    drawn = seen[0]
    found = [[(i, v) for i in range(6) for v in range(3) if torch.equal(row.to(torch.bfloat16), views.images[i, v])]
             for row in drawn]  # (the epoch's order is shuffled: each row is looked for among every image's views)
    assert all(len(f) == 1 for f in found) and sorted(f[0][0] for f in found) == list(range(6))
    assert len({f[0][1] for f in found}) > 1  # one view of each image, not the same view for all


def test_the_views_estimate_counts_the_augmentation_itself():
    """Each augmented view costs the augmentation at the input as well as the bottom's forward pass: augment_seconds
    times it per image (after a first call that pays one-off costs), and nothing when there is no augmentation."""
    import time

    class Slow:
        active = True
        calls = 0

        def __call__(self, x, gen, epoch=0):
            Slow.calls += 1
            time.sleep(0.5 if Slow.calls == 1 else 0.032)   # the first call pays one-off costs
            return x

    images = torch.zeros(40, 3, 8, 8, dtype=torch.uint8)
    per_image = top_stage.augment_seconds(images, Slow(), batch_size=32)
    assert Slow.calls == 2 and 0.032 / 32 <= per_image < 0.4 / 32
    inactive = type("Off", (), {"active": False})()
    assert top_stage.augment_seconds(images, inactive) == 0.0


def test_top_stage_trains_only_the_top(tmp_path, lite0_weights):
    data = make_class_folders(tmp_path / "data", per_class=10)
    run = imgclass.train(data, out=str(tmp_path / "run"), weights=str(lite0_weights), **OPTS)
    start = {f"backbone.{k}": v for k, v in load_file(str(lite0_weights)).items()}
    last = load_file(str(run.dir / "checkpoints" / "last.safetensors"))  # the last epoch's weights
    final = {k[len("model."):]: v for k, v in last.items() if k.startswith("model.")}
    bottom = [k for k in final if k.startswith(BOTTOM)]
    top = [k for k in final if k.startswith(TOP) and ("weight" in k and "bn" not in k)]
    assert bottom and top
    assert all(torch.equal(final[k], start[k]) for k in bottom)                  # frozen: bit for bit
    assert all(torch.equal(final[k], start[k]) for k in final if "running_" in k)  # batch-norm statistics kept
    assert sum(not torch.equal(final[k], start[k]) for k in top) == len(top)     # every top conv learnt
    assert run.config.finetune == "top" and len(run.history) == 2
    assert run.metrics["val"]["n"] > 0


def test_finetune_top_refuses_what_it_cannot_do(tmp_path, lite0_weights, capsys):
    data = make_class_folders(tmp_path / "data", per_class=4)
    with pytest.raises(UserError, match="--finetune top: it fine-tunes pretrained weights"):
        imgclass.train(data, out=str(tmp_path / "a"), **dict(OPTS, model="cnn"))
    with pytest.raises(UserError, match="mix images, not the cached activations"):
        imgclass.train(data, out=str(tmp_path / "b"), weights=str(lite0_weights), mixup=0.2, **OPTS)
    import timm
    resnet = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet10t").state_dict().items()}, str(resnet))
    code = main(["train", str(data), "--model", "timm:resnet10t", "--weights", str(resnet), "--finetune", "top",
                 "--img-size", "32", "--out", str(tmp_path / "c"), "--no-evaluate"])
    assert code != 0 and "--finetune top: it is built for one timm EfficientNet backbone" in capsys.readouterr().err


@pytest.mark.parametrize("full, top, stage", [(6.0, 30.0, "full"), (1.5, 8.0, "top"), (1.5, None, "full"),
                                              (0.4, None, "head"), (0.2, 1.0, "head"), (4.0, None, "full")])
def test_choose_finetune(full, top, stage):
    chosen, why = budget.choose_finetune(full, top, "a reason")
    assert chosen == stage
    assert ("a reason" in why) == (top is None and full < budget.FULL_MIN_EPOCHS)  # why there is no top stage


class _Crash(Callback):
    order = 100  # after the checkpoint of the epoch

    def after_epoch(self, t):
        if t.epoch == 1:
            raise KeyboardInterrupt


def test_budget_picks_the_top_stage_and_resume_is_exact(tmp_path, lite0_weights, monkeypatch, imgclass_log):
    """--time-budget with --finetune auto: the planner's choice (pinned here) is said in one line, recorded, and a
    run stopped after its first top-stage epoch resumes to the same weights as one never stopped."""
    monkeypatch.setattr(budget, "plan_budget", lambda *a, **k: (3, 1.0, 2.0))
    monkeypatch.setattr(budget, "choose_finetune", lambda *a: ("top", "pinned by the test"))
    monkeypatch.setattr(budget, "TOP_MAX_EPOCHS", 3)
    data = make_class_folders(tmp_path / "data", per_class=10)
    opts = dict(OPTS, finetune="auto", time_budget="10m", weights=str(lite0_weights), epochs=6)
    full = imgclass.train(data, out=str(tmp_path / "full"), **opts)
    said = [m for _, m in imgclass_log if "the top stage" in m]
    assert len(said) == 1 and "pinned by the test" in said[0] and "--finetune full|top|head" in said[0]
    assert len(full.history) == 3
    with pytest.raises(KeyboardInterrupt):
        imgclass.train(data, out=str(tmp_path / "killed"), callbacks=[_Crash()], **opts)
    resumed = imgclass.train(resume=tmp_path / "killed")
    assert resumed.config.finetune == "top" and len(resumed.history) == 3
    for name in ("model.safetensors", "checkpoints/last.safetensors"):  # the best and the last weights
        a, b = (load_file(str(d / name)) for d in (full.dir, resumed.dir))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = [(d / "metrics.csv").read_text().splitlines() for d in (full.dir, resumed.dir)]
    assert [r.rsplit(",", 1)[0] for r in rows[0]] == [r.rsplit(",", 1)[0] for r in rows[1]]


def test_finetune_head_keeps_the_head_stages_model(tmp_path, lite0_weights):
    data = make_class_folders(tmp_path / "data", per_class=10)
    run = imgclass.train(data, out=str(tmp_path / "run"), weights=str(lite0_weights),
                         **dict(OPTS, finetune="head", evaluate=True))
    start = {f"backbone.{k}": v for k, v in load_file(str(lite0_weights)).items()}
    final = load_file(str(run.dir / "model.safetensors"))
    assert run.history == [] and all(torch.equal(final[k], start[k]) for k in start)  # the backbone untouched
    results = (run.dir / "results.json").read_text()
    assert "no fine-tuning stage" in results and (run.dir / "eval" / "test" / "report.html").is_file()
    with pytest.raises(UserError, match="--finetune head keeps the head stage's model"):
        imgclass.train(data, out=str(tmp_path / "b"), weights=str(lite0_weights),
                       **dict(OPTS, finetune="head", head_epochs=0))
