"""lr-find (issues 15 and 25): the range test plans, prepares and steps as train does."""
import torch

from imgclass.cli import main
from imgclass.training import lr_find as lr_mod
from imgclass.training.loop.fit import Trainer

from helpers import FAST, make_class_folders


def test_lr_find_cli(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=10)
    plot = tmp_path / "lr.png"
    assert main(["lr-find", str(data), "--model", "cnn", "--model-args", "width=8,depth=2", "--img-size", "8",
                 "--batch-size", "8", "--steps", "30", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    lr = float(out.split("suggested learning rate ")[1].split()[0])
    assert 1e-7 <= lr <= 1.0 and plot.stat().st_size > 5000


def test_lr_find_takes_train_data_options(tmp_path, capsys):
    """issue 15: lr-find plans like train: two-level labels and --head reach its model."""
    from helpers import make_tree
    from imgclass.training import lr_find as lr_mod
    built = []
    from imgclass.models.tasks import TwoLevel
    from imgclass.training import build as build_mod
    real = TwoLevel.build
    TwoLevel.build = lambda task, arch, classes: built.append((arch, task)) or real(task, arch, classes)
    try:
        data = make_tree(tmp_path / "tree")
        assert main(["lr-find", str(data), "--hierarchy", "--model", "cnn", "--model-args", "width=8,depth=2",
                     "--img-size", "8", "--head", "16", "--batch-size", "8", "--steps", "10",
                     "--plot", str(tmp_path / "lr.png")]) == 0
    finally:
        TwoLevel.build = real
    (arch, hierarchy), = built
    assert arch.args["head"] == [16] and hierarchy.coarse_classes == ("animal", "plant")
    assert lr_mod.prepare is build_mod.prepare                      # lr-find prepares as train does


def test_every_train_option_reaches_lr_finds_step(tmp_path, monkeypatch):
    """lr-find takes its steps through the Trainer train builds (make_trainer): mixup, class weights, label
    smoothing and bf16 act there as in training (before issue 25 lr-find had its own step without them)."""
    data = make_class_folders(tmp_path / "data", per_class=8)
    seen = []
    real = Trainer.train_step

    def spy(self, x, y, gen, flips):
        seen.append((self.mix is not None, self.class_weights, self.bf16, self.label_smoothing))
        return real(self, x, y, gen, flips)
    monkeypatch.setattr(Trainer, "train_step", spy)
    options = {**FAST, "mixup": 0.4, "class_weights": "auto", "precision": "bf16", "label_smoothing": 0.3}
    found = lr_mod.lr_find(data, out=tmp_path / "lr.png", steps=4, **options)
    assert len(seen) == len(found.lrs) == 4
    mixed, weights, bf16, smoothing = seen[0]
    assert mixed and bf16 and smoothing == 0.3
    assert weights is not None and torch.allclose(weights, torch.ones(3))   # balanced classes: weights of 1
    seen.clear()
    lr_mod.lr_find(data, out=tmp_path / "lr2.png", steps=2, **FAST)
    from imgclass.training.config import TrainConfig
    from imgclass.training.loop.device import use_bf16
    default = (False, None, use_bf16("auto", torch.device("cpu")), TrainConfig().label_smoothing)
    assert seen[0] == default                                                 # the defaults, as train's
