"""Run files are replaced whole: a failure while writing leaves the old file and no temp file."""
import os

import pytest

from imgclass.core.files import write_text_atomic


def test_write_is_all_or_nothing(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    write_text_atomic(target, "old: 1\n")
    assert target.read_text() == "old: 1\n"

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_text_atomic(target, "new: 2\n")
    assert target.read_text() == "old: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]   # the temp file is gone too


def test_two_writers_never_share_a_temporary_file(tmp_path):
    """Model files, checkpoints and exports take per-process, per-thread temporary names (a fixed X.tmp let two
    `train --resume` processes, or two service workers, write one file together)."""
    import threading

    from imgclass.core.files import temp_name, write_bytes_atomic
    names, together = [], threading.Barrier(4)

    def name():  # four threads alive at once (a finished thread's id may be reused)
        names.append(temp_name(tmp_path / "model.safetensors"))
        together.wait()
    threads = [threading.Thread(target=name) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 4 and all(str(os.getpid()) in n.name for n in names)
    payloads = [bytes([i]) * 100_000 for i in range(8)]
    writers = [threading.Thread(target=write_bytes_atomic, args=(tmp_path / "f.bin", p)) for p in payloads]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    assert (tmp_path / "f.bin").read_bytes() in payloads                  # one whole write, never a mixture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
