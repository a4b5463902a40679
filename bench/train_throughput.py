"""Training images/s: imgclass's Trainer against a plain eager PyTorch loop over the same model
(the default `fast` network), the same uint8 data in memory, the same batch size, no augmentation
in either. Target: imgclass not slower.

    python bench/train_throughput.py [--images 5120 --batch 512]
"""
from __future__ import annotations

import argparse
import time
from datetime import date

import torch
import torch.nn.functional as F

from common import machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5120)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--width", type=int, default=32)
    args = ap.parse_args()
    from imgclass.data.augment import BatchAugment
    from imgclass.data.images import ImageTensors
    from imgclass.data.preprocess import Preprocessing
    from imgclass.models import create_model
    from imgclass.training.loop import Trainer
    from imgclass.training.optim import make_optimizer

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    pre = Preprocessing(img_size=32)

    def fresh():
        torch.manual_seed(0)
        return create_model("fast", num_classes=10, width=args.width)

    # reference: the loop a user writes by hand (NCHW, eager)
    model = fresh()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.85, nesterov=True)
    model.train()
    for warm in (True, False):
        started = time.perf_counter()
        for s in range(0, args.images, args.batch):
            x = pre.normalize(images[s:s + args.batch])
            loss = F.cross_entropy(model(x), labels[s:s + args.batch], label_smoothing=0.2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ref = args.images / (time.perf_counter() - started)

    model = fresh().to(memory_format=torch.channels_last)
    data = ImageTensors(images=images, labels=labels, paths=[""] * args.images)
    trainer = Trainer(model=model, optimizer=make_optimizer(model, "sgd", 0.1, 5e-5, 0.85), train_data=data,
                      val_data=None, pre=pre, augment=BatchAugment("none"), epochs=2, batch_size=args.batch,
                      peak_lr=0.1, warmup_epochs=0, label_smoothing=0.2, seed=0, device=torch.device("cpu"))
    trainer.fit()
    ours = args.images / trainer.history[-1]["seconds"]
    print(f"date {date.today()}  machine: {machine()}")
    print(f"command: python bench/train_throughput.py --images {args.images} --batch {args.batch} --width {args.width}")
    print(f"plain eager loop {ref:,.0f} img/s; imgclass Trainer {ours:,.0f} img/s; ratio {ours / ref:.2f}x "
          f"(target >= 1.0: {'MET' if ours >= ref else 'MISSED'})")


if __name__ == "__main__":
    main()
