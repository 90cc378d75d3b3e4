import os

import pytest
from conftest import png_bytes, scene, write

from segsearch.indexer.discover import discover


@pytest.fixture
def tree(tmp_path):
    img = png_bytes(scene())
    for rel in [
        "b.png",
        "a.JPG",
        "sub/c.webp",
        "sub/deeper/d.tif",
        ".hidden.png",
        ".cache/e.png",
        "notes.txt",
        "sub/f.heic",
    ]:
        write(tmp_path / rel, img)
    return tmp_path


def test_folder_is_recursive_sorted_and_skips_hidden(tree):
    # sorted within each folder, a folder's files before its subfolders
    got = [p.relative_to(tree).as_posix() for p in discover([tree])]
    assert got == ["a.JPG", "b.png", "sub/c.webp", "sub/f.heic", "sub/deeper/d.tif"]
    assert all(p.is_absolute() for p in discover([tree]))


def test_globs_files_and_dedup(tree):
    got = [p.name for p in discover([str(tree / "*.png"), str(tree / "b.png"), str(tree / "sub" / "**" / "*.tif")])]
    assert got == ["b.png", "d.tif"]
    # an explicitly named file is taken whatever its extension; the decoder decides later
    assert [p.name for p in discover([tree / "notes.txt"])] == ["notes.txt"]


def test_missing_input_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        list(discover([tmp_path / "nope"]))


def test_symlink_loop_does_not_hang(tree):
    os.symlink(tree, tree / "sub" / "loop")
    got = [p.relative_to(tree).as_posix() for p in discover([tree])]
    assert got == ["a.JPG", "b.png", "sub/c.webp", "sub/f.heic", "sub/deeper/d.tif"]
