"""Hostile use of ``fsd`` outside the data readers, one parametrized test per class of docs/reliability.md:

* class 3 (code and machine): ``module:function`` code that fails, exits or returns the wrong thing, a
  student that breaks only in train mode or changes width with the batch, ``--threads`` past the bound, a
  full disk while saving the resume state, a chunk failing its checksum — each one ``Error:`` line, exit 2,
  the work directory unchanged;
* class 5 (export is one output): every kill point and write failure of ``fsd export`` leaves a state that
  the same command completes, and an existing parity record is kept without ``--overwrite``;
* class 6 (noise and advice): warnings are one line, advice names only options the command has.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import signal
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CODE = """
import sys
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, out):
        super().__init__()
        self.linear = nn.Linear(64, 8)
        self.out = out

    def forward(self, x):
        return self.out(self, self.linear(x.flatten(1)))

def student(out):
    return lambda **_: Net(out)

def teacher(out):
    def make():
        net = Net(out)
        return net, net, None
    return make

def train_only(net, z):
    if net.training:
        raise RuntimeError("dropout path broken")
    return z

def exits(**_):
    sys.exit(3)

def raises(**_):
    raise RuntimeError("cannot build")

oned = student(lambda net, z: z[:, 0])
threed = student(lambda net, z: z[:, None])
extra_row = student(lambda net, z: torch.cat([z, z[:1]]))
as_numpy = student(lambda net, z: z.detach().numpy())
as_list = student(lambda net, z: [z])
in_train_mode = student(train_only)
batch_width = student(lambda net, z: z.repeat(1, z.shape[0]))
mode_width = student(lambda net, z: torch.cat([z, z], 1) if net.training else z)
t_oned = teacher(lambda net, z: z[:, 0])
t_extra_row = teacher(lambda net, z: torch.cat([z, z[:1]]))
t_numpy = teacher(lambda net, z: z.detach().numpy())
t_list = teacher(lambda net, z: [z])
"""

BROKEN_IMPORT = "import torch\nvalue = 1 / 0\n"
BROKEN_SYNTAX = "def student(:\n"


@pytest.fixture
def code(tmp_path, monkeypatch):
    """Three fresh modules (unique names: Python caches imports) in a folder outside the work directory."""
    folder = tmp_path / "code"
    folder.mkdir()
    names = {kind: f"fsd_hostile_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("nets", "import", "syntax")}
    for kind, source in (("nets", CODE), ("import", BROKEN_IMPORT), ("syntax", BROKEN_SYNTAX)):
        (folder / f"{names[kind]}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    yield names
    for name in names.values():
        sys.modules.pop(name, None)


def student(spec: str) -> list[str]:
    return ["train-student", "--store", "{store}", "--dataset", "digits", "--out", "{w}/s.pt", "--epochs", "1",
            "--quiet", "--arch", spec, "--trust-code"]  # fmt: skip


def teacher(spec: str) -> list[str]:
    return ["extract-teacher", "--teacher", spec, "--dataset", "digits", "--out", "{w}/t.zarr", "--quiet",
            "--trust-code"]  # fmt: skip


CODE_CASES = {
    # (command template, what the one line must say); {nets}/{import}/{syntax}: the modules above
    "student import fails": (student("{import}:student"), "ZeroDivisionError: division by zero (at fsd_hostile_import"),
    "student syntax error": (student("{syntax}:student"), "SyntaxError"),
    "student factory exits": (student("{nets}:exits"), "sys.exit(3)"),
    "student factory raises": (student("{nets}:raises"), "RuntimeError: cannot build (at fsd_hostile_nets"),
    "student 1-d": (student("{nets}:oned"), "to (2,) in eval mode"),
    "student 3-d": (student("{nets}:threed"), "to (2, 1, 8) in eval mode"),
    "student N+1 rows": (student("{nets}:extra_row"), "to (3, 8) in eval mode"),
    "student numpy": (student("{nets}:as_numpy"), "to ndarray"),
    "student list": (student("{nets}:as_list"), "to list"),
    "student fails in train mode": (student("{nets}:in_train_mode"), "fails in train mode"),
    "student width follows the batch": (student("{nets}:batch_width"), "16 features on a batch of 2"),
    "student width follows the mode": (student("{nets}:mode_width"), "16 on a batch of 2 in train mode"),
    "teacher import fails": (teacher("{import}:teacher"), "ZeroDivisionError"),
    "teacher factory exits": (teacher("{nets}:exits"), "sys.exit(3)"),
    "teacher 1-d": (teacher("{nets}:t_oned"), "batch to (8,), not a (batch, width)"),
    "teacher N+1 rows": (teacher("{nets}:t_extra_row"), "(8, 1, 8, 8) batch to (9, 8), not a (batch, width)"),
    "teacher numpy": (teacher("{nets}:t_numpy"), "to ndarray"),
    "teacher list": (teacher("{nets}:t_list"), "to list"),
}


def fill(template: list[str], work, **names: str) -> list[str]:
    return [a.format(w=work.dir, store=work.store, student=work.student, **names) for a in template]


@pytest.mark.parametrize("template, match", CODE_CASES.values(), ids=CODE_CASES.keys())
def test_class3_user_code_is_one_error_line_naming_what_it_did(h, work, code, template, match):
    before = work.snapshot()
    result = h.invoke(*fill(template, work, **code))
    h.assert_refused(result, before, work.dir, match)


def corrupt_chunk(store: Path, chunk: int = 2) -> None:
    """Flip one byte in the middle of one embeddings chunk file: it still decompresses or not, its crc fails."""
    path = store / "embeddings" / "c" / str(chunk) / "0" / "0"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@contextlib.contextmanager
def file_size_limit():
    """Writes past 5 kB fail with EFBIG (a full disk, as the kernel reports a file-size limit).

    The limit holds only inside the block: pytest's own report file (CI sends it to a file larger than 5 kB)
    must never be written while it is set.
    """
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (5_000, previous[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        signal.signal(signal.SIGXFSZ, handler)


MACHINE_CASES = {
    "--threads 100000": (["--threads", "100000", "store", "info", "{store}"], "--threads", None),
    "FSD_THREADS=100000": (["store", "info", "{store}"], "FSD_THREADS", {"FSD_THREADS": "100000"}),
    "checksum, train-student": (
        ["train-student", "--store", "{store}", "--dataset", "digits", "--out", "{w}/s.pt", "--epochs", "1", "--quiet"],
        "chunk 2",
        None,
    ),  # fmt: skip
    "checksum, eval --store": (["eval", "--faiss", "--store", "{store}"], "chunk 2", None),
    "disk full, resume state": (
        [
            "train-student",
            "--store",
            "{store}",
            "--dataset",
            "digits",
            "--out",
            "{w}/out/s.pt",
            "--epochs",
            "2",
            "--quiet",
        ],
        "s.resume.pt failed",
        None,
    ),  # fmt: skip
    "disk full, TorchScript export": (["export", "{student}", "--torchscript", "{w}/s.ts"], "s.ts failed", None),
}


@pytest.mark.parametrize("template, match, env", MACHINE_CASES.values(), ids=MACHINE_CASES.keys())
def test_class3_machine_limits_are_one_error_line(h, work, monkeypatch, template, match, env):
    name = [k for k, v in MACHINE_CASES.items() if v[0] is template][0]
    if name.startswith("checksum"):
        corrupt_chunk(work.store)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    before = work.snapshot()
    with file_size_limit() if name.startswith("disk full") else contextlib.nullcontext():
        result = h.invoke(*fill(template, work))
    line = h.assert_refused(result, before, work.dir, match)
    assert "Task was destroyed" not in result.stderr and "Traceback" not in result.stderr, line


# -- class 5: export -------------------------------------------------------------------------------------
class Killed(KeyboardInterrupt):
    """Stands for SIGKILL at an injected point (the command stops there; the test then re-runs it)."""


def replace_failing_at(monkeypatch, call: int, error: BaseException) -> None:
    """``os.replace`` raising ``error`` on its ``call``-th use (1: before the first rename, 2: between them)."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == call:
            raise error
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def fail_writing(monkeypatch, what: str) -> None:
    """A full disk while writing the model file or the parity record (both still temporaries)."""
    import distill.models.export as export

    full = OSError(errno.ENOSPC, "No space left on device")
    if what == "model":

        def write(*_args, **_kwargs):
            raise full

        monkeypatch.setattr(export, "_write_onnx", write)
    else:
        real = Path.write_text

        def write_text(self, *args, **kwargs):
            if self.name.startswith(".out.onnx.parity.json."):
                raise full
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)


