"""Training images/s: imgclass's Trainer against a plain eager PyTorch loop over the same model
(the default `fast` network), the same uint8 data in memory, the same batch size, no augmentation
in either. Target: imgclass not slower. The Trainer runs in the precision `imgclass train` would
choose (--precision auto: bf16 autocast on a CPU with native bf16); the plain loop is timed in
float32 (what a hand-written loop does) and, when the Trainer uses bf16, under bf16 autocast too,
so the ratio with the same arithmetic is printed as well.

    python bench/train_throughput.py [--images 5120 --batch 512 --precision auto]
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
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    args = ap.parse_args()
    from imgclass.data.augment import BatchAugment
    from imgclass.data.images import ImageTensors
    from imgclass.data.preprocess import Preprocessing
    from imgclass.models import create_model
    from imgclass.training.loop.fit import Trainer
    from imgclass.training.loop.optim import make_optimizer
    from imgclass.training.loop.device import use_bf16
    bf16 = use_bf16(args.precision, torch.device("cpu"))

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    pre = Preprocessing(img_size=32)

    def fresh():
        torch.manual_seed(0)
        return create_model("fast", num_classes=10, width=args.width)

    def plain_loop(autocast: bool) -> float:
        """The loop a user writes by hand (NCHW, eager); images/s of its second pass."""
        model = fresh()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.85, nesterov=True)
        model.train()
        for _ in range(2):
            started = time.perf_counter()
            for s in range(0, args.images, args.batch):
                x = pre.normalize(images[s:s + args.batch])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    loss = F.cross_entropy(model(x).float(), labels[s:s + args.batch], label_smoothing=0.2)
                opt.zero_grad()
                loss.backward()
                opt.step()
            rate = args.images / (time.perf_counter() - started)
        return rate

    ref = plain_loop(False)
    ref_bf16 = plain_loop(True) if bf16 else None

    model = fresh().to(memory_format=torch.channels_last)
    data = ImageTensors(images=images, labels=labels, paths=[""] * args.images)
    trainer = Trainer(model=model, optimizer=make_optimizer(model, "sgd", 0.1, 5e-5, 0.85), train_data=data,
                      val_data=None, pre=pre, augment=BatchAugment("none"), epochs=2, batch_size=args.batch,
                      peak_lr=0.1, warmup_epochs=0, label_smoothing=0.2, seed=0, device=torch.device("cpu"),
                      bf16=bf16)
    trainer.fit()
    ours = args.images / trainer.history[-1]["seconds"]
    print(f"date {date.today()}  machine: {machine()}")
    print(f"command: python bench/train_throughput.py --images {args.images} --batch {args.batch} --width {args.width} "
          f"--precision {args.precision}")
    print(f"plain eager float32 loop {ref:,.0f} img/s; imgclass Trainer ({'bf16' if bf16 else 'float32'}) "
          f"{ours:,.0f} img/s; ratio {ours / ref:.2f}x (target >= 1.0: {'MET' if ours >= ref else 'MISSED'})")
    if ref_bf16 is not None:
        print(f"plain eager loop under bf16 autocast {ref_bf16:,.0f} img/s; same-arithmetic ratio {ours / ref_bf16:.2f}x")


if __name__ == "__main__":
    main()
