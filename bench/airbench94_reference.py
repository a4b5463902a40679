"""The reference for the CIFAR-10 benches: airbench94's own recipe (Keller Jordan,
github.com/KellerJordan/cifar10-airbench, airbench94.py: 94.01% mean test accuracy in 3.83 s on an A100) written
out again for the CPU, trained on the same lossless PNGs and scored on the same 10,000 test images as `imgclass
train`, on the same machine.

    python bench/airbench94_reference.py            # alone
    python bench/cifar_time_to_accuracy.py --budget 15m --target 0.925 --airbench94   # beside imgclass

What is airbench94's, unchanged: the network (a frozen 2x2 patch-whitening convolution with both signs of the
eigenvectors and a trainable bias for the first 3 epochs, then three groups of conv-pool-BN-GELU-conv-BN-GELU at
widths 64/256/256, BN with a frozen unit scale, eps 1e-12 and momentum 0.6 in its convention, identity-initialised
convolutions, a 3x3 max-pool and a bias-free linear head scaled by 1/9); the training (9.9 epochs over all 50,000
training images in batches of 1,024 with the last partial batch dropped, Nesterov SGD with momentum 0.85, lr 11.5 and
weight decay 0.0153 per 1,024 examples in its decoupled form, BN biases at 64x the rate, label smoothing 0.2 on a
summed loss, a triangular schedule 0.2 -> 1 at 23% -> 0.07, a lookahead average of the weights every 5 steps from
epoch 3 with decay 0.95^5 x progress^3, copied back at each epoch's end); the data (CIFAR's channel mean and std,
2-pixel translation from reflect-padded images, every image flipped at random once and then all flipped together on
odd epochs); and the score (test-time augmentation at its level 2: the mirror, and one-pixel shifts up-left and
down-right, weighted 1/2 and 1/4 each).

What the CPU changes: float32, or bf16 autocast where the CPU computes bf16 natively (imgclass's own rule, so both
runs compute in the same precision), instead of float16 on CUDA; channels-last memory as on the GPU; the PNGs decoded
with Pillow by a thread pool (timed apart). Written from the recipe rather than imported, so that the reference
shares no code with imgclass beyond PyTorch.
"""
from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
EPOCHS, BATCH, LR, MOMENTUM, WEIGHT_DECAY, BIAS_SCALER = 9.9, 1024, 11.5, 0.85, 0.0153, 64.0
LABEL_SMOOTHING, WHITEN_BIAS_EPOCHS, TRANSLATE = 0.2, 3, 2
EMA_START_EPOCH, EMA_EVERY, EMA_DECAY, EMA_POWER = 3, 5, 0.95, 3.0
WIDTHS, BN_MOMENTUM, HEAD_SCALE = (64, 256, 256), 0.6, 1 / 9


def read_split(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(N x 3 x 32 x 32 uint8 images, N labels) of a `<class>/<n>.png` folder, classes in sorted order."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(f, k) for k, c in enumerate(classes) for f in sorted((folder / c).iterdir())]

    def decode(item):
        with Image.open(item[0]) as im:
            return np.asarray(im.convert("RGB"))

    with ThreadPoolExecutor(torch.get_num_threads()) as pool:
        images = np.stack(list(pool.map(decode, files, chunksize=256)))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor([k for _, k in files])


class Norm(nn.BatchNorm2d):
    """airbench's BN: the scale frozen at 1, eps 1e-12, its momentum 0.6 (PyTorch's 1 - 0.6)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=1 - BN_MOMENTUM)
        self.weight.requires_grad_(False)


def conv(cin: int, cout: int) -> nn.Conv2d:
    layer = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
    nn.init.dirac_(layer.weight.data[:cin])  # the first cin filters start as the identity
    return layer


def group(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv(cin, cout), nn.MaxPool2d(2), Norm(cout), nn.GELU(), conv(cout, cout), Norm(cout),
                         nn.GELU())


class Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * HEAD_SCALE


def network(train_images: torch.Tensor) -> nn.Sequential:
    """airbench94's net, its whitening layer computed from the first 5,000 (normalised) training images."""
    whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    net = nn.Sequential(whiten, nn.GELU(), group(24, WIDTHS[0]), group(WIDTHS[0], WIDTHS[1]),
                        group(WIDTHS[1], WIDTHS[2]), nn.MaxPool2d(3), nn.Flatten(),
                        nn.Linear(WIDTHS[2], 10, bias=False), Scale())
    with torch.no_grad():
        x = train_images[:5000].float()
        patches = x.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 3, 2, 2).reshape(-1, 12)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches), UPLO="U")
        filters = eigenvectors.T.reshape(12, 3, 2, 2).flip(0) / torch.sqrt(eigenvalues.flip(0) + 5e-4).view(-1, 1, 1, 1)
        whiten.weight.copy_(torch.cat([filters, -filters]))
    whiten.weight.requires_grad_(False)
    return net.to(memory_format=torch.channels_last)


