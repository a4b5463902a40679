"""Resume after SIGKILL mid-epoch finishes with the same epochs and the same weights."""
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from imgclass.training.checkpoint import load_checkpoint  # noqa: F401 (imported for coverage of the module)

from helpers import make_class_folders

# about 1 s an epoch on 2 cores: long enough to be killed mid-epoch
ARGS = ["--model", "cnn", "--lookahead", "--model-args", "width=16,depth=2", "--img-size", "32", "--epochs", "3", "--no-evaluate",
        "--batch-size", "4", "--no-tensorboard", "--workers", "1", "--augment", "strong", "--dropout", "0.2"]


def train_cmd(data, out):
    return [sys.executable, "-m", "imgclass", "train", str(data), "--out", str(out)] + ARGS


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=100)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = tmp_path / "full"
    subprocess.run(train_cmd(data, full), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(data, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.safetensors"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.1)  # into the second epoch
    assert proc.poll() is None, "training finished before it could be killed; make the test data bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()

    out = subprocess.run([sys.executable, "-m", "imgclass", "train", "--resume", str(killed)],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stderr
    a = (full / "metrics.csv").read_text().splitlines()
    b = (killed / "metrics.csv").read_text().splitlines()
    assert len(a) == len(b) == 4
    # same epochs, same losses (the seconds column differs)
    assert [r.rsplit(",", 1)[0] for r in a] == [r.rsplit(",", 1)[0] for r in b]
    wa, wb = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_resume_of_finished_run_changes_nothing(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=6)
    out = tmp_path / "run"
    args = train_cmd(data, out)
    args[args.index("--epochs") + 1] = "1"
    subprocess.run(args, check=True, capture_output=True)
    before = (out / "metrics.csv").read_text()
    subprocess.run([sys.executable, "-m", "imgclass", "train", "--resume", str(out)], check=True, capture_output=True)
    assert (out / "metrics.csv").read_text() == before
