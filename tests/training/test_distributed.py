"""2-process gloo DDP on CPU equals a single process with the combined batch; rank 0 alone writes."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_class_folders, make_tagged_folder

pytestmark = pytest.mark.slow  # launches torchrun process groups

# a model without batch norm, no augmentation or dropout: the two runs must take the same steps
ARGS = ["--model", "mlp", "--model-args", "width=16,depth=1,norm=false", "--img-size", "8", "--epochs", "2",
        "--batch-size", "8", "--augment", "none", "--label-smoothing", "0", "--no-tensorboard", "--no-evaluate",
        "--workers", "1", "--no-verbose", "--device", "cpu",
        "--precision", "fp32"]  # float32: bf16 rounding differs between one and two shards


def weights(run):
    return {k: v for k, v in load_file(str(run / "checkpoints" / "last.safetensors")).items() if k.startswith("model.")}


def test_two_process_ddp_equals_single_process(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=16)      # 48 images: 38 train (val/test carved)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "imgclass", "train", str(data), "--out", str(tmp_path / "single")]
                            + ARGS, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "imgclass", "train", str(data), "--out", str(tmp_path / "ddp")] + ARGS,
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = weights(tmp_path / "single"), weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    # the same epochs and losses: metrics reduced across ranks
    sa = [r.rsplit(",", 1)[0] for r in (tmp_path / "single" / "metrics.csv").read_text().splitlines()]
    sb = [r.rsplit(",", 1)[0] for r in (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()]
    assert len(sa) == len(sb) == 3
    for ra, rb in zip(sa[1:], sb[1:]):
        assert all(abs(float(x) - float(y)) < 1e-4 for x, y in zip(ra.split(","), rb.split(",")))
    # rank 0 alone wrote: one run folder, no stray folders, no temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "ddp", "single"]
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "ddp").rglob("*"))
    assert (tmp_path / "ddp" / "model.safetensors").is_file()
    import json
    assert json.loads((tmp_path / "ddp" / "results.json").read_text())["processes"] == 2


def single_and_ddp(data, args: list[str], tmp_path) -> dict:
    """The same training in one process and in two torchrun processes: {"single": run folder, "ddp": run folder}."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {}
    for name, launcher in (("single", [sys.executable, "-m", "imgclass"]),
                           ("ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    "--nproc-per-node=2", "-m", "imgclass"])):
        proc = subprocess.run(launcher + ["train", str(data), "--out", str(tmp_path / name)] + args + ARGS, env=env,
                              capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = tmp_path / name
    return runs


def test_two_process_ddp_with_tags_equals_single_process(tmp_path):
    """Several tags per image under DDP: the same weights, and the validation mAP (which is no sum of per-shard
    parts: the ranks gather their logits) equal to one process's."""
    data, tags = make_tagged_folder(tmp_path / "set", n=48)
    runs = single_and_ddp(data, ["--labels", str(tags), "--multi-label"], tmp_path)
    a, b = weights(runs["single"]), weights(runs["ddp"])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    import csv
    rows = {name: list(csv.DictReader((run / "metrics.csv").open())) for name, run in runs.items()}
    assert len(rows["single"]) == len(rows["ddp"]) == 2
    for ra, rb in zip(rows["single"], rows["ddp"]):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert abs(float(ra[key]) - float(rb[key])) < 1e-4, key
    assert 0.0 < float(rows["ddp"][-1]["val_acc"]) <= 1.0  # a validation mAP, not a NaN
    import json
    single, ddp = (json.loads((run / "results.json").read_text()) for run in runs.values())
    assert ddp["processes"] == 2
    assert ddp["metrics"]["val"]["map"] == pytest.approx(single["metrics"]["val"]["map"], abs=1e-4)


def test_each_rank_sees_its_own_shard():
    """Rank 1 of 2 trains on every other image of each global batch, never on rank 0's."""
    from imgclass.data.augment import BatchAugment
    from imgclass.data.images import ImageTensors
    from imgclass.data.preprocess import Preprocessing
    from imgclass.models import create_model
    from imgclass.training.loop.distributed import Dist
    from imgclass.training.loop.fit import Trainer

    class FakeDist(Dist):
        def sum(self, *values):
            return list(values)

    images = torch.arange(12, dtype=torch.uint8).view(12, 1, 1, 1).expand(12, 3, 4, 4).contiguous()
    seen = []
    model = create_model("mlp", num_classes=2, img_size=4, width=4, depth=1, norm=False)
    model.register_forward_pre_hook(lambda m, a: seen.append(a[0]) if m.training else None)
    t = Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), pre=Preprocessing(img_size=4,
                mean=(0, 0, 0), std=(1, 1, 1)), train_data=ImageTensors(images, torch.zeros(12, dtype=torch.long),
                [""] * 12), val_data=None, augment=BatchAugment("none"), epochs=1, batch_size=4, peak_lr=0.0,
                warmup_epochs=0, label_smoothing=0, seed=3, device=torch.device("cpu"), dist=FakeDist(1, 2, 1))
    t.fit()
    got = sorted(int(round(float(x[i, 0, 0, 0]) * 255)) for x in seen for i in range(len(x)))
    order = torch.randperm(12, generator=torch.Generator().manual_seed(3 * 100_003))
    expected = sorted(int(v) for start in range(0, 12, 4) for v in order[start:start + 4][1::2])
    assert [len(x) for x in seen] == [2, 2, 2] and got == expected


def test_devices_shortcut(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=8)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "imgclass", "train", str(data), "--out", str(tmp_path / "r"),
                           "--devices", "2"] + ARGS, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout
    assert (tmp_path / "r" / "model.safetensors").is_file()


