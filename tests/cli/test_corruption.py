"""Corruption that still decodes, and damaged metadata, through every reader of a store (issue 15, class 2).

Each case damages a private copy of the session store on purpose, then runs every command that reads it:
training, ``eval --store``, ``eval --gallery-store`` and ``store export`` must refuse with one ``Error:`` line
naming the array (and chunk), exit 2, and leave every file unchanged (the work directory is hashed before
and after); ``store verify`` must report it (exit 1, FAILED) and change nothing either.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numcodecs.blosc
import numpy as np
import pytest
import zarr

CHUNK = 3  # the chunk every case damages (the session store has 7 chunks of 200 rows)


def readers(work) -> dict[str, list[str]]:
    store, d = str(work.store), str(work.dir)
    return {
        "train-student": [
            "train-student", "--store", store, "--dataset", "digits", "--out", f"{d}/s.pt", "--epochs", "1", "--quiet",
        ],
        "eval --store": ["eval", "--faiss", "--store", store],
        "eval --gallery-store": [
            "eval", "--faiss", "--model", str(work.student), "--dataset", "digits", "--gallery-store", store,
        ],
        "store export": ["store", "export", store, "--out", f"{d}/e.h5", "--quiet"],
    }  # fmt: skip


def group(path: Path) -> zarr.Group:
    return zarr.open_group(zarr.storage.LocalStore(path), mode="r+")


def chunk_file(store: Path, array: str, chunk: int = CHUNK) -> Path:
    suffix = {"embeddings": ["0", "0"], "views": ["0", "0"], "scales": ["0"], "labels": []}[array]
    return store.joinpath(array, "c", str(chunk), *suffix)


def recompress_with_old_checksum(path: Path, change) -> None:
    """Rewrite a chunk file as a *valid* Blosc frame of changed data, keeping the old crc32c: the damage a
    flipped bit in the data would do, which still decompresses and would otherwise be trained on."""
    raw = path.read_bytes()
    payload, crc = raw[:-4], raw[-4:]
    values = np.frombuffer(numcodecs.blosc.decompress(payload), dtype=np.uint8).copy()
    change(values)
    typesize = 2  # float16 embeddings; the shuffle only changes the ratio, never the decoded bytes
    path.write_bytes(numcodecs.blosc.compress(values.tobytes(), b"zstd", 5, numcodecs.blosc.SHUFFLE, typesize) + crc)


def flip_embedding_byte(store: Path) -> None:
    def change(v):
        v[10] ^= 0x01  # a low mantissa bit of one float16: still finite, still decodes

    recompress_with_old_checksum(chunk_file(store, "embeddings"), change)


def undecompressable(store: Path) -> None:
    chunk_file(store, "embeddings").write_bytes(b"this is not a blosc frame" * 7)


def shift_labels(store: Path) -> None:
    g = group(store)
    g["labels"][...] = np.roll(g["labels"][...], 1)  # written through zarr: every checksum is valid


def delete_labels_chunk(store: Path) -> None:
    chunk_file(store, "labels").unlink()


def label_out_of_range(store: Path) -> None:
    g = group(store)
    g["labels"][CHUNK * 200 + 5] = 10  # digits: 10 classes, valid labels -1 … 9


def nan_view_parameter(store: Path) -> None:
    g = group(store)
    g["views"][CHUNK * 200 + 7, 1, 2] = np.nan


def nan_head(store: Path) -> None:
    g = group(store)
    weight = g["head/weight"][...]
    weight[4, 2] = np.nan
    g["head/weight"][...] = weight


def edit_attribute(key, value):
    def damage(store: Path) -> None:
        meta = json.loads((store / "zarr.json").read_text())
        meta["attributes"]["fsd"][key] = value
        (store / "zarr.json").write_text(json.dumps(meta))

    return damage


def delete_array_metadata(name: str):
    def damage(store: Path) -> None:
        (store / name / "zarr.json").unlink()

    return damage


DAMAGE = {
    "flipped bit (still decodes)": (flip_embedding_byte, "checksum mismatch"),
    "chunk that does not decompress": (undecompressable, "array embeddings, chunk 3"),
    "labels shifted by one": (shift_labels, "labels"),
    "labels chunk deleted": (delete_labels_chunk, "labels"),
    "label out of range": (label_out_of_range, "labels outside [-1, 10)"),
    "NaN view parameter": (nan_view_parameter, "non-finite view parameters"),
    "NaN in the stored head": (nan_head, "head/weight"),
    "dtype attribute edited": (edit_attribute("dtype", "float32"), "dtype"),
    "chunk_rows attribute edited": (edit_attribute("chunk_rows", 100), "chunk_rows"),
    "chunk_rows attribute not a number": (edit_attribute("chunk_rows", "lots"), "chunk_rows"),
    "embeddings zarr.json deleted": (delete_array_metadata("embeddings"), "embeddings"),
    "labels zarr.json deleted": (delete_array_metadata("labels"), "labels"),
    "views zarr.json deleted": (delete_array_metadata("views"), "views"),
}
READERS = ("train-student", "eval --store", "eval --gallery-store", "store export")


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_every_reader_refuses_a_damaged_store(h, work, case, reader):
    damage, match = DAMAGE[case]
    damage(work.store)
    before = work.snapshot()
    result = h.invoke(*readers(work)[reader])
    line = h.assert_refused(result, before, work.dir, match)
    assert str(work.store) in line or "store" in line.lower()


@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_verify_reports_every_damage(h, work, case):
    damage, match = DAMAGE[case]
    damage(work.store)
    before = work.snapshot()
    result = h.invoke("store", "verify", work.store)
    assert result.exit_code == 1, h.describe(result)
    assert "Traceback" not in result.output
    assert result.stdout.strip().splitlines()[-1] == "FAILED"
    assert match.lower() in result.stdout.lower(), result.stdout
    assert work.snapshot() == before


def test_an_undamaged_copy_passes_every_reader(h, work):
    """The control: the same commands on the same copy, undamaged, succeed (so the refusals above are caused
    by the damage, not by the commands)."""
    for reader in READERS:
        h.run_ok(*readers(work)[reader])
    assert h.invoke("store", "verify", work.store).exit_code == 0


def test_shifted_labels_of_a_format1_store_are_caught_by_the_dataset(h, work, tmp_path):
    """A format 1 store records no labels digest: training compares the labels with the dataset's, and the
    live check does too, so the shift is still caught."""
    downgrade_to_format1(work.store)
    h.run_ok("store", "verify", work.store)  # the undamaged old store is fine
    shift_labels(work.store)
    before = work.snapshot()
    result = h.invoke(*readers(work)["train-student"])
    h.assert_refused(result, before, work.dir, "differs from the dataset's labels")
    live = h.invoke("store", "verify", work.store, "--teacher", work.teacher, "--sample", 20)
    assert live.exit_code == 1 and "differs from the dataset's labels" in live.stdout, h.describe(live)
    assert work.snapshot() == before


def downgrade_to_format1(store: Path) -> None:
    """Turn a format 2 store into exactly what fsd wrote before checksums: no crc32c codec in any array's
    codec chain (each chunk file loses its last 4 bytes), no labels digest, format 1."""
    for meta_file in store.rglob("zarr.json"):
        meta = json.loads(meta_file.read_text())
        if meta.get("node_type") == "array":
            codecs = meta["codecs"]
            if codecs and codecs[-1]["name"] == "crc32c":
                meta["codecs"] = codecs[:-1]
                for chunk in (meta_file.parent / "c").rglob("*"):
                    if chunk.is_file():
                        chunk.write_bytes(chunk.read_bytes()[:-4])
        elif meta_file.parent == store:
            attrs = meta["attributes"]["fsd"]
            attrs["format"] = 1
            attrs.pop("labels_sha256")
        meta_file.write_text(json.dumps(meta))


def test_a_format1_store_still_reads_and_info_says_it_has_no_checksums(h, work, artifacts, tmp_path):
    downgrade_to_format1(work.store)
    info = h.run_ok("store", "info", work.store)
    assert "no checksums" in info.stdout
    assert json.loads(h.run_ok("store", "info", work.store, "--json").stdout)["checksums"] is False
    assert "no checksums" in h.run_ok("store", "verify", work.store).stdout
    new, old = tmp_path / "new.h5", tmp_path / "old.h5"
    h.run_ok("store", "export", artifacts.store, "--out", new, "--quiet")
    h.run_ok("store", "export", work.store, "--out", old, "--quiet")
    import h5py

    with h5py.File(new) as a, h5py.File(old) as b:
        for name in ("embeddings", "labels", "views", "head/weight", "head/bias"):
            assert np.array_equal(a[name][...], b[name][...]), name
    assert json.loads(h.run_ok("store", "info", artifacts.store, "--json").stdout)["checksums"] is True


def test_every_array_of_a_new_store_carries_a_checksum(artifacts):
    arrays = [p for p in artifacts.store.rglob("zarr.json") if json.loads(p.read_text())["node_type"] == "array"]
    assert {p.parent.relative_to(artifacts.store).as_posix() for p in arrays} >= {
        "embeddings", "labels", "views", "progress/done", "head/weight", "head/bias",
    }  # fmt: skip
    for path in arrays:
        assert json.loads(path.read_text())["codecs"][-1]["name"] == "crc32c", path


def test_a_copy_with_a_flipped_bit_differs_from_the_original_only_in_that_chunk(work, artifacts):
    """The damage helper changes exactly one chunk file and keeps its old checksum (it is what the test
    above is meant to catch, not a file that no longer decodes)."""
    flip_embedding_byte(work.store)
    damaged, original = chunk_file(work.store, "embeddings"), chunk_file(artifacts.store, "embeddings")
    assert damaged.read_bytes()[-4:] == original.read_bytes()[-4:]
    assert damaged.read_bytes() != original.read_bytes()
    numcodecs.blosc.decompress(damaged.read_bytes()[:-4])  # still a valid frame
    shutil.copy2(original, damaged)