def shifted(padded: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Each image cut at its own random offset (-TRANSLATE..TRANSLATE in each direction) of its padded copy."""
    dy, dx = (torch.randint(0, 2 * TRANSLATE + 1, (len(padded),)) for _ in range(2))
    out = torch.empty(len(padded), 3, size, size)
    for y in range(2 * TRANSLATE + 1):
        for x in range(2 * TRANSLATE + 1):
            chosen = (dy == y) & (dx == x)
            out[chosen] = padded[chosen, :, y:y + size, x:x + size]
    return out


def triangle(step: int, total: int, start: float = 0.2, peak_at: float = 0.23, end: float = 0.07) -> float:
    peak = int(peak_at * total)
    if step < peak:
        return start + (1 - start) * step / peak
    return 1 + (end - 1) * (step - peak) / (total - peak)


def tta_logits(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """airbench's TTA level 2: 1/2 the mirror-averaged image, 1/4 each of its one-pixel shifts up-left and
    down-right."""
    def mirrored(x):
        return 0.5 * net(x) + 0.5 * net(x.flip(-1))
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    return 0.5 * mirrored(images) + 0.25 * mirrored(padded[:, :, :32, :32]) + 0.25 * mirrored(padded[:, :, 2:, 2:])


def train_and_score(data: Path, bf16: bool, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    started = time.perf_counter()
    train_u8, train_y = read_split(data / "train")
    test_u8, test_y = read_split(data / "test")
    decode_s = time.perf_counter() - started

    started = time.perf_counter()
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    train_x = (train_u8.float() / 255 - mean) / std
    test_x = ((test_u8.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
    net = network(train_x)
    flipped = torch.where(torch.rand(len(train_x)).view(-1, 1, 1, 1) < 0.5, train_x.flip(-1), train_x)
    padded = F.pad(flipped, (TRANSLATE,) * 4, mode="reflect")

    momentum_scale = BATCH * (1 + 1 / (1 - MOMENTUM))  # its decoupled lr and wd, in PyTorch SGD's terms
    lr, wd = LR / momentum_scale, WEIGHT_DECAY * BATCH / momentum_scale
    norm_biases = [p for m in net.modules() if isinstance(m, Norm) for p in m.parameters() if p.requires_grad]
    others = [p for p in net.parameters() if p.requires_grad and all(p is not q for q in norm_biases)]
    bias_lr = lr * BIAS_SCALER
    optimizer = torch.optim.SGD([{"params": norm_biases, "lr": bias_lr, "weight_decay": wd / bias_lr},
                                 {"params": others, "lr": lr, "weight_decay": wd / lr}],
                                momentum=MOMENTUM, nesterov=True)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    steps_per_epoch = len(train_x) // BATCH
    total = math.ceil(steps_per_epoch * EPOCHS)
    averaged, step = None, 0
    for epoch in range(math.ceil(EPOCHS)):
        net[0].bias.requires_grad_(epoch < WHITEN_BIAS_EPOCHS)
        images = shifted(padded)
        if epoch % 2 == 1:
            images = images.flip(-1)
        order = torch.randperm(len(images))
        net.train()
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[i * BATCH:(i + 1) * BATCH]
            x = images[idx].contiguous(memory_format=torch.channels_last)
            for g, base in zip(optimizer.param_groups, base_lrs):
                g["lr"] = base * triangle(step, total)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(x).float(), train_y[idx], label_smoothing=LABEL_SMOOTHING, reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if epoch >= EMA_START_EPOCH and step % EMA_EVERY == 0:
                state = net.state_dict()
                if averaged is None:
                    averaged = {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}
                else:
                    decay = EMA_DECAY ** EMA_EVERY * (step / total) ** EMA_POWER
                    for k, v in averaged.items():  # lookahead: average, then put the average back into the net
                        v.lerp_(state[k], 1 - decay)
                        state[k].copy_(v)
        if averaged is not None:
            state = net.state_dict()
            for k, v in averaged.items():
                state[k].copy_(v)
        print(f"  epoch {epoch + 1}: last batch loss {loss.item() / BATCH:.4f}, {time.perf_counter() - started:.0f}s",
              flush=True)
    train_s = time.perf_counter() - started

    started = time.perf_counter()
    net.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = torch.cat([tta_logits(net, x).float() for x in test_x.split(1000)])
    accuracy = float((logits.argmax(1) == test_y).float().mean())
    return {"accuracy": accuracy, "decode_s": decode_s, "train_s": train_s, "score_s": time.perf_counter() - started,
            "epochs": EPOCHS, "bf16": bf16}


def main() -> None:
    from common import cifar10, machine
    from imgclass.models.inference import cpu_has_native_bf16  # only the hardware query: the same precision rule
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    args = ap.parse_args()
    bf16 = cpu_has_native_bf16() if args.precision == "auto" else args.precision == "bf16"
    r = train_and_score(cifar10(), bf16)
    print(f"machine: {machine()}")
    print(f"airbench94 recipe: test accuracy {r['accuracy']:.4f} (TTA level 2), {'bf16' if bf16 else 'float32'}; "
          f"decode {r['decode_s']:.0f}s, train {r['train_s']:.0f}s, score {r['score_s']:.0f}s")


if __name__ == "__main__":
    main()
