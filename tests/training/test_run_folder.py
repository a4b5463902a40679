"""Run folders under unlucky conditions (issue 14, item 8): a resume with no checkpoint is an error,
run folders are claimed atomically, and splits.csv cannot point outside the data folder."""
import shutil
import threading

import pytest

import imgclass
from imgclass.data.labels import CLASSES
from imgclass.data.split import read_splits
from imgclass.core.errors import DataError, UserError
from imgclass.core.rundir import RunDir

from helpers import FAST, make_class_folders


def test_resume_without_a_checkpoint_is_an_error_not_a_restart(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=6)
    run = imgclass.train(data, out=str(tmp_path / "run"), **FAST)
    shutil.rmtree(run.dir / "checkpoints")
    (run.dir / "metrics.csv").unlink()
    with pytest.raises(UserError, match="cannot resume .*no checkpoints/last.safetensors"):
        imgclass.train(resume=run.dir)
    assert not (run.dir / "metrics.csv").exists()          # nothing was retrained under the old name


def test_run_folders_are_claimed_atomically(tmp_path):
    claimed, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        claimed.append(RunDir.claim(None, tmp_path / "runs").path)
    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(claimed)) == 8 and all(p.is_dir() for p in claimed)


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.png", "cat/../../x.png", "C:\\\\x.png"])
def test_splits_csv_paths_outside_the_data_folder_are_refused(tmp_path, bad):
    csv_path = tmp_path / "splits.csv"
    csv_path.write_text(f"path,label,split\ncat/img0.png,cat,train\n{bad},cat,train\n")
    with pytest.raises(DataError, match="outside the data folder"):
        read_splits(csv_path, tmp_path, ["cat"], CLASSES)
    csv_path.write_text("path,label,split\ncat/img0.png,cat,holdout\n")
    with pytest.raises(DataError, match="names split 'holdout'"):
        read_splits(csv_path, tmp_path, ["cat"], CLASSES)


def test_a_run_folder_is_trained_by_one_process_at_a_time(tmp_path):
    """While a process trains a run folder it holds its lock: a second `train --resume` is refused with one line
    (it would write the same checkpoints); once released, resuming works."""
    import subprocess
    import sys

    from filelock import FileLock
    data = make_class_folders(tmp_path / "data", per_class=8)
    run = imgclass.train(data, out=str(tmp_path / "run"), **dict(FAST, epochs=1))
    with FileLock(run.dir / ".lock", timeout=0):                       # another process training it
        proc = subprocess.run([sys.executable, "-m", "imgclass", "train", "--resume", str(run.dir)],
                              capture_output=True, text=True)
    assert proc.returncode == 2 and "in use by another imgclass process" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert imgclass.train(resume=run.dir).history[-1]["epoch"] == 1      # released: resuming works


def test_two_runs_naming_the_same_empty_out_never_share_it(tmp_path):
    out, results, barrier = tmp_path / "same", [], threading.Barrier(8)
    out.mkdir()

    def claim():
        barrier.wait()
        try:
            results.append(RunDir.claim(out).path)
        except UserError as exc:
            results.append(str(exc))
    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(out) == 1 and len(results) == 8
