"""bench/detection.py's pure metrics on hand-made boxes (the bench itself needs the downloaded
photos and Triton, so it is not run here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import detection  # noqa: E402
from detection import (  # noqa: E402
    ABS_BUCKETS,
    REL_BUCKETS,
    all_fit,
    bucket,
    fill_crop,
    inside,
    iou,
    match,
    score_crop,
    summarise_crops,
)


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_matching_is_greedy_by_score_and_counts_false_and_ignored_boxes():
    faces = [(0, 0, 10, 10), (100, 0, 10, 10)]
    ignore = [(200, 200, 50, 50)]
    detections = [
        ((1, 1, 10, 10), 0.6),  # face 0, but a better box for it comes first
        ((0, 0, 10, 10), 0.9),  # face 0
        ((101, 0, 10, 10), 0.8),  # face 1
        ((210, 210, 5, 5), 0.7),  # centre inside the ignore zone
        ((500, 500, 10, 10), 0.65),  # false
    ]
    m = match(detections, faces, ignore)
    assert m.hits == {0: 1, 1: 2}
    assert m.ignored == [3]
    assert sorted(m.false) == [0, 4]  # the duplicate of face 0 is a false box


def test_matching_threshold():
    faces = [(0, 0, 10, 10)]
    half = [((5, 0, 10, 10), 0.9)]  # IoU 1/3
    assert match(half, faces, threshold=0.3).hits == {0: 0}
    assert match(half, faces, threshold=0.5).false == [0]


def test_buckets():
    assert bucket(0.04, REL_BUCKETS) == "<5%"
    assert bucket(0.05, REL_BUCKETS) == "5-10%"
    assert bucket(0.5, REL_BUCKETS) == ">=20%"
    assert bucket(19.9, ABS_BUCKETS) == "<20 px"
    assert bucket(80, ABS_BUCKETS) == ">=80 px"


@pytest.mark.parametrize(
    ("size", "aspect", "crop"),
    [
        ((3000, 2000), (1, 1), (2000, 2000)),
        ((3000, 2000), (9, 16), (1125, 2000)),
        ((3000, 2000), (16, 9), (3000, 1688)),
        ((1080, 1920), (16, 9), (1080, 608)),
        ((1080, 1920), (3, 4), (1080, 1440)),
        ((1600, 900), (16, 9), (1600, 900)),
    ],
)
def test_fill_crop_is_the_largest_window_of_the_aspect(size, aspect, crop):
    assert fill_crop(*size, aspect) == crop


def test_kept_whole_allows_two_pixels_of_slack():
    window = (100, 100, 200, 200)
    assert inside((100, 100, 50, 50), window)
    assert inside((98, 100, 50, 50), window)
    assert not inside((97, 100, 50, 50), window)
    assert inside((250, 250, 52, 52), window)
    assert not inside((250, 250, 53, 52), window)


def test_all_fit():
    faces = [(0, 0, 10, 10), (90, 0, 10, 10)]
    assert all_fit(faces, 100, 20)
    assert not all_fit(faces, 90, 20)


def test_crop_scores_and_their_summary():
    faces = [(0, 0, 10, 10), (90, 0, 20, 20)]  # the second is the largest
    window_both = (0, 0, 120, 30)
    window_small = (0, 0, 50, 30)
    both = score_crop(faces, window_both)
    small = score_crop(faces, window_small)
    assert (both.kept, both.fit, both.all_kept, both.largest_kept) == (2, True, True, True)
    assert (small.kept, small.fit, small.all_kept, small.largest_kept) == (1, False, False, False)
    tight = score_crop(faces, (85, 0, 30, 30))  # holds only the largest; both don't fit
    summary = summarise_crops([(both, small), (small, both), (tight, both)])
    assert summary["fit_cases"] == 1 and summary["all_kept"] == 1.0
    assert summary["unfit_cases"] == 2 and summary["largest_kept"] == 0.5
    assert summary["fewer_than_centre"] == 2  # small and tight keep 1 face against 2
    assert summary["faces_kept"] == pytest.approx(4 / 6)
    assert summary["largest_tie_kept"] == 0.5  # no ties here: as strict


def test_a_face_within_the_labels_precision_of_the_largest_ties_with_it():
    # 20x20 and 19x20 (5 % smaller): the window keeping only the second keeps "the largest"
    # within LARGEST_TIE, not strictly.
    faces = [(0, 0, 19, 20), (200, 0, 20, 20)]
    second_only = score_crop(faces, (0, 0, 40, 40))
    assert not second_only.fit and not second_only.largest_kept
    assert second_only.largest_tie_kept
    # A face 25 % smaller is not a tie.
    smaller = score_crop([(0, 0, 15, 20), (200, 0, 20, 20)], (0, 0, 40, 40))
    assert not smaller.largest_tie_kept


def test_labels_and_manifest_agree():
    manifest = json.loads((BENCH / "detection_manifest.json").read_text())
    labels = json.loads((BENCH / "detection_labels.json").read_text())["photos"]
    assert {p["id"] for p in manifest["photos"]} == set(labels)
    for photo in manifest["photos"]:
        label = labels[photo["id"]]
        assert label["set"] == photo["set"]
        assert (len(label["faces"]) > 0) == (photo["set"] == "faces")
        assert len(photo["sha256"]) == 64
        for box in label["faces"] + [z["box"] for z in label["ignore"]]:
            assert len(box) == 4 and box[2] > 0 and box[3] > 0
    assert detection.MATCH_IOU == 0.3
