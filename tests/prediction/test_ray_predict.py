"""Predictions on Ray (issue 31, item 1): `predict --ray` on a local Ray with 2 workers answers exactly as predict
in one process, unreadable files included; it writes Parquet with one row per image; `submit --ray` writes the
same file as submit.

Ray runs in a child process (the command line, as a user runs it): a Ray driver leaves its core worker's
threads in the process after ray.shutdown(), and the test process then crashed (SIGSEGV) in a later test's
greenlet (Playwright)."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import imgclass

pytest.importorskip("ray", reason="the ray extra (pip install 'imgclass[ray]')")
pytestmark = pytest.mark.slow  # a local Ray starts its processes: ~20 s


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray") / "photos"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for i in range(40):
        Image.fromarray(rng.randint(0, 256, (20 + i % 7, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "sub").mkdir()
    Image.new("RGB", (9, 9), (200, 10, 10)).save(folder / "sub" / "red.jpg")
    return folder


def ray_cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "imgclass", "predict", *args, "--ray", "--ray-workers", "2",
                           "--runtime", "torch", "--precision", "float32"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_ray_answers_equal_one_process_unreadable_files_included(trained_run, photos):
    want = imgclass.predict(trained_run, photos, runtime="torch", precision="float32")
    got = json.loads(ray_cli(str(trained_run), str(photos), "--format", "json", "--top-k", "3"))
    assert [a["image"] for a in got] == [a["image"] for a in want]      # the same files, in the same order
    broken = [a for a in got if "error" in a]
    assert [a["image"] for a in broken] == [str(photos / "broken.jpg")]
    assert broken == [a for a in want if "error" in a]                   # failed alike, the job did not
    for g, w in zip(got, want):
        if "error" in w:
            continue
        assert [t["label"] for t in g["top_k"]] == [t["label"] for t in w["top_k"]]
        np.testing.assert_allclose([t["probability"] for t in g["top_k"]],
                                   [t["probability"] for t in w["top_k"]], atol=1e-6)


RAY_JOBS = """
import json, sys, ray, imgclass
run, photos, tmp = sys.argv[1:4]
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)  # one Ray, three jobs
imgclass.predict(run, photos, ray=True, ray_workers=2, runtime="onnx", out=tmp + "/predictions.parquet")
imgclass.submit(run, photos, tmp + "/submission-ray.csv", target="label", ray=True, ray_workers=2, runtime="onnx")
shards = imgclass.predict(run, tmp + "/shard-{0..2}.tar", ray=True, ray_workers=2, runtime="onnx")
open(tmp + "/shards-ray.json", "w").write(json.dumps(shards))
"""


def write_shards(photos, tmp_path):
    """Three shards of the photos (WebDataset samples: KEY.png + KEY.cls); the second cut off inside a member."""
    import io
    import tarfile
    files = sorted(photos.glob("*.png"))
    for s in range(3):
        with tarfile.open(tmp_path / f"shard-{s}.tar", "w") as tar:
            for f in files[s::3]:
                for name, data in ((f"{f.stem}.png", f.read_bytes()), (f"{f.stem}.cls", b"0")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    cut = tmp_path / "shard-1.tar"
    cut.write_bytes(cut.read_bytes()[:5000])


def test_parquet_submit_and_shards_on_ray_equal_one_process(trained_run, photos, tmp_path):
    """In ONNX Runtime, which the actors load as the export alone (no PyTorch model): the Parquet rows equal
    predict's answers, submit --ray writes the same file as submit, and .tar shards answer as predict reads them."""
    write_shards(photos, tmp_path)
    done = subprocess.run([sys.executable, "-c", RAY_JOBS, str(trained_run), str(photos), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    want = imgclass.predict(trained_run, photos, runtime="onnx")
    import pyarrow.parquet as pq
    table = pq.read_table(tmp_path / "predictions.parquet").to_pylist()
    assert sorted(r["image"] for r in table) == sorted(a["image"] for a in want)
    by_image = {a["image"]: a for a in want}
    for row in table:
        if row["error"]:
            assert row["error"] == by_image[row["image"]]["error"]
        else:
            assert row["label"] == by_image[row["image"]]["top_k"][0]["label"]
            top_k, want_top_k = json.loads(row["answer"])["top_k"], by_image[row["image"]]["top_k"]
            assert [t["label"] for t in top_k] == [t["label"] for t in want_top_k]
            assert [t["probability"] for t in top_k] == pytest.approx([t["probability"] for t in want_top_k], abs=1e-6)
    assert not list(tmp_path.glob("*.tmp"))
    imgclass.submit(trained_run, photos, tmp_path / "submission.csv", target="label", runtime="onnx")
    assert (tmp_path / "submission-ray.csv").read_text() == (tmp_path / "submission.csv").read_text()
    # shards: one Ray task streams each; the answers in predict's order, the cut shard's last row its error
    got = json.loads((tmp_path / "shards-ray.json").read_text())
    want = imgclass.predict(trained_run, str(tmp_path / "shard-{0..2}.tar"), runtime="onnx")
    assert [a["image"] for a in got] == [a["image"] for a in want]
    assert sum("damaged" in a.get("error", "") for a in got) == 1 and len(got) > 20
    for g, w in zip(got, want):
        assert g.get("error") == w.get("error")
        assert [t["label"] for t in g.get("top_k", [])] == [t["label"] for t in w.get("top_k", [])]


def test_ray_refuses_what_it_cannot_do(trained_run, photos):
    from imgclass.core.errors import UserError
    with pytest.raises(UserError, match="writes Parquet"):
        imgclass.predict(trained_run, photos, ray=True, out="x.csv")
    with pytest.raises(UserError, match="--out is for --ray"):
        imgclass.predict(trained_run, photos, out="x.parquet")


@pytest.mark.parametrize("options, message", [
    (["--ray-workers", "0"], "--ray-workers must be at least 1"),
    (["--address", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),   # refused in seconds, not minutes
    (["--address", "nowhere"], "--address must be HOST:PORT")])
def test_ray_refuses_bad_options_in_one_line(trained_run, photos, options, message):
    done = subprocess.run([sys.executable, "-m", "imgclass", "predict", str(trained_run), str(photos / "0.png"),
                           "--ray", *options], capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and last.startswith(f"imgclass: error: {message}"), done.stderr[-2000:]


def test_without_address_ray_starts_its_own_whatever_the_environment_says(trained_run, photos):
    """issue 40, item 3: with no --address, ray.init(address=None) attached to RAY_ADDRESS (here a port nothing
    answers at), to any Ray already running, or to a stale cluster file's; predict --ray now starts a Ray of its
    own, and says in one line that Ray's services listen on the network while it runs."""
    import os
    done = subprocess.run([sys.executable, "-m", "imgclass", "predict", str(trained_run), str(photos / "0.png"),
                           "--ray", "--ray-workers", "1", "--runtime", "torch", "--format", "json"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(json.loads(done.stdout)) == 1
    assert "starts a private Ray" in " ".join(done.stderr.split())
