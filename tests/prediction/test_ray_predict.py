"""Predictions on Ray (issue 31, item 1): `predict --ray` on a local Ray with 2 workers answers exactly as predict
in one process, unreadable files included, and writes Parquet with one row per image.

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


def ray_cli(*args: str, runtime: str = "torch") -> str:
    done = subprocess.run([sys.executable, "-m", "imgclass", "predict", *args, "--ray", "--ray-workers", "2",
                           "--runtime", runtime, "--precision", "float32" if runtime == "torch" else "auto"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_ray_answers_equal_one_process_unreadable_files_included(trained_run, photos, tmp_path):
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
    # Parquet: one row per image, the same answers; in ONNX Runtime, which the actors load as the export alone
    out = tmp_path / "predictions.parquet"
    assert "wrote" in ray_cli(str(trained_run), str(photos), "--out", str(out), runtime="onnx")
    import pyarrow.parquet as pq
    table = pq.read_table(out).to_pylist()
    assert sorted(r["image"] for r in table) == sorted(a["image"] for a in want)
    by_image = {a["image"]: a for a in want}
    for row in table:
        if row["error"]:
            assert "error" in by_image[row["image"]]
        else:
            assert row["label"] == by_image[row["image"]]["top_k"][0]["label"]
            top_k, want_top_k = json.loads(row["answer"])["top_k"], by_image[row["image"]]["top_k"]
            assert [t["label"] for t in top_k] == [t["label"] for t in want_top_k]
            assert [t["probability"] for t in top_k] == pytest.approx([t["probability"] for t in want_top_k], abs=1e-5)
    assert not list(tmp_path.glob("*.tmp"))


def test_ray_refuses_what_it_cannot_do(trained_run, photos):
    from imgclass.errors import UserError
    with pytest.raises(UserError, match="writes Parquet"):
        imgclass.predict(trained_run, photos, ray=True, out="x.csv")
    with pytest.raises(UserError, match="--out is for --ray"):
        imgclass.predict(trained_run, photos, out="x.parquet")
