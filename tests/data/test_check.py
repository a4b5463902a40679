import json
import re
import tracemalloc

import pytest

from imgclass.cli import main
from imgclass.data.check import _near_pairs, check_dataset
from imgclass.data.decode import ImageDecodeError, open_rgb

from messy import BAD, IGNORED, make_messy, png_bomb


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return make_messy(tmp_path_factory.mktemp("messy") / "data")


def test_check_reports_every_planted_problem(messy):
    r = check_dataset(messy, workers=2)
    unusable = {u["path"]: u["reason"] for u in r.unusable}
    assert set(unusable) == {f"train/{p}" for p in BAD}
    for path, pattern in BAD.items():
        assert re.search(pattern, unusable[f"train/{path}"]), (path, unusable[f"train/{path}"])
    assert any(m.startswith("train/dog/png_named.jpg (content is PNG)") for m in r.extension_mismatch)
    assert "train/dog/rotated.jpg" in r.exif_rotated
    assert any(s.startswith("train/dog/one_pixel.png") for s in r.small)
    assert sorted(r.ignored) == sorted(IGNORED)
    pairs = {(l["a"], l["b"]) for l in r.leakage} | {(l["b"], l["a"]) for l in r.leakage}
    assert ("train/cat/train0.png", "test/cat/leak_exact.png") in pairs
    assert ("train/dog/train1.png", "test/dog/leak_near.png") in pairs
    assert ["test/cat/leak_exact.png", "train/cat/train0.png"] in r.exact_duplicates
    assert r.counts["all"]["cat"] == 10 + 4 + 1 + 6   # generated + test + leaked copy + odd valid files and r.counts["test"]["dog"] == 5
    assert any("leakage" in rec for rec in r.recommendations)


def test_check_cli_json_and_strict(messy, tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["check", str(messy), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "LEAKAGE" in text and "decompression bomb" in text and "recommendations" in text
    data = json.loads(out.read_text())
    assert len(data["unusable"]) == 4 and data["leakage"]
    assert main(["check", str(messy), "--strict"]) == 1


def test_imbalance_recommendation(tmp_path):
    from helpers import make_class_folders
    data = make_class_folders(tmp_path / "d", classes=("big",), per_class=40)
    make_class_folders(tmp_path / "d", classes=("x", "small"), per_class=5, seed=1)
    r = check_dataset(data)
    assert r.imbalance["train"] > 3
    assert any("--class-weights auto" in rec for rec in r.recommendations)


def test_bomb_never_allocates_its_claimed_size(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(60_000, 60_000))   # 3.6 G pixels claimed
    tracemalloc.start()
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        open_rgb(path)
    # also below Pillow's own hard limit: refused by our header check
    path.write_bytes(png_bomb(5000, 5000))
    with pytest.raises(ImageDecodeError, match="header claims 5000x5000"):
        open_rgb(path, max_pixels=1_000_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 * 1024 * 1024


def test_near_pairs_matches_brute_force():
    import numpy as np
    rng = np.random.RandomState(0)
    base = [int(x) for x in rng.randint(0, 2**62, size=40, dtype=np.int64)]
    hashes = base + [h ^ (1 << int(rng.randint(64))) ^ (1 << int(rng.randint(64))) for h in base[:20]]
    items = list(enumerate(hashes))
    brute = sorted((i, j, bin(a ^ b).count("1")) for i, a in items for j, b in items
                   if i < j and bin(a ^ b).count("1") <= 3)
    assert _near_pairs(items, 3) == brute and len(brute) >= 20


def test_names_that_look_like_markup_are_printed_as_text(tmp_path, capsys):
    """issue 40, item 9: a file `a[/b].jpg` (folder `a[`, file `b].jpg`) and a class named like rich markup are
    text in the printed report; rich raised MarkupError after the whole check had run, and `[link=...]` could dress
    a name as a link."""
    from helpers import png_bytes
    data = tmp_path / "data"
    for cls in ("[link=https:evil.example]cat", "a["):
        (data / cls).mkdir(parents=True)
        for i in range(4):
            (data / cls / f"{i}.png").write_bytes(png_bytes(i, size=16))
    (data / "a[" / "b].jpg").write_bytes(b"not an image")
    assert main(["check", str(data)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "a[/b].jpg: not an image" in out and "[link=https:evil.example]cat/0.png" in out
