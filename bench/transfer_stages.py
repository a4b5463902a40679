"""What the fine-tuning stages can reach on a run's own split, measured offline on frozen EfficientNet-Lite0
(224 px, ImageNet weights from the installed package): the head on cached pooled features under several
settings (epochs, learning rate, label smoothing, flip-augmented features, flip test-time augmentation),
and fine-tuning only the top of the backbone on cached activations of its frozen bottom.

    python bench/transfer_stages.py RUN_FOLDER        # e.g. a run of bench/transfer_time_to_accuracy.py fashion

RUN_FOLDER gives the data (config.yaml) and the split (splits.csv), so the numbers compare with that run.
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from datetime import date
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from common import machine
from imgclass.data.preprocess import Preprocessing
from imgclass.models.pretrained import pretrained_state


def load(run: Path) -> tuple[dict, dict, int]:
    """uint8 images and labels per split, from the run's splits.csv."""
    root = Path(yaml.safe_load((run / "config.yaml").read_text())["data"])
    rows = list(csv.DictReader((run / "splits.csv").open()))
    classes = sorted({r["label"] for r in rows})
    pre = Preprocessing(img_size=224)
    images, labels = {}, {}
    for split in ("train", "val", "test"):
        part = [r for r in rows if r["split"] == split]
        images[split] = torch.from_numpy(np.stack([pre.load(root / r["path"]) for r in part])).permute(0, 3, 1, 2)
        labels[split] = torch.tensor([classes.index(r["label"]) for r in part])
    return images, labels, len(classes)


def train_linear(head: nn.Linear, params, x, y, epochs, lr, ls, flipped=None, forward=None, batch=32, seed=0,
                 pct_start=0.1, before=None, after=None):
    """AdamW (weight decay 0.05) + one one-cycle schedule over all epochs, on (optionally flip-augmented)
    inputs; forward maps inputs to features; before/after(epoch) run around each epoch."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                total_steps=epochs * math.ceil(len(x) / batch), pct_start=pct_start)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        if before:
            before(epoch)
        order = torch.randperm(len(x), generator=gen)
        for s in range(0, len(order), batch):
            i = order[s:s + batch]
            xb = x[i].float()
            if flipped is not None:
                pick = (torch.rand(len(i), generator=gen) < 0.5).view(-1, *[1] * (xb.ndim - 1))
                xb = torch.where(pick, flipped[i].float(), xb)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=forward is not None):
                logits = head((forward(xb) if forward else xb).float())
            loss = F.cross_entropy(logits, y[i], label_smoothing=ls)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if after:
            after(epoch)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    args = ap.parse_args()
    images, labels, n_classes = load(args.run)
    net = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    net.load_state_dict(pretrained_state("timm:tf_efficientnet_lite0")[0])
    net.eval()
    norm = Preprocessing(img_size=224, mean=(0.5,) * 3, std=(0.5,) * 3).normalize
    print(f"date {date.today()}  machine: {machine()}  run: {args.run}")

    started = time.perf_counter()
    feats = {}
    with torch.no_grad():
        for split, x in images.items():
            f = [(net(norm(x[i:i + 16])), net(norm(x[i:i + 16]).flip(3))) for i in range(0, len(x), 16)]
            feats[split] = (torch.cat([a for a, _ in f]), torch.cat([b for _, b in f]))
    print(f"pooled features (float32, with flips) in {time.perf_counter() - started:.0f}s")
    y = labels
    for epochs, lr, ls, flip in [(10, 1e-3, 0.1, False), (30, 1e-3, 0.1, False), (30, 3e-3, 0.1, False),
                                 (30, 3e-3, 0.0, False), (30, 3e-3, 0.1, True)]:
        head = nn.Linear(1280, n_classes)
        train_linear(head, head.parameters(), feats["train"][0], y["train"], epochs, lr, ls,
                     feats["train"][1] if flip else None)
        with torch.no_grad():
            acc = {s: float((head(feats[s][0]).argmax(1) == y[s]).float().mean()) for s in ("val", "test")}
            tta = float(((head(feats["test"][0]).softmax(1) + head(feats["test"][1]).softmax(1)).argmax(1)
                         == y["test"]).float().mean())
        print(f"head {epochs} epochs lr {lr:g} label smoothing {ls} flip-augmented {flip}: val {acc['val']:.4f} "
              f"test {acc['test']:.4f} test with flip TTA {tta:.4f}")

    # the top of the backbone (blocks 5-6, head conv) on bf16-cached activations of its frozen bottom
    bottom = nn.Sequential(net.conv_stem, net.bn1, *net.blocks[:5])
    top = nn.Sequential(*net.blocks[5:], net.conv_head, net.bn2, net.global_pool)
    started = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        acts = {s: torch.cat([bottom(norm(x[i:i + 16])).to(torch.bfloat16) for i in range(0, len(x), 16)])
                for s, x in images.items()}
    print(f"bottom activations {tuple(acts['train'].shape)} bf16 in {time.perf_counter() - started:.0f}s")

    def scores(head):
        top.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return {s: float((head(torch.cat([top(a[i:i + 64].float()).float() for i in range(0, len(a), 64)]))
                              .argmax(1) == y[s]).float().mean()) for s, a in acts.items() if s != "train"}
    head = nn.Linear(1280, n_classes)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = torch.cat([top(acts["train"][i:i + 64].float()).float() for i in range(0, len(acts["train"]), 64)])
    train_linear(head, head.parameters(), pooled, y["train"], 30, 3e-3, 0.1)
    print("top stage: after the head (30 epochs):", {k: round(v, 4) for k, v in scores(head).items()})
    clock = {}

    def before(epoch):
        clock["t"] = time.perf_counter()
        top.train()
        for m in top.modules():  # batch norms keep their pretrained statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()

    def after(epoch):
        print(f"top stage epoch {epoch + 1} ({time.perf_counter() - clock['t']:.0f}s):",
              {k: round(v, 4) for k, v in scores(head).items()}, flush=True)
    groups = [{"params": list(top.parameters()), "lr": 3e-4}, {"params": list(head.parameters()), "lr": 9e-4}]
    train_linear(head, groups, acts["train"], y["train"], 5, 3e-4, 0.1, flipped=acts["train"].flip(3),
                 forward=top, pct_start=0.15, before=before, after=after)

if __name__ == "__main__":
    main()
