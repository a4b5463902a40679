"""Behaviour unchanged by a refactor: the same commands, before and after, give the same model files and
metrics. Runs a fixed set of short `imgclass` commands (the digits: the fast default, progressive resizing,
two-level labels with two strategies, lr-find, predict; ants/bees: pretrained Lite0 with the head stage and
staged fine-tuning), then writes a fingerprint: the SHA-256 of every tensor of every model file, each header
and results.json without its timings, every eval/*/metrics.json, metrics.csv without the seconds column,
the lr-find suggestion and predict's JSON.

    python bench/behaviour_unchanged.py --out before.json          # on the old commit
    python bench/behaviour_unchanged.py --out after.json           # on the new one, same machine
    python bench/behaviour_unchanged.py --compare before.json after.json

Same machine, same thread count: across CPUs the float kernels differ in the last bits, so fingerprints
are compared only between runs made where they were made. About a minute on 2 cores. The data: the digits
(scikit-learn's) and ../shared/datasets/hymenoptera.tar.gz (IMGCLASS_DATASETS names another folder).

Also several tags per image (a tags CSV over the digits: even, low, loop) and submit for each label structure.

Known, intended differences against commits before issue 40's fixes (0c68820 and earlier): the final scoring's train
sample is stratified (each class, tag or number bin keeps at least 10 images where it has them), so a run whose
train split is sampled (more images than max(1000, validation)) reports a train score on another sample and stores
another rejection bank and threshold; with several tags, macro F1 averages only the tags present in the split (as
mAP); results.json holds the run's data notes. Against commits before the folders of issue 39 (items 3 and 4):
none (0c68820 against 9b7da86 plus f93772a: identical, measured 2026-12-07).

Known, intended differences against commits before issue 39 (the task seam): none in any tensor, header, metric,
answer or submission here; evaluate --map now marks the images predict --reject rejects (it compared the highest
probability with the k-NN rule's cosine threshold), which only its figure shows. Known, intended difference against
commits before issue 25: lr-find's suggestion. lr-find now takes its steps
through train's Trainer.train_step (bf16 autocast where the CPU has it, channels-last, the flip parities),
where it had a step of its own without them (0.0204 -> 0.0117 for the command here, machine A).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from common import DATASETS  # noqa: E402 - this folder's shared helpers (the data folder, IMGCLASS_DATASETS)

HERE = Path(__file__).resolve().parent

RUNS = {
    "digits-fast": ["{digits}", "--no-hflip", "--epochs", "3"],
    "digits-progressive": ["{digits}", "--model", "cnn", "--img-size", "16,24", "--epochs", "3", "--augment", "light",
                           "--no-hflip"],
    "digits-multi-head": ["{tree}", "--hierarchy", "--hierarchy-strategy", "multi-head", "--model", "cnn",
                          "--img-size", "16", "--epochs", "2", "--no-hflip"],
    "digits-two-stage": ["{tree}", "--hierarchy", "--hierarchy-strategy", "two-stage", "--model", "cnn",
                         "--img-size", "16", "--epochs", "2", "--no-hflip", "--class-weights", "auto"],
    "hymenoptera-lite0": ["{hymenoptera}", "--model", "timm:tf_efficientnet_lite0", "--pretrained", "--img-size", "96",
                          "--epochs", "1", "--head-epochs", "2"],
    "digits-tags": ["{digits}", "--labels", "{tags}", "--multi-label", "--model", "cnn", "--img-size", "16",
                    "--epochs", "2", "--no-hflip"],
}
SUBMITS = {"digits-fast": ["--target", "label"], "digits-multi-head": ["--level", "both"],
           "digits-tags": ["--target", "label"]}
VOLATILE = ("seconds", "imgclass_version", "started", "duration")  # keys that hold times or the version string


def stable(value):
    """A JSON value without the keys that hold timings."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if not any(word in k for word in VOLATILE)}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def model_fingerprint(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads((fh.metadata() or {})["imgclass"])
        tensors = {key: hashlib.sha256(fh.get_tensor(key).contiguous().numpy().tobytes()).hexdigest()
                   for key in sorted(fh.keys())}
    return {"tensors": tensors, "header": stable(header)}


