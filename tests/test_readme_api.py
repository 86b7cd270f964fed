"""The README's "Python API" example runs as written (in a temporary folder), so the documented public API
cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_api_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"wrote .*store\.zarr: 1347 samples × 2 views × 64 dims \(float16\)", out)
    assert re.search(r"student top-1 0\.\d{3}", out)
    assert {p.name for p in tmp_path.iterdir()} >= {"teacher.pt", "store.zarr", "student.pt", "student.log.json"}
