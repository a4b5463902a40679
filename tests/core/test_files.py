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


def test_a_private_folder_is_this_users_alone_on_the_whole_way(tmp_path):
    """issue 40, item 12: the runtime cache made its parents with the umask and never checked them, and the
    decoded-image cache had no ownership check: a folder others can write on the way could be swapped."""
    import os
    from imgclass.core.files import private_folder
    made = tmp_path / "a" / "b" / "cache"
    assert private_folder(made) and all((p.stat().st_mode & 0o777) == 0o700 for p in (made, made.parent))
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # others may write it, no sticky bit: anything below could be swapped
    assert not private_folder(shared / "cache")
    os.chmod(shared, 0o1777)  # as /tmp: others cannot rename what is not theirs
    assert private_folder(shared / "cache2")
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert not private_folder(tmp_path / "link")
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert not private_folder(loose)  # readable by others: what is cached there is not private
    assert private_folder(loose, others_may_read=True)  # the decoded-image cache: no one else may change it
