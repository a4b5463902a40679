"""A run on a folder with planted bad files trains to the end; every command copes."""
import csv
import json

import imgclass
from imgclass.cli import main

from helpers import FAST
from messy import BAD, ODD, make_messy


def test_messy_folder_end_to_end(tmp_path, capsys):
    data = make_messy(tmp_path / "data")
    run = imgclass.train(data, out=str(tmp_path / "run"), **dict(FAST, epochs=2, evaluate=True, img_size=16,
                                                                   class_weights="auto", balanced_sampler=True))
    with open(run.dir / "bad_files.csv", newline="") as fh:
        bad = {r["path"]: r["reason"] for r in csv.DictReader(fh)}
    assert set(bad) == {f"train/{p}" for p in BAD}
    with open(run.dir / "splits.csv", newline="") as fh:
        listed = {r["path"] for r in csv.DictReader(fh)}
    assert {f"train/{p}" for p in ODD} <= listed
    assert not any(name in p for p in listed for name in (".DS_Store", "Thumbs.db", "notes.txt"))
    used = sum(m["n"] for m in run.metrics.values())
    assert used == len(listed) - len(BAD)
    report = (run.dir / "eval" / "test" / "report.md").read_text()
    assert "Files skipped by the run" in report and "train/dog/bomb.png" in report

    # predict, submit and evaluate on the messy folder: no crash, bad files reported
    assert main(["predict", str(run.dir), str(data / "train" / "cat"), "--format", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    errors = {r["image"].split("/")[-1] for r in results if "error" in r}
    assert errors == {"zero.jpg", "page.jpg"}
    assert main(["submit", str(run.dir), str(data / "train" / "dog"), "--out", str(tmp_path / "s.csv")]) == 0
    assert main(["evaluate", str(run.dir), str(data), "--split", "all", "--out", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert len(m["unreadable"]) == 4


def test_class_with_no_usable_image_is_a_clear_error(tmp_path, capsys):
    from helpers import make_class_folders
    data = make_class_folders(tmp_path / "d", classes=("ok", "other"), per_class=5)
    for f in (data / "other").iterdir():
        f.write_text("not an image")
    code = main(["train", str(data), "--out", str(tmp_path / "r"), "--epochs", "1", "--no-verbose"])
    err = capsys.readouterr().err
    assert code == 2 and "other" in err and "no usable training image" in err


def test_balanced_sampler_and_class_weights():
    import torch
    from sklearn.utils.class_weight import compute_class_weight

    from imgclass.data.augment import BatchAugment
    from imgclass.data.images import ImageTensors
    from imgclass.data.preprocess import Preprocessing
    from imgclass.models import create_model
    from imgclass.training.loop.fit import Trainer

    labels = torch.tensor([0] * 90 + [1] * 10)
    data = ImageTensors(torch.zeros(100, 3, 4, 4, dtype=torch.uint8), labels, [""] * 100)
    model = create_model("mlp", num_classes=2, img_size=4, width=4, depth=1)
    t = Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), train_data=data, val_data=None,
                pre=Preprocessing(img_size=4), augment=BatchAugment("none"), epochs=1, batch_size=10, peak_lr=0.0,
                warmup_epochs=0, label_smoothing=0.0, seed=0, device=torch.device("cpu"), balanced_sampler=True)
    drawn = torch.cat([labels[t.epoch_order(torch.Generator().manual_seed(s))] for s in range(20)])
    share = float((drawn == 1).float().mean())
    assert 0.45 < share < 0.55          # the 10% class is drawn half the time
    t.balanced_sampler = False
    assert sorted(t.epoch_order(torch.Generator().manual_seed(0)).tolist()) == list(range(100))  # a permutation
    import numpy as np
    w = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels.numpy())
    assert w[1] / w[0] == 9.0           # what --class-weights auto passes to the loss