def run_fingerprint(run: Path) -> dict:
    out = {"model": model_fingerprint(run / "model.safetensors"),
           "results": stable(json.loads((run / "results.json").read_text()))}
    with open(run / "metrics.csv", newline="") as fh:
        out["metrics.csv"] = [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]
    for metrics in sorted(run.glob("eval/*/metrics.json")):
        out[str(metrics.relative_to(run))] = stable(json.loads(metrics.read_text()))
    return out


def imgclass(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "imgclass", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"imgclass {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def prepare(work: Path) -> dict[str, str]:
    from imgclass.training.demo import write_digits
    digits = write_digits(work / "digits")
    tree = work / "digits-tree"  # two-level labels: <low|high>/<digit>/
    if not tree.is_dir():
        for image in sorted(digits.rglob("*.png")):
            coarse = "low" if int(image.parent.name) < 5 else "high"
            target = tree / coarse / image.parent.name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, target)
    tags = work / "digits-tags.csv"  # several tags per image: even, low (< 5), loop (0, 6, 8, 9)
    if not tags.is_file():
        with tags.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", "tags"])
            for image in sorted(digits.rglob("*.png")):
                d = int(image.parent.name)
                writer.writerow([image.relative_to(digits).as_posix(),
                                 ";".join(t for t, on in (("even", d % 2 == 0), ("low", d < 5),
                                                          ("loop", d in (0, 6, 8, 9))) if on)])
    if not (work / "hymenoptera").is_dir():
        with tarfile.open(DATASETS / "hymenoptera.tar.gz") as tar:
            tar.extractall(work, filter="data")
    return {"digits": str(digits), "tree": str(tree), "hymenoptera": str(work / "hymenoptera"), "tags": str(tags)}


def fingerprint(work: Path) -> dict:
    data = prepare(work)
    cache = ["--cache-dir", str(work / "cache")]
    result = {}
    for name, args in RUNS.items():
        run = work / "runs" / name
        shutil.rmtree(run, ignore_errors=True)
        imgclass("train", *[a.format(**data) for a in args], "--out", str(run), *cache, cwd=work)
        result[name] = run_fingerprint(run)
        print(f"{name}: done", flush=True)
    lr = imgclass("lr-find", data["digits"], "--model", "cnn", "--img-size", "16", "--steps", "30", "--plot",
                  str(work / "lr.png"), *cache, cwd=work)
    result["lr-find"] = [line for line in lr.splitlines() if "suggest" in line]
    images = sorted(Path(data["digits"]).rglob("*.png"))[::300]
    for name in ("digits-fast", "digits-multi-head", "digits-tags"):
        out = imgclass("predict", str(work / "runs" / name), *map(str, images), "--format", "json",
                       "--runtime", "torch", "--precision", "float32", cwd=work)
        result[f"predict {name}"] = json.loads(out)
    test = work / "test-images"  # a Kaggle-style test folder: ids from the file names
    if not test.is_dir():
        test.mkdir()
        for i, image in enumerate(images):
            shutil.copyfile(image, test / f"{i}.png")
    for name, options in SUBMITS.items():
        out = work / f"submission-{name}.csv"
        imgclass("submit", str(work / "runs" / name), str(test), "--out", str(out), "--runtime", "torch",
                 "--precision", "float32", *options, cwd=work)
        result[f"submit {name}"] = out.read_text().splitlines()
    return result


def compare(before: dict, after: dict, where: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        diffs = [f"{where}/{k}: only in one" for k in sorted(set(before) ^ set(after))]
        for k in sorted(set(before) & set(after)):
            diffs += compare(before[k], after[k], f"{where}/{k}")
        return diffs
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after)) for d in compare(b, a, f"{where}[{i}]")]
    return [] if before == after else [f"{where}: {str(before)[:80]} != {str(after)[:80]}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the fingerprint here")
    parser.add_argument("--work", type=Path, help="folder for data and runs (default: a temporary one)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        diffs = compare(*(json.loads(p.read_text()) for p in args.compare))
        print("\n".join(diffs) if diffs else "identical: every tensor, header, metric and answer")
        sys.exit(1 if diffs else 0)
    if args.out is None:
        parser.error("--out or --compare")
    work = args.work or Path(tempfile.mkdtemp(prefix="imgclass-behaviour-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    result = fingerprint(work.resolve())
    text = json.dumps(result, indent=1, sort_keys=True).replace(str(work.resolve()), "<work>")  # any --work compares
    args.out.write_text(text)
    print(f"fingerprint of {len(result)} checks written to {args.out}")


if __name__ == "__main__":
    main()