def test_ddp_fine_tunes_a_pretrained_backbone(tmp_path):
    """Two processes with the installed ImageNet EfficientNet-Lite0: head stage, then gradual unfreezing
    (groups frozen in early epochs get no gradient: DDP must expect that)."""
    data = make_class_folders(tmp_path / "data", per_class=8)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["--model", "timm:tf_efficientnet_lite0", "--pretrained", "--img-size", "32", "--epochs", "2",
            "--head-epochs", "1", "--batch-size", "8", "--no-tensorboard", "--no-evaluate", "--workers", "1",
            "--no-verbose", "--device", "cpu", "--layer-lr-decay", "0.0"]  # decay 0: only the top group may move
    proc = subprocess.run([sys.executable, "-m", "imgclass", "train", str(data), "--out", str(tmp_path / "r"),
                           "--devices", "2"] + args, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["processes"] == 2 and results["weights"]["source"] == "package"
    assert results["epochs_run"] == 2
    # the ImageNet weights were really loaded in the workers: with a layer-lr decay of 0 every backbone group but
    # the top one learns at lr 0, so the stem is still exactly the package's
    from imgclass.models.pretrained import pretrained_state
    state, _ = pretrained_state("timm:tf_efficientnet_lite0")
    last = load_file(str(tmp_path / "r" / "checkpoints" / "last.safetensors"))
    assert torch.equal(last["model.backbone.conv_stem.weight"], state["conv_stem.weight"])
    assert (tmp_path / "r" / "head_metrics.csv").is_file()


def test_two_process_ddp_with_a_number_per_image_equals_single_process(tmp_path):
    """A number per image under DDP: the same weights and the same validation MAE as one process."""
    from helpers import make_numbered_folder
    data, labels = make_numbered_folder(tmp_path / "set", n=48)
    runs = single_and_ddp(data, ["--labels", str(labels), "--label-column", "target", "--regression"], tmp_path)
    a, b = weights(runs["single"]), weights(runs["ddp"])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    import json
    single, ddp = (json.loads((run / "results.json").read_text()) for run in runs.values())
    assert ddp["processes"] == 2 and ddp["metrics"]["val"]["mae"] > 0
    assert ddp["metrics"]["val"]["mae"] == pytest.approx(single["metrics"]["val"]["mae"], rel=1e-4)
