"""Tests for distill.evaluation.protocols.ijb: the official IJB-B/IJB-C meta formats (written here in miniature), template
embeddings, 1:1 verification and 1:N identification — each metric by hand and against an independent
brute force — bad meta files (line numbers, unknown templates/labels, NaN, path escapes), and `fsd eval
--ijb-meta` end to end (report keys, one-line errors with exit 2, `fsd compare`)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from distill.evaluation.metrics import far_key, identification_metrics, verification_metrics
from distill.evaluation.protocols.ijb import (
    face_rows,
    ijb_evaluation,
    ijb_identification,
    ijb_verification,
    read_ijb_meta,
    template_embeddings,
    template_rows,
)
from distill.evaluation.testing import brute_identification, brute_templates
from featstore.errors import InputNotFound, InvalidInput

CSV_HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT"


# ----------------------------------------------------------------------------------------------------------------
# writing miniature meta folders in the official formats
# ----------------------------------------------------------------------------------------------------------------


def write_meta(
    root: Path,
    faces,
    pairs=None,
    g1=None,
    g2=None,
    probes=None,
    quality=None,
    prefix: str = "ijbc",
    gallery_names: tuple[str, str] = ("G1", "G2"),
    sub: str | None = "meta",
) -> Path:
    """faces: [(image_name, template, media)]; pairs: [(t1, t2, label)]; g1/g2/probes: [(template, subject)]
    (one csv row per face of the template, like the official files); quality: {image_name: score}."""
    meta = root / sub if sub else root
    meta.mkdir(parents=True, exist_ok=True)
    (meta / f"{prefix}_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m in faces))
    if pairs is not None:
        (meta / f"{prefix}_template_pair_label.txt").write_text("".join(f"{a} {b} {same}\n" for a, b, same in pairs))
    faces_of: dict[int, list[str]] = {}
    for n, t, _ in faces:
        faces_of.setdefault(t, []).append(n)

    def csv_text(rows) -> str:
        lines = [CSV_HEADER]
        for t, s in rows:
            for n in faces_of.get(t, [f"img/{t}.jpg"]):
                lines.append(f"{t},{s},{n},1,10,20,30,40")
        return "\n".join(lines) + "\n"

    for name, rows in zip(gallery_names, (g1, g2)):
        if rows is not None:
            (meta / f"{prefix}_1N_gallery_{name}.csv").write_text(csv_text(rows))
    if probes is not None:
        (meta / f"{prefix}_1N_probe_mixed.csv").write_text(csv_text(probes))
    if quality is not None:
        (meta / f"{prefix}_name_5pts_score.txt").write_text(
            "".join(f"{n} 46.0 62.0 87.7 60.3 68.8 77.6 52.1 99.8 86.4 98.6 {s}\n" for n, s in quality.items())
        )
    return meta


def write_h5(
    path: Path, embeddings: np.ndarray, names: list[str], flip: np.ndarray | None = None, labels: bool = False
) -> Path:
    with h5py.File(path, "w") as h:
        h.create_dataset("embeddings", data=embeddings)
        h.create_dataset("names", data=np.array(names, dtype=h5py.string_dtype()))
        if flip is not None:
            h.create_dataset("embeddings_flip", data=flip)
        if labels:
            h.create_dataset("labels", data=np.zeros(len(names), dtype=np.int64))
    return path


# A small protocol with hand-computable numbers: 2-D features.
#   template 1 (subject A): media 10 = faces a (1,0), b (3,0) -> (2,0); media 11 = face c (0,2) -> (0,2);
#                           mean (1,1) -> (1/√2, 1/√2)
#   template 2 (subject A): face d (0,-5) in media 12 -> (0,-1)
#   template 3 (subject B): face e (4,4) -> (1/√2, 1/√2)
#   template 4 (subject B): face f (-1,0) -> (-1,0)
HAND_FACES = [
    ("a.jpg", 1, 10),
    ("b.jpg", 1, 10),
    ("c.jpg", 1, 11),
    ("d.jpg", 2, 12),
    ("e.jpg", 3, 13),
    ("f.jpg", 4, 14),
]
HAND_X = np.array([[1, 0], [3, 0], [0, 2], [0, -5], [4, 4], [-1, 0]], dtype=np.float32)
R = 1 / math.sqrt(2)
HAND_T = np.array([[R, R], [0, -1], [R, R], [-1, 0]])


def test_template_embeddings_by_hand() -> None:
    t = np.array([f[1] for f in HAND_FACES])
    m = np.array([f[2] for f in HAND_FACES])
    ids, feats = template_embeddings(HAND_X, [f[0] for f in HAND_FACES], t, m)
    assert ids.tolist() == [1, 2, 3, 4] and feats.dtype == np.float32
    np.testing.assert_allclose(feats, HAND_T, atol=1e-7)
    # the face order does not matter
    order = np.array([5, 2, 0, 4, 1, 3])
    ids2, feats2 = template_embeddings(HAND_X[order], None, t[order], m[order])
    assert ids2.tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(feats2, feats, atol=1e-7)


def test_template_embeddings_media_mean_is_not_face_mean() -> None:
    # one template: media 1 holds 3 faces (1,0), media 2 one face (0,1): media means (1,0), (0,1) -> (1,1)/√2.
    # A plain mean over the 4 faces would give (3,1)/√10 — the per-media rule weights media, not frames.
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    _, feats = template_embeddings(x, None, [7, 7, 7, 7], [1, 1, 1, 2])
    np.testing.assert_allclose(feats, [[R, R]], atol=1e-7)


def test_template_embeddings_quality_flip_and_face_normalisation_by_hand() -> None:
    x = np.array([[1, 0], [0, 1]], dtype=np.float32)  # one template, two media
    # quality 3 and 1: (3,0) and (0,1) -> (3,1)/√10
    _, feats = template_embeddings(x, None, [1, 1], [1, 2], quality=[3.0, 1.0])
    np.testing.assert_allclose(feats, [[3 / math.sqrt(10), 1 / math.sqrt(10)]], atol=1e-7)
    # flip-sum: (1,0)+(1,2) = (2,2), (0,1)+(0,1) = (0,2) -> (2,4)/√20
    flip = np.array([[1, 2], [0, 1]], dtype=np.float32)
    _, feats = template_embeddings(x, None, [1, 1], [1, 2], flip=flip)
    np.testing.assert_allclose(feats, [[2 / math.sqrt(20), 4 / math.sqrt(20)]], atol=1e-7)
    # face normalisation removes the norm: (10,0) and (0,1) count alike -> (1,1)/√2 (without: (10,1)/√101)
    big = np.array([[10, 0], [0, 1]], dtype=np.float32)
    _, plain = template_embeddings(big, None, [1, 1], [1, 2])
    _, normed = template_embeddings(big, None, [1, 1], [1, 2], normalize_faces=True)
    np.testing.assert_allclose(plain, [[10 / math.sqrt(101), 1 / math.sqrt(101)]], atol=1e-7)
    np.testing.assert_allclose(normed, [[R, R]], atol=1e-7)
    # zero quality everywhere: a zero template, which stays zero (score 0 against everything)
    _, zero = template_embeddings(x, None, [1, 1], [1, 2], quality=[0.0, 0.0])
    assert np.all(zero == 0)


@pytest.mark.parametrize(
    "options", [{}, {"quality": True}, {"flip": True}, {"normalize_faces": True}, {"quality": True, "flip": True}]
)
def test_template_embeddings_against_brute_force(options) -> None:
    rng = np.random.default_rng(3)
    n = 300
    x = rng.normal(size=(n, 8)).astype(np.float32)
    t = rng.integers(0, 40, size=n) * 7 + 1000  # sparse, unordered ids
    m = rng.integers(0, 5, size=n)  # media ids shared across templates on purpose: media are per template
    quality = rng.uniform(0.1, 1.0, size=n) if options.get("quality") else None
    flip = rng.normal(size=(n, 8)).astype(np.float32) if options.get("flip") else None
    ids, feats = template_embeddings(
        x, None, t, m, quality, flip, normalize_faces=options.get("normalize_faces", False)
    )
    expected = brute_templates(x, t, m, quality, flip, options.get("normalize_faces", False))
    assert ids.tolist() == list(expected)
    np.testing.assert_allclose(feats, np.array(list(expected.values())), atol=2e-6)
    # faces gathered from rows of a larger, shuffled matrix, a few faces per block: the same templates
    perm = rng.permutation(n + 50)
    big = rng.normal(size=(n + 50, 8)).astype(np.float32)
    big[perm[:n]] = x
    big_flip = None
    if flip is not None:
        big_flip = rng.normal(size=(n + 50, 8)).astype(np.float32)
        big_flip[perm[:n]] = flip
    ids2, feats2 = template_embeddings(
        big,
        None,
        t,
        m,
        quality,
        big_flip,
        rows=perm[:n],
        block=7,
        normalize_faces=options.get("normalize_faces", False),
    )
    assert ids2.tolist() == ids.tolist()
    np.testing.assert_allclose(feats2, feats, atol=1e-6)


def test_template_embeddings_bad_input() -> None:
    x = HAND_X.copy()
    t = [f[1] for f in HAND_FACES]
    m = [f[2] for f in HAND_FACES]
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        template_embeddings(bad, None, t, m)
    with pytest.raises(InvalidInput, match="NaN"):
        template_embeddings(x, None, t, m, flip=bad)
    with pytest.raises(InvalidInput, match="quality of face 'c.jpg'"):
        template_embeddings(x, [f[0] for f in HAND_FACES], t, m, quality=[1, 1, np.nan, 1, 1, 1])
    with pytest.raises(InvalidInput, match=">= 0"):
        template_embeddings(x, None, t, m, quality=[1, 1, -1, 1, 1, 1])
    with pytest.raises(InvalidInput, match="face_media must be 5 integers"):
        template_embeddings(x, None, t[:-1], m)
    with pytest.raises(InvalidInput, match="6 embeddings for 5 faces"):
        template_embeddings(x, None, t[:-1], m[:-1])
    with pytest.raises(InvalidInput, match="face_template"):
        template_embeddings(x, None, np.array(t, dtype=float), m)
    with pytest.raises(InvalidInput, match="face rows out of range"):
        template_embeddings(x, None, t, m, rows=[0, 1, 2, 3, 4, 6])
    with pytest.raises(InvalidInput, match="face_media"):
        template_embeddings(x, None, t, np.array(m, dtype=float))
    with pytest.raises(InvalidInput, match="do not match"):
        template_embeddings(x, None, t, m, flip=x[:, :1])


def test_template_rows() -> None:
    ids = np.array([3, 5, 9])
    assert template_rows(ids, [[9, 3], [5, 5]]).tolist() == [[2, 0], [1, 1]]
    with pytest.raises(InvalidInput, match="template 4 has no template embedding"):
        template_rows(ids, [3, 4])
    with pytest.raises(InvalidInput, match="template 10"):
        template_rows(ids, [10])


# ----------------------------------------------------------------------------------------------------------------
# 1:1 verification
# ----------------------------------------------------------------------------------------------------------------


def test_ijb_verification_by_hand() -> None:
    # rows of HAND_T: cos(t1,t2) = -R, cos(t1,t3) = 1, cos(t1,t4) = -R, cos(t2,t3) = -R, cos(t3,t4) = -R,
    # cos(t2,t4) = 0. Genuine: (1,2) -R, (3,4) -R; impostor: (1,3) 1, (1,4) -R, (2,4) 0.
    pairs = np.array([[0, 1], [2, 3], [0, 2], [0, 3], [1, 3]])
    labels = np.array([1, 1, 0, 0, 0])
    report, (far, tar) = ijb_verification(HAND_T, pairs, labels, fars=(0.5, 1.0))
    assert report["num_pairs"] == 5 and report["num_genuine"] == 2 and report["num_impostor"] == 3
    # FAR 0.5: k = floor(1.5) = 1, impostors desc [1, 0, -R], t = s_2 = 0: no genuine > 0 -> TAR 0
    # FAR 1.0: k = 3 = N -> t = -inf -> TAR 1
    assert report["tar_at_far"] == {"5e-01": 0.0, "1e+00": 1.0}
    # AUC: genuine -R vs impostors {1, -R, 0}: each genuine beats none, ties one -> (0.5 + 0.5) / 6
    assert report["roc_auc"] == pytest.approx(1 / 6)
    # the same as verification_metrics on hand scores
    hand = verification_metrics([-R, -R], [1.0, -R, 0.0], fars=(0.5, 1.0))
    assert report["tar_at_far"] == hand["tar_at_far"]
    assert (report["roc_auc"], report["eer"]) == pytest.approx((hand["roc_auc"], hand["eer"]))
    assert far[0] == 0.0 and far[-1] == 1.0 and tar[-1] == 1.0
    # bool labels work too
    assert ijb_verification(HAND_T, pairs, labels.astype(bool), fars=(0.5, 1.0))[0] == report


def test_ijb_verification_against_brute_force() -> None:
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(60, 12))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    pairs = rng.integers(0, 60, size=(3000, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    labels = (rng.random(len(pairs)) < 0.1).astype(int)
    fars = (1e-3, 1e-2, 1e-1)
    report, _ = ijb_verification(feats.astype(np.float32), pairs, labels, fars)
    scores = np.array([float(feats[a] @ feats[b]) for a, b in pairs])
    gen, imp = scores[labels == 1], scores[labels == 0]
    for f in fars:
        n = math.floor(f * imp.size)
        # brute force: best TAR over every threshold whose FAR (accept iff score > t) is at most f
        best = max(np.mean(gen > t) for t in np.concatenate([[-np.inf], imp, gen]) if np.sum(imp > t) <= n)
        assert report["tar_at_far"][far_key(f)] == pytest.approx(best, abs=1e-12)
    auc = np.mean([(g > i) + 0.5 * (g == i) for g in gen for i in imp])
    assert report["roc_auc"] == pytest.approx(auc, abs=1e-9)


def test_ijb_verification_bad_input() -> None:
    pairs = np.array([[0, 1], [2, 3]])
    with pytest.raises(InvalidInput, match="got 2"):
        ijb_verification(HAND_T, pairs, np.array([1, 2]))
    with pytest.raises(InvalidInput, match="out of range"):
        ijb_verification(HAND_T, np.array([[0, 1], [2, 4]]), np.array([1, 0]))
    with pytest.raises(InvalidInput, match="out of range"):
        ijb_verification(HAND_T, np.array([[0, 1], [-1, 2]]), np.array([1, 0]))
    bad = HAND_T.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        ijb_verification(bad, pairs, np.array([1, 0]))


# ----------------------------------------------------------------------------------------------------------------
# 1:N identification
# ----------------------------------------------------------------------------------------------------------------


def test_identification_metrics_by_hand() -> None:
    gallery = [100, 200, 300]
    neighbors = np.array(
        [
            [100, 200, 300],  # p0 subject 100, mated, rank 1, score 0.9
            [300, 200, 100],  # p1 subject 200, mated, rank 2, 0.8
            [100, 200, 300],  # p2 subject 300, mated, rank 3, 0.7
            [300, 100, 200],  # p3 subject 999, non-mated, 0.85
            [200, 100, 300],  # p4 subject 998, non-mated, 0.6
            [100, 300, 200],
        ]
    )  # p5 subject 100, mated, rank 1, 0.5
    top1 = [0.9, 0.8, 0.7, 0.85, 0.6, 0.5]
    probes = [100, 200, 300, 999, 998, 100]
    r = identification_metrics(neighbors, top1, probes, gallery, ranks=(1, 2, 3, 10), fpirs=(0.1, 0.5, 1.0))
    assert (r["num_probes"], r["num_mated"], r["num_nonmated"]) == (6, 4, 2)
    assert (r["rank_1"], r["rank_2"], r["rank_3"], r["rank_10"]) == (0.5, 0.75, 1.0, 1.0)
    # FPIR 0.1: floor(0.2) = 0 -> undefined. FPIR 0.5: k = 1, non-mated desc [0.85, 0.6], t = 0.6:
    # mated at rank 1 with score > 0.6: p0 only -> 1/4. FPIR 1: t = -inf -> every rank-1 hit: p0, p5 -> 2/4.
    assert r["tpir_at_fpir"] == {"1e-01": None, "5e-01": 0.25, "1e+00": 0.5}
    # no mated probe: everything undefined but counted
    none = identification_metrics(neighbors[3:5], top1[3:5], probes[3:5], gallery, ranks=(1,), fpirs=(0.5,))
    assert none == {"num_probes": 2, "num_mated": 0, "num_nonmated": 2, "rank_1": None, "tpir_at_fpir": {"5e-01": None}}


def test_identification_metrics_threshold_is_strict_with_ties() -> None:
    # non-mated top-1 scores [0.8, 0.8]: FPIR 0.5 -> k = 1, t = s_2 = 0.8; a mate at exactly 0.8 is not accepted
    # (accepting it would accept both non-mated probes: FPIR 1 > 0.5)
    r = identification_metrics([[1], [1], [1], [1]], [0.8, 0.8, 0.8, 0.9], [1, 7, 8, 1], [1], ranks=(1,), fpirs=(0.5,))
    assert r["tpir_at_fpir"] == {"5e-01": 0.5}


def test_identification_metrics_bad_input() -> None:
    n = np.array([[1, 2], [2, 1]])
    with pytest.raises(InvalidInput, match="same probes"):
        identification_metrics(n, [0.1], [1, 2], [1, 2])
    with pytest.raises(InvalidInput, match="K >= 2"):
        identification_metrics(n[:, :1], [0.1, 0.2], [1, 2], [1, 2], ranks=(1, 5))
    with pytest.raises(InvalidInput, match="NaN"):
        identification_metrics(n, [0.1, np.nan], [1, 2], [1, 2])
    with pytest.raises(InvalidInput, match="FAR"):
        identification_metrics(n, [0.1, 0.2], [1, 2], [1, 2], fpirs=(0.0,))
    with pytest.raises(InvalidInput, match="ks"):
        identification_metrics(n, [0.1, 0.2], [1, 2], [1, 2], ranks=(0,))
    with pytest.raises(InvalidInput, match="empty"):
        identification_metrics(np.zeros((2, 0), dtype=int), [0.1, 0.2], [1, 2], [])


def test_ijb_identification_against_brute_force() -> None:
    rng = np.random.default_rng(11)
    centers = rng.normal(size=(80, 16))
    g_subj = np.arange(40)  # the gallery holds subjects 0..39, one template each
    gallery = centers[g_subj] + 0.8 * rng.normal(size=(40, 16))
    p_subj = rng.integers(0, 80, size=400)  # half the probes' subjects are not in the gallery
    probes = centers[p_subj] + 0.8 * rng.normal(size=(400, 16))
    ranks, fpirs = (1, 5, 10), (1e-2, 1e-1, 0.3)
    got = ijb_identification(
        gallery.astype(np.float32), g_subj, probes.astype(np.float32), p_subj, ranks, fpirs, use_gpu=False
    )
    want = brute_identification(gallery, g_subj, probes, p_subj, ranks, fpirs)
    for r in ranks:
        assert got[f"rank_{r}"] == pytest.approx(want[f"rank_{r}"], abs=1e-12)
    for key, value in want["tpir_at_fpir"].items():
        assert got["tpir_at_fpir"][key] == (None if value is None else pytest.approx(value, abs=1e-12))
    assert 0 < got["rank_1"] < got["rank_5"] <= got["rank_10"] <= 1
    assert got["num_mated"] + got["num_nonmated"] == 400


def test_ijb_identification_gallery_smaller_than_rank() -> None:
    g = np.eye(3, dtype=np.float32)
    p = np.array([[1, 0.1, 0], [0, 0, 1], [0.2, 1, 0]], dtype=np.float32)
    r = ijb_identification(g, [5, 6, 7], p, [6, 7, 8], ranks=(1, 5, 10), fpirs=(1.0,), use_gpu=False)
    # probe 0 (subject 6) sees subject 5 first, then 6: rank 2; probe 1 (subject 7) rank 1; probe 2 non-mated
    assert (r["rank_1"], r["rank_5"], r["rank_10"]) == (0.5, 1.0, 1.0)
    assert r["tpir_at_fpir"] == {"1e+00": 0.5}
    with pytest.raises(InvalidInput, match="2 gallery subjects for 3"):
        ijb_identification(g, [5, 6], p, [6, 7, 8], use_gpu=False)


# ----------------------------------------------------------------------------------------------------------------
# reading the meta files
# ----------------------------------------------------------------------------------------------------------------


def hand_meta(root: Path, **kw) -> Path:
    defaults = {
        "pairs": [(1, 2, 1), (3, 4, 1), (1, 3, 0), (1, 4, 0), (2, 4, 0)],
        "g1": [(1, 100)],
        "g2": [(3, 200)],
        "probes": [(2, 100), (4, 200)],
    }
    defaults.update(kw)
    write_meta(root, HAND_FACES, **defaults)
    return root


def test_read_meta_official_layout(tmp_path: Path) -> None:
    hand_meta(tmp_path, quality={n: 0.5 + i / 10 for i, (n, _, _) in enumerate(HAND_FACES)})
    meta = read_ijb_meta(tmp_path)
    assert meta.prefix == "ijbc" and meta.face_names == [f[0] for f in HAND_FACES]
    assert meta.face_template.tolist() == [1, 1, 1, 2, 3, 4] and meta.face_media.tolist() == [10, 10, 11, 12, 13, 14]
    assert meta.pairs.tolist() == [[1, 2], [3, 4], [1, 3], [1, 4], [2, 4]]
    assert meta.pair_labels.tolist() == [True, True, False, False, False]
    assert {k: (t.tolist(), s.tolist()) for k, (t, s) in meta.galleries.items()} == {
        "G1": ([1], [100]),
        "G2": ([3], [200]),
    }
    assert [a.tolist() for a in meta.probes] == [[2, 4], [100, 200]]
    np.testing.assert_allclose(meta.quality, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert set(meta.files) == {"faces", "quality", "pairs", "gallery_G1", "gallery_G2", "probes"}
    # the meta folder itself works as DIR too, and the prefix may be given
    again = read_ijb_meta(tmp_path / "meta", dataset_prefix="ijbc")
    assert again.face_names == meta.face_names and again.pairs.tolist() == meta.pairs.tolist()


def test_read_meta_ijbb_names_and_optional_parts(tmp_path: Path) -> None:
    write_meta(
        tmp_path,
        HAND_FACES,
        g1=[(1, 100)],
        g2=[(3, 200)],
        probes=[(2, 100), (4, 200)],
        prefix="ijbb",
        gallery_names=("S1", "S2"),
        sub=None,
    )
    meta = read_ijb_meta(tmp_path)
    assert meta.prefix == "ijbb" and meta.pairs is None and meta.quality is None
    assert set(meta.galleries) == {"G1", "G2"} and meta.files["gallery_G1"].endswith("ijbb_1N_gallery_S1.csv")
    write_meta(tmp_path / "only11", HAND_FACES, pairs=[(1, 2, 1)])
    assert read_ijb_meta(tmp_path / "only11").probes is None
    # a CSV saved with a byte-order mark and lower-case, space-padded column names
    bom = tmp_path / "bom"
    write_meta(bom, HAND_FACES, g1=[(1, 100)], g2=[(3, 200)], probes=[(2, 100)])
    (bom / "meta" / "ijbc_1N_gallery_G1.csv").write_text("\ufefftemplate_id, subject_id ,filename\n1,100,a.jpg\n")
    assert read_ijb_meta(bom).galleries["G1"][1].tolist() == [100]


def test_pair_file_fast_path_equals_line_parser(tmp_path: Path) -> None:
    from distill.evaluation.protocols.ijb_meta import _parse_pairs, _parse_pairs_by_line

    rng = np.random.default_rng(0)
    rows = rng.integers(1, 5, size=(500, 2))
    rows = rows[rows[:, 0] != rows[:, 1]]
    text = "".join(f"{a} {b} {int(rng.random() < 0.3)}\n" for a, b in rows) + "\n"
    known = np.arange(1, 5)
    fast = _parse_pairs(text, "p", known, "f")
    slow = _parse_pairs_by_line(text, "p", known, "f")
    assert np.array_equal(fast[0], slow[0]) and np.array_equal(fast[1], slow[1])


BAD_META = {
    "face line with 2 fields": ({"faces_text": "a.jpg 1 10\nb.jpg 1\n"}, "ijbc_face_tid_mid.txt line 2: expected"),
    "face template not an integer": (
        {"faces_text": "a.jpg 1 10\nb.jpg x 10\n"},
        "line 2: template_id must be an integer",
    ),
    "negative media": ({"faces_text": "a.jpg 1 -3\n"}, "line 1: template and media ids must be >= 0"),
    "duplicate image": ({"faces_text": "a.jpg 1 10\n\na.jpg 2 11\n"}, "line 3: image 'a.jpg' is listed twice"),
    "absolute image path": (
        {"faces_text": "a.jpg 1 10\n/etc/passwd 2 11\n"},
        "line 2: image path '/etc/passwd' escapes the data root",
    ),
    "dot-dot image path": ({"faces_text": "../../x.jpg 1 10\n"}, "line 1: image path '../../x.jpg' escapes"),
    "windows drive path": ({"faces_text": "C:\\x.jpg 1 10\n"}, "escapes the data root"),
    "empty face file": ({"faces_text": "\n\n"}, "lists no faces"),
    "pair label unknown": ({"pairs_text": "1 2 1\n1 3 2\n"}, "ijbc_template_pair_label.txt line 2: label must be 1"),
    "pair with 4 fields": ({"pairs_text": "1 2 1\n1 3 0 9\n"}, "line 2: expected 'template_id_1 template_id_2 label'"),
    "pair template not an integer": ({"pairs_text": "1 2.5 1\n"}, "line 1: template_id_2 must be an integer"),
    "pair template unknown": ({"pairs_text": "1 2 1\n\n1 99 0\n"}, "line 3: template 99 has no face"),
    "pair with itself": ({"pairs_text": "1 1 1\n"}, "line 1: pairs template 1 with itself"),
    "csv without header": ({"g1_text": "1,100,a.jpg\n"}, "ijbc_1N_gallery_G1.csv line 1: expected a header"),
    "csv subject changes": (
        {"g1_text": CSV_HEADER + "\n1,100,a.jpg\n1,101,b.jpg\n"},
        "G1.csv line 3: template 1 has subject 101 here but 100 on line 2",
    ),
    "csv unknown template": (
        {"probe_text": CSV_HEADER + "\n2,100,d.jpg\n77,100,x.jpg\n"},
        "probe_mixed.csv line 3: template 77 has no face",
    ),
    "csv short row": ({"g2_text": CSV_HEADER + "\n3\n"}, "G2.csv line 2: expected at least 3"),
    "csv bad subject": ({"g2_text": CSV_HEADER + "\n3,abc,e.jpg\n"}, "G2.csv line 2: SUBJECT_ID must be an integer"),
    "csv filename escapes": ({"g2_text": CSV_HEADER + "\n3,200,../../e.jpg\n"}, "G2.csv line 2: FILENAME"),
    "quality NaN": (
        {"quality_text": "a.jpg 1 2 3 4 5 6 7 8 9 10 nan\n"},
        "5pts_score.txt line 1: landmarks and score must be finite",
    ),
    "quality short line": ({"quality_text": "a.jpg 0.9\n"}, "line 1: expected 'image_name x1 y1"),
    "quality missing image": (
        {"quality_text": "a.jpg 1 2 3 4 5 6 7 8 9 10 0.9\n"},
        "no score for image 'b.jpg' (.*ijbc_face_tid_mid.txt line 2)",
    ),
}


def write_raw(
    root: Path,
    faces_text="a.jpg 1 10\nb.jpg 2 11\nc.jpg 3 12\nd.jpg 4 13\n",
    pairs_text="1 2 1\n",
    g1_text=None,
    g2_text=None,
    probe_text=None,
    quality_text=None,
) -> Path:
    meta = root / "meta"
    meta.mkdir(parents=True)
    (meta / "ijbc_face_tid_mid.txt").write_text(faces_text)
    (meta / "ijbc_template_pair_label.txt").write_text(pairs_text)
    if any(t is not None for t in (g1_text, g2_text, probe_text)):
        (meta / "ijbc_1N_gallery_G1.csv").write_text(g1_text or CSV_HEADER + "\n1,100,a.jpg\n")
        (meta / "ijbc_1N_gallery_G2.csv").write_text(g2_text or CSV_HEADER + "\n3,200,c.jpg\n")
        (meta / "ijbc_1N_probe_mixed.csv").write_text(probe_text or CSV_HEADER + "\n2,100,b.jpg\n")
    if quality_text is not None:
        (meta / "ijbc_name_5pts_score.txt").write_text(quality_text)
    return root


@pytest.mark.parametrize("case", BAD_META.values(), ids=BAD_META.keys())
def test_bad_meta_files(tmp_path: Path, case) -> None:
    files, match = case
    write_raw(tmp_path, **files)
    with pytest.raises(InvalidInput, match=match):
        read_ijb_meta(tmp_path)


def test_missing_or_incomplete_meta(tmp_path: Path) -> None:
    with pytest.raises(InputNotFound, match="does not exist"):
        read_ijb_meta(tmp_path / "nope")
    with pytest.raises(InvalidInput, match="no <prefix>_face_tid_mid.txt"):
        read_ijb_meta(tmp_path)
    write_meta(tmp_path / "faces_only", HAND_FACES)
    with pytest.raises(InputNotFound, match="neither"):
        read_ijb_meta(tmp_path / "faces_only")
    write_meta(tmp_path / "no_probes", HAND_FACES, g1=[(1, 100)], g2=[(3, 200)])
    with pytest.raises(InputNotFound, match="1:N needs both gallery files and the probe file"):
        read_ijb_meta(tmp_path / "no_probes")
    write_meta(tmp_path / "two", HAND_FACES, pairs=[(1, 2, 1)])
    write_meta(tmp_path / "two", HAND_FACES, pairs=[(1, 2, 1)], prefix="ijbb")
    with pytest.raises(InvalidInput, match="several datasets"):
        read_ijb_meta(tmp_path / "two")
    assert read_ijb_meta(tmp_path / "two", dataset_prefix="ijbb").prefix == "ijbb"
    with pytest.raises(InvalidInput, match="prefix"):
        read_ijb_meta(tmp_path / "two", dataset_prefix="../two/meta/ijbc")
    (tmp_path / "bin" / "meta").mkdir(parents=True)
    (tmp_path / "bin" / "meta" / "ijbc_face_tid_mid.txt").write_bytes(b"\xff\xfe 1 2\n")
    with pytest.raises(InvalidInput, match="not a UTF-8 text file"):
        read_ijb_meta(tmp_path / "bin")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_meta_files_resolving_outside_the_root_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_meta(outside, HAND_FACES, pairs=[(1, 2, 1)])
    root = tmp_path / "root"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "ijbc_face_tid_mid.txt").symlink_to(outside / "meta" / "ijbc_face_tid_mid.txt")
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("1 2 1\n")
    with pytest.raises(InvalidInput, match="outside the data root"):
        read_ijb_meta(root)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "meta").symlink_to(outside / "meta", target_is_directory=True)
    with pytest.raises(InvalidInput, match="outside the data root"):
        read_ijb_meta(linked)


def test_face_rows_match_names_exactly_then_by_base_name(tmp_path: Path) -> None:
    meta = read_ijb_meta(hand_meta(tmp_path))
    names = ["f.jpg", "e.jpg", "loose_crop/d.jpg", "c.jpg", "b.jpg", "a.jpg", "unused.jpg"]
    assert face_rows(meta, names).tolist() == [5, 4, 3, 2, 1, 0]
    with pytest.raises(InvalidInput, match=r"ijbc_face_tid_mid.txt line 6: image 'f.jpg' has no embedding"):
        face_rows(meta, names[1:])
    with pytest.raises(InvalidInput, match="line 4: image 'd.jpg' matches several"):
        face_rows(meta, names + ["other/d.jpg"])
    # a face named with folders is never taken from another folder's image of the same file name
    meta.face_names[0] = "img/a.jpg"
    with pytest.raises(InvalidInput, match="image 'img/a.jpg' has no embedding"):
        face_rows(meta, ["frames/a.jpg", *names[:-2]])
    assert face_rows(meta, ["data/img/a.jpg", *names[:-2]]).tolist()[0] == 0


# ----------------------------------------------------------------------------------------------------------------
# the whole protocol
# ----------------------------------------------------------------------------------------------------------------


def test_ijb_evaluation_by_hand(tmp_path: Path) -> None:
    meta = read_ijb_meta(hand_meta(tmp_path))
    names = [f[0] for f in HAND_FACES]
    section, curves = ijb_evaluation(HAND_X, names, meta, fars=(0.5, 1.0), ranks=(1,), fpirs=(1.0,), use_gpu=False)
    v = section["verification"]
    assert v["tar_at_far"] == {"5e-01": 0.0, "1e+00": 1.0} and v["num_pairs"] == 5
    assert v["roc_auc"] == pytest.approx(1 / 6)
    # G1 = {template 1 (subject 100)}; probes: template 2 (100, mated; score cos(t2, t1) = -R),
    # template 4 (200, non-mated; cos(t4, t1) = -R). FPIR 1 -> t = -inf -> TPIR 1.
    g1 = section["identification"]["G1"]
    assert (g1["num_mated"], g1["num_nonmated"], g1["rank_1"], g1["tpir_at_fpir"]) == (1, 1, 1.0, {"1e+00": 1.0})
    avg = section["identification"]["average"]
    assert avg["rank_1"] == 1.0 and avg["num_mated"] == 2
    assert section["protocol"]["template"]["flip"] is False and section["protocol"]["num_templates"] == 4
    assert "roc" in curves
    json.dumps(section)  # plain JSON types only


def synthetic_ijb(tmp_path: Path, seed: int = 0, subjects: int = 24, noise: float = 0.3):
    """Subjects with random centres; each has a gallery template (G1: even subjects, G2: odd) and two probe
    templates; templates hold 1-3 media of 1-3 faces; every image gets an embedding and a flipped one."""
    rng = np.random.default_rng(seed)
    dim = 16
    centers = rng.normal(size=(subjects, dim))
    faces, emb, flip, subject_of = [], [], [], {}
    template = 0
    media = 1000
    g1, g2, probes = [], [], []
    for s in range(subjects):
        for role in ("gallery", "probe", "probe"):
            template += 1
            subject_of[template] = s
            for _ in range(rng.integers(1, 4)):
                media += 1
                for _ in range(rng.integers(1, 4)):
                    name = f"img/{len(faces)}.jpg"
                    faces.append((name, template, media))
                    emb.append(centers[s] + noise * rng.normal(size=dim))
                    flip.append(centers[s] + noise * rng.normal(size=dim))
            if role == "gallery":
                (g1 if s % 2 == 0 else g2).append((template, 10 + s))
            else:
                probes.append((template, 10 + s))
    templates = sorted(subject_of)
    pairs = [
        (a, b, int(subject_of[a] == subject_of[b]))
        for i, a in enumerate(templates)
        for b in templates[i + 1 :]
        if subject_of[a] == subject_of[b] or (a + b) % 3 == 0
    ]
    quality = {n: float(rng.uniform(0.2, 1.0)) for n, _, _ in faces}
    write_meta(tmp_path, faces, pairs, g1, g2, probes, quality)
    return faces, np.array(emb, np.float32), np.array(flip, np.float32), quality, pairs, g1, g2, probes


def test_ijb_evaluation_against_independent_brute_force(tmp_path: Path) -> None:
    faces, emb, flip, quality, pairs, g1, g2, probes = synthetic_ijb(tmp_path, noise=2.0)
    meta = read_ijb_meta(tmp_path)
    names = [f[0] for f in faces]
    order = np.random.default_rng(1).permutation(len(names))  # the embedding file's own order
    fars, fpirs = (1e-2, 1e-1), (1e-1, 0.5)
    section, _ = ijb_evaluation(
        emb[order], [names[i] for i in order], meta, flip=flip[order], fars=fars, fpirs=fpirs, use_gpu=False
    )
    t = np.array([f[1] for f in faces])
    m = np.array([f[2] for f in faces])
    q = np.array([quality[n] for n in names])
    tmpl = brute_templates(emb, t, m, q, flip)
    scores = np.array([tmpl[a] @ tmpl[b] for a, b, _ in pairs])
    labels = np.array([same for _, _, same in pairs], dtype=bool)
    want_v = verification_metrics(scores[labels], scores[~labels], fars)
    got_v = section["verification"]
    assert got_v["num_genuine"] == want_v["num_genuine"] and got_v["num_impostor"] == want_v["num_impostor"]
    for key in ("roc_auc", "eer"):
        assert got_v[key] == pytest.approx(want_v[key], abs=1e-9)
    for key, value in want_v["tar_at_far"].items():
        assert got_v["tar_at_far"][key] == pytest.approx(value, abs=1e-12)
    p_feats = np.array([tmpl[tid] for tid, _ in probes])
    p_subj = [s for _, s in probes]
    for name, gallery in (("G1", g1), ("G2", g2)):
        want = brute_identification(
            np.array([tmpl[tid] for tid, _ in gallery]), [s for _, s in gallery], p_feats, p_subj, (1, 5, 10), fpirs
        )
        got = section["identification"][name]
        assert got["num_mated"] == len(gallery) * 2 and got["num_nonmated"] == len(probes) - len(gallery) * 2
        for r in (1, 5, 10):
            assert got[f"rank_{r}"] == pytest.approx(want[f"rank_{r}"], abs=1e-12)
        assert got["tpir_at_fpir"] == pytest.approx(want["tpir_at_fpir"], abs=1e-12)
    g1r, g2r = section["identification"]["G1"], section["identification"]["G2"]
    avg = section["identification"]["average"]
    assert avg["rank_1"] == pytest.approx(
        (g1r["rank_1"] * g1r["num_mated"] + g2r["rank_1"] * g2r["num_mated"]) / (g1r["num_mated"] + g2r["num_mated"])
    )
    assert avg["tpir_at_fpir"]["5e-01"] == pytest.approx(
        (g1r["tpir_at_fpir"]["5e-01"] + g2r["tpir_at_fpir"]["5e-01"]) / 2
    )
    assert section["protocol"]["template"] == {
        "flip": True,
        "quality": True,
        "normalize_faces": False,
        "rule": "mean over media of per-media mean face features, L2-normalised",
    }


def test_ijb_evaluation_separable_subjects_are_perfect(tmp_path: Path) -> None:
    faces, emb, flip, *_ = synthetic_ijb(tmp_path, noise=0.05)
    section, curves = ijb_evaluation(
        emb, [f[0] for f in faces], read_ijb_meta(tmp_path), flip=flip, use_gpu=False, cmc_rank=50
    )
    assert section["verification"]["roc_auc"] == 1.0
    for name in ("G1", "G2", "average"):
        g = section["identification"][name]
        assert g["rank_1"] == g["rank_5"] == g["rank_10"] == 1.0
        assert g["tpir_at_fpir"]["1e-01"] == 1.0 and g["tpir_at_fpir"]["1e-02"] is None  # 24 non-mated: 0.24 < 1
    assert set(curves["cmc"]) == {"G1", "G2"} and curves["cmc"]["G1"].shape == (50,)
    assert np.all(curves["cmc"]["G1"] == 1.0)


# ----------------------------------------------------------------------------------------------------------------
# `fsd eval --ijb-meta`
# ----------------------------------------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def assert_refused(result, match: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr
    import re

    assert re.search(match, lines[0]), lines[0]


def test_cli_ijb_report_table_plot_and_compare(tmp_path: Path) -> None:
    data = tmp_path / "IJBC"
    faces, emb, flip, *_ = synthetic_ijb(data, noise=1.5)
    h5 = write_h5(tmp_path / "ijbc.h5", emb, [f[0] for f in faces], flip)
    out, plot = tmp_path / "r.json", tmp_path / "roc.png"
    result = invoke(
        "eval",
        "--faiss",
        "--embeddings",
        h5,
        "--ijb-meta",
        data,
        "--out",
        out,
        "--plot",
        plot,
        "--device",
        "cpu",
        "--far",
        "1e-3,1e-2,1e-1",
    )
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    report = json.loads(out.read_text())
    assert set(report) == {"source", "num_samples", "ijb"} and report["num_samples"] == len(faces)
    v = report["ijb"]["verification"]
    assert set(v) >= {"num_genuine", "num_impostor", "tar_at_far", "roc_auc", "eer"}
    assert list(v["tar_at_far"]) == ["1e-03", "1e-02", "1e-01"]
    ident = report["ijb"]["identification"]
    assert set(ident) == {"G1", "G2", "average"}
    for g in ident.values():
        assert set(g) >= {"rank_1", "rank_5", "rank_10", "tpir_at_fpir"}
        assert list(g["tpir_at_fpir"]) == ["1e-02", "1e-01"]
    assert report["ijb"]["protocol"]["template"]["flip"] is True
    assert "IJB 1:1" in result.stdout and "IJB 1:N G1" in result.stdout and "IJB 1:N average" in result.stdout
    assert plot.exists() and (tmp_path / "roc_cmc.png").exists()
    # the same embeddings without the flipped ones give another report; compare shows the IJB rows
    h5b = write_h5(tmp_path / "noflip.h5", emb, [f[0] for f in faces], labels=True)
    out_b = tmp_path / "noflip.json"
    assert invoke("eval", "--faiss", "--embeddings", h5b, "--ijb-meta", data, "--out", out_b).exit_code == 0
    assert json.loads(out_b.read_text())["ijb"]["protocol"]["template"]["flip"] is False
    compared = invoke("compare", out, out_b)
    assert compared.exit_code == 0, compared.stderr
    assert (
        "IJB TAR@1e-2" in compared.stdout and "IJB G1 R1" in compared.stdout and "IJB avg TPIR@1e-1" in compared.stdout
    )


def test_cli_ijb_refusals(tmp_path: Path) -> None:
    data = tmp_path / "IJBC"
    faces, emb, flip, *_ = synthetic_ijb(data)
    names = [f[0] for f in faces]
    h5 = write_h5(tmp_path / "ok.h5", emb, names, flip)
    ijb = ["eval", "--faiss", "--ijb-meta", data]
    # sources other than --embeddings
    assert_refused(invoke(*ijb, "--store", tmp_path / "s.zarr"), "--ijb-meta .* give --embeddings")
    assert_refused(invoke(*ijb, "--model", tmp_path / "m.pt", "--dataset", "digits"), "not supported")
    assert_refused(invoke(*ijb, "--embeddings", h5, "--pairs", tmp_path / "p.txt"), "--pairs")
    assert_refused(invoke(*ijb, "--embeddings", h5, "--index", "hnsw"), "--index")
    # embeddings without names, with NaN, missing an image
    with h5py.File(tmp_path / "nonames.h5", "w") as h:
        h.create_dataset("embeddings", data=emb)
    assert_refused(invoke(*ijb, "--embeddings", tmp_path / "nonames.h5"), "'names'")
    bad = emb.copy()
    bad[3, 0] = np.nan
    assert_refused(invoke(*ijb, "--embeddings", write_h5(tmp_path / "nan.h5", bad, names)), "NaN")
    bad_flip = flip.copy()
    bad_flip[0, 0] = np.inf
    assert_refused(invoke(*ijb, "--embeddings", write_h5(tmp_path / "nanf.h5", emb, names, bad_flip)), "flipped")
    assert_refused(
        invoke(*ijb, "--embeddings", write_h5(tmp_path / "few.h5", emb[1:], names[1:])),
        r"line 1: image 'img/0.jpg' has no embedding",
    )
    # malformed meta line: the one-line error names file and line, and nothing is written
    pair_file = data / "meta" / "ijbc_template_pair_label.txt"
    lines = pair_file.read_text().splitlines()
    lines[4] = "1 2 7"
    pair_file.write_text("\n".join(lines) + "\n")
    out = tmp_path / "never.json"
    assert_refused(invoke(*ijb, "--embeddings", h5, "--out", out), r"ijbc_template_pair_label.txt line 5: label")
    assert not out.exists()
    lines[4] = "1 99999 1"
    pair_file.write_text("\n".join(lines) + "\n")
    assert_refused(invoke(*ijb, "--embeddings", h5), r"line 5: template 99999 has no face")
    assert_refused(invoke("eval", "--faiss", "--ijb-meta", tmp_path / "missing", "--embeddings", h5), "does not exist")