EXPORT_FAULTS = {
    "disk full writing the model": (lambda mp: fail_writing(mp, "model"), 2),
    "disk full writing the record": (lambda mp: fail_writing(mp, "record"), 2),
    "killed before the renames": (lambda mp: replace_failing_at(mp, 1, Killed()), 130),
    "killed between the renames": (lambda mp: replace_failing_at(mp, 2, Killed()), 130),
    "disk error at the second rename": (lambda mp: replace_failing_at(mp, 2, OSError(errno.EIO, "I/O error")), 2),
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["first export", "--overwrite"])
@pytest.mark.parametrize("inject, code", EXPORT_FAULTS.values(), ids=EXPORT_FAULTS.keys())
def test_class5_every_export_fault_leaves_a_state_the_same_command_completes(
    h, work, monkeypatch, inject, code, overwrite
):
    out, record = work.dir / "out.onnx", work.dir / "out.onnx.parity.json"
    args = ["export", work.student, "--onnx", out, *(["--overwrite"] if overwrite else [])]
    if overwrite:
        h.run_ok(*args)
    with monkeypatch.context() as mp:
        inject(mp)
        failed = h.invoke(*args)
    assert failed.exit_code == code, h.describe(failed)
    assert len(h.error_lines(failed)) == 1 and "Traceback" not in failed.output, h.describe(failed)
    assert not [p.name for p in work.dir.iterdir() if p.name.endswith(".partial")]
    h.run_ok(*args)  # the same command again completes the export
    content = json.loads(record.read_text())
    from featstore.atomic import file_sha256

    assert content["model_sha256"] == file_sha256(out)


