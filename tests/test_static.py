"""The browser files: the top-level ``moi.js`` is the package's, byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

import moi

ROOT = Path(__file__).resolve().parent.parent


def test_top_level_moi_js_is_the_packaged_file():
    top = ROOT / "moi.js"
    assert top.is_symlink() and not os.path.isabs(os.readlink(top))  # survives moving the checkout
    assert top.resolve() == (ROOT / "moi" / "static" / "moi.js").resolve()
    assert top.read_bytes() == Path(moi.moi_js()).read_bytes()


def test_moi_js_and_moi_list_js_point_at_existing_files():
    for path in (moi.moi_js(), moi.moi_list_js()):
        assert Path(path).is_file() and Path(path).stat().st_size > 0
    assert Path(moi.moi_js()).name == "moi.js"
    assert Path(moi.moi_list_js()).name == "moi_list.js"
    assert "moi.init" in Path(moi.moi_js()).read_text()
    assert "moi_list" in Path(moi.moi_list_js()).read_text()
    assert (Path(moi.moi_js()).parent / "moi.css").is_file()