def test_class5_an_existing_parity_record_is_kept_without_overwrite(h, work):
    out, record = work.dir / "out.onnx", work.dir / "out.onnx.parity.json"
    record.write_text("my notes\n")
    before = work.snapshot()
    h.assert_refused(h.invoke("export", work.student, "--onnx", out), before, work.dir, "parity.json already exists")
    h.run_ok("export", work.student, "--onnx", out, "--overwrite")
    assert json.loads(record.read_text())["format"] == "onnx"
    before = work.snapshot()
    h.assert_refused(h.invoke("export", work.student, "--onnx", out), before, work.dir, "out.onnx already exists")


# -- class 6: noise and advice ---------------------------------------------------------------------------
def image_folder(root: Path, bad: bool) -> str:
    rng = np.random.default_rng(0)
    for cls in range(2):
        for k in range(4):
            path = root / "train" / f"c{cls}" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    if bad:
        (root / "train" / "c1" / "3.png").write_bytes(b"\x89PNG truncated")
    return f"folder:{root}?size=8"


FOLDER_TEACHER = """
from torch import nn
def flat():
    net = nn.Flatten()
    return net, net, None
"""


def print_like_python(message, category, filename, lineno, file=None, line=None) -> None:
    """Python's default ``warnings.showwarning``: the formatted warning written to stderr."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def stale_lock(work) -> None:
    lock = work.dir / "t.zarr.lock"
    lock.write_text(json.dumps({"pid": 2**22 - 1, "host": os.uname().nodename, "since": 0.0}))


NOISE_CASES = {
    # (command, setup, the line expected, a line that must not appear)
    "train-teacher: no --skip-bad-samples advice": (
        [
            "train-teacher",
            "--dataset",
            "{bad}",
            "--out",
            "{w}/t.pt",
            "--epochs",
            "1",
            "--quiet",
            "--eval-split",
            "none",
            "--loader-workers",
            "0",
        ],  # fmt: skip
        None,
        "Error: folder: cannot read image",
        "--skip-bad-samples",
    ),
    "extract-teacher: the advice": (
        [
            "extract-teacher",
            "--teacher",
            "{flat}",
            "--trust-code",
            "--dataset",
            "{bad}",
            "--out",
            "{w}/t.zarr",
            "--quiet",
            "--loader-workers",
            "0",
        ],  # fmt: skip
        None,
        "--skip-bad-samples",
        None,
    ),
    "skipped sample: one warning line": (
        [
            "extract-teacher",
            "--teacher",
            "{flat}",
            "--trust-code",
            "--dataset",
            "{bad}",
            "--out",
            "{w}/t.zarr",
            "--quiet",
            "--loader-workers",
            "0",
            "--skip-bad-samples",
        ],  # fmt: skip
        None,
        "Warning: folder: cannot read image",
        "warnings.warn",
    ),
    "stale lock: one warning line": (
        [
            "extract-teacher",
            "--teacher",
            "{flat}",
            "--trust-code",
            "--dataset",
            "{good}",
            "--out",
            "{w}/t.zarr",
            "--quiet",
            "--loader-workers",
            "0",
        ],  # fmt: skip
        stale_lock,
        "Warning: taking over the stale lock",
        "warnings.warn",
    ),
}


@pytest.mark.parametrize("template, setup, expected, absent", NOISE_CASES.values(), ids=NOISE_CASES.keys())
def test_class6_messages_are_one_line_and_advise_only_what_exists(
    h, work, tmp_path, monkeypatch, template, setup, expected, absent
):
    name = f"fsd_hostile_flat_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FOLDER_TEACHER)
    monkeypatch.syspath_prepend(str(tmp_path))
    specs = {
        "bad": image_folder(tmp_path / "bad", bad=True),
        "good": image_folder(tmp_path / "good", bad=False),
        "flat": f"{name}:flat",
    }
    if setup is not None:
        setup(work)
    # pytest records warnings instead of printing them; print them as Python's default hook does (through
    # warnings.formatwarning, the hook the CLI installs), so stderr shows what a user's terminal shows
    monkeypatch.setattr(warnings, "showwarning", print_like_python)
    result = h.invoke(*[a.format(w=work.dir, **specs) for a in template])
    sys.modules.pop(name, None)
    lines = result.stderr.splitlines()
    hits = [line for line in lines if expected in line]
    assert len(hits) == 1, h.describe(result)
    if expected.startswith(("Error:", "Warning:")):
        assert hits[0].startswith(expected), h.describe(result)
    if absent is not None:
        assert absent not in result.stderr, h.describe(result)
    assert "Traceback" not in result.output
