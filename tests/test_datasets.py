"""Dataset loaders: official layouts built in tmp_path, the user format, downloads, the bundled sample."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import require_shared_data
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from selconv._safe_pickle import UnsafePickleError, safe_load_pickle
from selconv.datasets import (
    PARIS_CORRUPT_IMAGES,
    SAMPLE_ROOT,
    ChecksumError,
    GroundTruthError,
    RetrievalDataset,
    UnsafeArchiveError,
    apply_rotations,
    download,
    download_dataset,
    extract,
    load_generic_training_images,
    load_holidays,
    load_image_folder,
    load_labelled_folder,
    load_oxford5k,
    load_oxford5k_subset,
    load_paris6k,
    load_query_database_folders,
    load_revisited,
    load_sample,
    load_ukbench,
    read_rotation_list,
)
from selconv.datasets.base import rotate_box
from selconv.datasets.download import Resource


def touch_images(folder, names, ext=".jpg"):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}{ext}").write_bytes(b"not decoded by loaders")
    return folder


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def names_of(dataset, indices):
    return sorted(dataset.database[i].stem for i in indices)


# ---------------------------------------------------------------- Oxford5k / Paris6k


@pytest.fixture
def oxford_root(tmp_path):
    root = tmp_path / "oxford"
    touch_images(
        root / "jpg",
        [
            "all_souls_000001",
            "all_souls_000002",
            "all_souls_000003",
            "balliol_000001",
            "balliol_000002",
            "oxford_000001",
            "oxford_000002",
        ],
    )
    gt = root / "groundtruth"
    write_lines(gt / "all_souls_1_query.txt", ["oxc1_all_souls_000001 10.5 20 300 400.25"])
    write_lines(gt / "all_souls_1_good.txt", ["all_souls_000001", "all_souls_000002"])
    write_lines(gt / "all_souls_1_ok.txt", ["oxford_000001"])
    write_lines(gt / "all_souls_1_junk.txt", ["all_souls_000003"])
    write_lines(gt / "balliol_1_query.txt", ["oxc1_balliol_000002 0 0 50 60"])
    write_lines(gt / "balliol_1_good.txt", ["balliol_000001"])
    write_lines(gt / "balliol_1_ok.txt", [])
    write_lines(gt / "balliol_1_junk.txt", ["oxford_000002", "balliol_000002"])
    return root


def test_oxford_counts_boxes_and_index_mapping(oxford_root):
    ds = load_oxford5k(oxford_root)
    assert ds.name == "oxford5k"
    assert len(ds.database) == 7 and [q.stem for q in ds.queries] == ["all_souls_000001", "balliol_000002"]
    assert ds.query_boxes == [(10.5, 20.0, 300.0, 400.25), (0.0, 0.0, 50.0, 60.0)]
    assert ds.query_labels == ["all_souls", "balliol"]
    assert names_of(ds, ds.ground_truth[0]["positives"]) == ["all_souls_000001", "all_souls_000002", "oxford_000001"]
    assert names_of(ds, ds.ground_truth[0]["junk"]) == ["all_souls_000003"]
    assert names_of(ds, ds.ground_truth[1]["positives"]) == ["balliol_000001"]
    assert names_of(ds, ds.ground_truth[1]["junk"]) == ["balliol_000002", "oxford_000002"]
    assert ds.ground_truth[0]["positives"].dtype == np.int64
    assert ds.query_inputs() == [(ds.queries[0], (10.5, 20.0, 300.0, 400.25)), (ds.queries[1], (0.0, 0.0, 50.0, 60.0))]


def test_oxford_with_distractors_is_105k_and_keeps_indices(oxford_root, tmp_path):
    flickr = touch_images(tmp_path / "flickr100k" / "sub", ["f1", "f2", "f3"])
    plain = load_oxford5k(oxford_root)
    ds = load_oxford5k(oxford_root, distractors=flickr.parent)
    assert ds.name == "oxford105k" and len(ds.database) == 10
    assert ds.database[:7] == plain.database and [p.stem for p in ds.database[7:]] == ["f1", "f2", "f3"]
    for a, b in zip(ds.ground_truth, plain.ground_truth):
        assert np.array_equal(a["positives"], b["positives"]) and np.array_equal(a["junk"], b["junk"])


def test_oxford_missing_ground_truth_image_raises_or_drops(oxford_root):
    (oxford_root / "jpg" / "oxford_000001.jpg").unlink()
    with pytest.raises(GroundTruthError, match="oxford_000001"):
        load_oxford5k(oxford_root)
    ds = load_oxford5k(oxford_root, missing="drop")
    assert names_of(ds, ds.ground_truth[0]["positives"]) == ["all_souls_000001", "all_souls_000002"]


def test_oxford_malformed_query_file_names_the_file(oxford_root):
    write_lines(oxford_root / "groundtruth" / "balliol_1_query.txt", ["oxc1_balliol_000002 0 0 50"])
    with pytest.raises(GroundTruthError, match=r"balliol_1_query\.txt:1"):
        load_oxford5k(oxford_root)


def test_paris_layout_without_prefix_and_corrupt_images_excluded(tmp_path):
    root = tmp_path / "paris6k"
    corrupt = PARIS_CORRUPT_IMAGES[0]  # paris_louvre_000136
    touch_images(root / "paris" / "defense", ["paris_defense_000001", "paris_defense_000002"])
    touch_images(root / "paris" / "louvre", ["paris_louvre_000001", corrupt])
    gt = root / "paris_120310"
    write_lines(gt / "defense_1_query.txt", ["paris_defense_000001 1 2 3 4"])
    write_lines(gt / "defense_1_good.txt", ["paris_defense_000002", corrupt])
    write_lines(gt / "defense_1_ok.txt", [])
    write_lines(gt / "defense_1_junk.txt", ["paris_louvre_000001"])
    ds = load_paris6k(root)
    assert [p.stem for p in ds.database] == ["paris_defense_000001", "paris_defense_000002", "paris_louvre_000001"]
    assert ds.queries[0].stem == "paris_defense_000001" and ds.query_boxes[0] == (1.0, 2.0, 3.0, 4.0)
    assert names_of(ds, ds.ground_truth[0]["positives"]) == ["paris_defense_000002"]
    assert names_of(ds, ds.ground_truth[0]["junk"]) == ["paris_louvre_000001"]


# ---------------------------------------------------------------- Revisited Oxford / Paris


@pytest.fixture
def revisited_root(tmp_path):
    root = tmp_path / "roxford5k"
    imlist = [f"img_{i}" for i in range(8)]
    qimlist = ["q_0", "q_1"]
    touch_images(root / "jpg", imlist + qimlist)
    gnd = [
        {"bbx": [1.0, 2.0, 30.0, 40.0], "easy": np.array([0, 1]), "hard": np.array([2]), "junk": np.array([3])},
        {"bbx": np.array([5.0, 6.0, 7.0, 8.0]), "easy": [], "hard": [4, 5], "junk": [6]},
    ]
    (root / "gnd_roxford5k.pkl").write_bytes(
        pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, protocol=2)
    )
    return root


@pytest.mark.parametrize(
    "protocol, positives, junk",
    [
        ("easy", [[0, 1], []], [[2, 3], [4, 5, 6]]),
        ("medium", [[0, 1, 2], [4, 5]], [[3], [6]]),
        ("hard", [[2], [4, 5]], [[0, 1, 3], [6]]),
    ],
)
def test_revisited_protocols(revisited_root, protocol, positives, junk):
    ds = load_revisited(revisited_root, "roxford5k", protocol)
    assert ds.name == f"roxford5k-{protocol}" and len(ds.database) == 8 and len(ds.queries) == 2
    assert [q.stem for q in ds.queries] == ["q_0", "q_1"]
    assert ds.query_boxes == [(1.0, 2.0, 30.0, 40.0), (5.0, 6.0, 7.0, 8.0)]
    assert [gt["positives"].tolist() for gt in ds.ground_truth] == positives
    assert [gt["junk"].tolist() for gt in ds.ground_truth] == junk


def test_revisited_refuses_malicious_pickle_without_running_it(revisited_root, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (revisited_root / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [Exploit()]}))
    with pytest.raises(UnsafePickleError, match="refusing"):
        load_revisited(revisited_root, "roxford5k")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_safe_pickle_round_trips_containers_and_arrays(protocol):
    data = {"a": [np.arange(5, dtype=np.int32), (1.5, "x")], "b": {np.float64(2.0)}, "c": np.zeros((2, 3))}
    loaded = safe_load_pickle(pickle.dumps(data, protocol=protocol))
    assert np.array_equal(loaded["a"][0], data["a"][0]) and loaded["a"][0].dtype == np.int32
    assert loaded["a"][1] == (1.5, "x") and loaded["c"].shape == (2, 3)


def test_safe_pickle_refuses_other_classes():
    with pytest.raises(UnsafePickleError):
        safe_load_pickle(pickle.dumps(Path("/etc")))


def test_revisited_missing_image_is_reported(revisited_root):
    (revisited_root / "jpg" / "img_3.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="img_3"):
        load_revisited(revisited_root, "roxford5k")


# ---------------------------------------------------------------- Holidays, UKBench


@pytest.fixture
def holidays_root(tmp_path):
    root = tmp_path / "holidays"
    touch_images(root / "jpg", ["100000", "100001", "100002", "100100", "100101", "100200", "100201"])
    return root


def test_holidays_queries_positives_and_self_junk(holidays_root):
    ds = load_holidays(holidays_root)
    assert [q.stem for q in ds.queries] == ["100000", "100100", "100200"]
    assert len(ds.database) == 7 and ds.database_rotations is None
    assert names_of(ds, ds.ground_truth[0]["positives"]) == ["100001", "100002"]
    assert names_of(ds, ds.ground_truth[0]["junk"]) == ["100000"]
    assert names_of(ds, ds.ground_truth[2]["positives"]) == ["100201"]


def test_holidays_rotation_list_is_applied(holidays_root, tmp_path):
    rot = tmp_path / "holidays_rotations.txt"
    write_lines(rot, ["# clockwise degrees", "100001.jpg 90", "100100 -90", "", "100201 180"])
    assert read_rotation_list(rot) == {"100001": 90, "100100": 270, "100201": 180}
    ds = load_holidays(holidays_root, rotations=rot)
    assert dict(zip((p.stem for p in ds.database), ds.database_rotations)) == {
        "100000": 0,
        "100001": 90,
        "100002": 0,
        "100100": 270,
        "100101": 0,
        "100200": 0,
        "100201": 180,
    }
    assert ds.query_rotations == [0, 270, 0]
    assert ds.info["n_rotated"] == 3
    flickr = touch_images(tmp_path / "flickr1m", ["d0", "d1"])
    big = ds.with_distractors(flickr, name="holidays+flickr1m")
    assert big.database_rotations[-2:] == [0, 0] and len(big.database) == 9


@pytest.mark.parametrize(
    "line, message", [("100001 45", "multiple of 90"), ("100001", "degrees"), ("100001 ninety", "degrees")]
)
def test_rotation_list_errors_name_the_line(tmp_path, line, message):
    rot = tmp_path / "rot.txt"
    write_lines(rot, ["100000 90", line])
    with pytest.raises(GroundTruthError, match=rf"rot\.txt:2: .*{message}"):
        read_rotation_list(rot)


def test_holidays_rotation_for_unknown_image_raises(holidays_root):
    with pytest.raises(GroundTruthError, match="999900"):
        load_holidays(holidays_root, rotations={"999900": 90})


def test_apply_rotations_turns_pixels_and_boxes(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high
    img[2:6, 30:38] = 255  # a white patch near the top right
    root = tmp_path / "data"
    root.mkdir()
    Image.fromarray(img).save(root / "a.png")
    Image.fromarray(img).save(root / "b.png")
    box = (30.0, 2.0, 38.0, 6.0)
    ds = RetrievalDataset(
        "t",
        root,
        [root / "a.png", root / "b.png"],
        [root / "a.png"],
        [{"positives": np.array([1]), "junk": np.array([0])}],
        query_boxes=[box],
        database_rotations=[90, 0],
        query_rotations=[90],
    )
    with pytest.raises(ValueError, match="apply_rotations"):
        ds.query_inputs()
    out = apply_rotations(ds, tmp_path / "upright")
    assert out.query_inputs() == [(out.queries[0], out.query_boxes[0])] and out.database_inputs() == out.database
    assert out.database_rotations is None and out.database[1] == root / "b.png"
    turned = np.asarray(Image.open(out.queries[0]).convert("L"))
    assert turned.shape == (40, 20)  # portrait after a quarter turn
    x1, y1, x2, y2 = (int(v) for v in out.query_boxes[0])
    assert (x1, y1, x2, y2) == (14, 30, 18, 38)
    assert turned[y1:y2, x1:x2].mean() > 200 and turned.mean() < 60  # the box still frames the white patch


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 500), st.integers(1, 500), st.data())
def test_rotate_box_four_quarter_turns_is_identity(width, height, data):
    x1 = data.draw(st.integers(0, width - 1))
    y1 = data.draw(st.integers(0, height - 1))
    box = (x1, y1, data.draw(st.integers(x1 + 1, width)), data.draw(st.integers(y1 + 1, height)))
    b, (w, h) = box, (width, height)
    for _ in range(4):
        b = rotate_box(b, 90, w, h)
        w, h = h, w
        assert 0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h
    assert tuple(b) == box
    assert tuple(rotate_box(rotate_box(box, 180, width, height), 180, width, height)) == box
    assert tuple(rotate_box(rotate_box(box, 90, width, height), 270, height, width)) == box


def test_ukbench_groups_of_four_query_included(tmp_path):
    touch_images(tmp_path / "full", [f"ukbench{i:05d}" for i in range(8)])
    ds = load_ukbench(tmp_path)
    assert len(ds.queries) == len(ds.database) == 8
    assert ds.ground_truth[5]["positives"].tolist() == [4, 5, 6, 7] and ds.ground_truth[5]["junk"].size == 0
    (tmp_path / "full" / "ukbench00007.jpg").unlink()
    with pytest.raises(GroundTruthError, match="4 images"):
        load_ukbench(tmp_path)


# ---------------------------------------------------------------- RetrievalDataset checks


def test_dataset_rejects_inconsistent_ground_truth(tmp_path):
    db = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    with pytest.raises(ValueError, match="outside the database"):
        RetrievalDataset("t", tmp_path, db, [db[0]], [{"positives": np.array([2]), "junk": np.array([], int)}])
    with pytest.raises(ValueError, match="both positive and junk"):
        RetrievalDataset("t", tmp_path, db, [db[0]], [{"positives": np.array([1]), "junk": np.array([1])}])
    with pytest.raises(ValueError, match="ground_truth has 0 entries"):
        RetrievalDataset("t", tmp_path, db, [db[0]], [])
    with pytest.raises(ValueError, match="invalid box"):
        RetrievalDataset("t", tmp_path, db, [db[0]], [{"positives": [1], "junk": []}], query_boxes=[(5, 5, 1, 9)])


# ---------------------------------------------------------------- the user's own format


@pytest.fixture
def user_root(tmp_path):
    root = tmp_path / "mydata"
    touch_images(root / "tower", ["001", "002", "003"])
    touch_images(root / "bridge", ["a", "b"])
    touch_images(root / "other", ["x", "y"])
    touch_images(root / "train", ["t1", "t2"])
    return root


def write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_with_query_flag_box_and_unlisted_distractors(user_root):
    write_csv(
        user_root / "groundtruth.csv",
        ["image", "label", "query", "x1", "y1", "x2", "y2"],
        [
            ["tower/001.jpg", "tower", "1", "10", "20", "300", "400"],
            ["tower/002.jpg", "tower", "0", "", "", "", ""],
            ["tower/003.jpg", "tower", "no", "", "", "", ""],
            ["bridge/a.jpg", "bridge", "yes", "", "", "", ""],
            ["bridge/b.jpg", "bridge", "", "", "", "", ""],
            ["other/x.jpg", "", "0", "", "", "", ""],
        ],
    )
    ds = load_image_folder(user_root, training="train")
    rel = [p.relative_to(user_root).as_posix() for p in ds.database]
    assert rel == [
        "bridge/a.jpg",
        "bridge/b.jpg",
        "other/x.jpg",
        "other/y.jpg",
        "tower/001.jpg",
        "tower/002.jpg",
        "tower/003.jpg",
    ]
    assert [p.name for p in ds.training] == ["t1.jpg", "t2.jpg"]
    assert [q.relative_to(user_root).as_posix() for q in ds.queries] == ["tower/001.jpg", "bridge/a.jpg"]
    assert ds.query_boxes == [(10.0, 20.0, 300.0, 400.0), None]
    assert ds.ground_truth[0]["positives"].tolist() == [5, 6] and ds.ground_truth[0]["junk"].tolist() == [4]
    assert ds.ground_truth[1]["positives"].tolist() == [1] and ds.ground_truth[1]["junk"].tolist() == [0]
    assert ds.database_labels == ["bridge", "bridge", None, None, "tower", "tower", "tower"]
    assert ds.name == "mydata"


def test_csv_without_query_column_is_leave_one_out(user_root):
    gt = write_csv(
        user_root / "labels.csv",
        ["image", "label"],
        [
            ["tower/001.jpg", "tower"],
            ["tower/002.jpg", "tower"],
            ["bridge/a.jpg", "bridge"],
            ["bridge/b.jpg", "bridge"],
        ],
    )
    ds = load_image_folder(user_root, gt, include_unlisted=False)
    assert len(ds.database) == 4 and len(ds.queries) == 4
    for q, gt_q in zip(ds.queries, ds.ground_truth):
        assert ds.database[gt_q["junk"][0]] == q
        assert [ds.database[i].parent.name for i in gt_q["positives"]] == [q.parent.name]


def test_csv_queries_out_of_database(user_root):
    gt = write_csv(
        user_root / "gt.csv",
        ["image", "label", "query"],
        [["tower/001.jpg", "tower", "1"], ["tower/002.jpg", "tower", "0"], ["tower/003.jpg", "tower", "0"]],
    )
    ds = load_image_folder(user_root, gt, training="train", queries_in_database=False)
    assert user_root / "tower" / "001.jpg" not in ds.database and len(ds.database) == 6
    assert ds.ground_truth[0]["junk"].size == 0 and names_of(ds, ds.ground_truth[0]["positives"]) == ["002", "003"]


def test_csv_rotation_column(user_root):
    write_csv(
        user_root / "gt.csv",
        ["image", "label", "rotation"],
        [["tower/001.jpg", "tower", "90"], ["tower/002.jpg", "tower", ""]],
    )
    ds = load_image_folder(user_root, "gt.csv")  # relative to the folder
    assert (
        ds.query_rotations == [90, 0]
        and ds.database_rotations[ds.database.index(user_root / "tower" / "001.jpg")] == 90
    )


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [["tower/001.jpg", "tower", "1"], ["tower/009.jpg", "tower", "0"]],
            r"gt\.csv:3: image 'tower/009\.jpg' does not exist",
        ),
        (
            [["tower/001.jpg", "tower", "1"], ["tower/002.jpg", "tower", "0"], ["tower/001.jpg", "tower", "0"]],
            r"gt\.csv:4: 'tower/001\.jpg' is listed twice \(first on line 2\)",
        ),
        (
            [["tower/001.jpg", "tower", "1"], ["bridge/a.jpg", "bridge", "0"]],
            r"gt\.csv:2: query '001\.jpg' has no positive",
        ),
        ([["tower/001.jpg", "", "1"]], r"gt\.csv:2: query 'tower/001\.jpg' has no label"),
        ([["tower/001.jpg", "tower", "maybe"]], r"gt\.csv:2: column 'query'"),
        ([["../escape.jpg", "tower", "0"]], r"gt\.csv:2: .*must be a path inside"),
        ([["tower/001.jpg", "tower", "1", "extra"]], r"gt\.csv:2: more fields"),
    ],
)
def test_csv_errors_name_file_and_line(user_root, rows, message):
    (user_root.parent / "escape.jpg").write_bytes(b"x")
    gt = write_csv(user_root / "gt.csv", ["image", "label", "query"], rows)
    with pytest.raises(GroundTruthError, match=message):
        load_image_folder(user_root, gt)


def test_csv_header_and_box_errors(user_root):
    gt = write_csv(user_root / "gt.csv", ["image", "lable"], [["tower/001.jpg", "tower"]])
    with pytest.raises(GroundTruthError, match="unknown: \\['lable'\\]"):
        load_image_folder(user_root, gt)
    gt = write_csv(
        user_root / "gt.csv",
        ["image", "label", "query", "x1", "y1", "x2", "y2"],
        [["tower/001.jpg", "tower", "1", "10", "20", "5", "40"], ["tower/002.jpg", "tower", "0", "", "", "", ""]],
    )
    with pytest.raises(GroundTruthError, match=r"gt\.csv:2: box .* x2 > x1"):
        load_image_folder(user_root, gt)
    gt = write_csv(
        user_root / "gt.csv",
        ["image", "label", "query", "x1", "y1", "x2", "y2"],
        [["tower/001.jpg", "tower", "1", "", "", "", ""], ["tower/002.jpg", "tower", "0", "1", "2", "3", "4"]],
    )
    with pytest.raises(GroundTruthError, match=r"gt\.csv:3: only queries may have a box"):
        load_image_folder(user_root, gt)


def test_json_explicit_positives_and_junk(user_root):
    spec = {
        "queries": [
            {"image": "tower/001.jpg", "positives": ["tower/002.jpg"], "junk": ["tower/003.jpg"], "bbox": [1, 2, 3, 4]},
            {"image": "bridge/a.jpg", "positives": ["bridge/b.jpg", "bridge/a.jpg"]},
        ],
        "training": ["train/t1.jpg"],
    }
    (user_root / "groundtruth.json").write_text(json.dumps(spec))
    ds = load_image_folder(user_root)
    assert [p.name for p in ds.training] == ["t1.jpg"]
    assert names_of(ds, ds.ground_truth[0]["positives"]) == ["002"]
    assert names_of(ds, ds.ground_truth[0]["junk"]) == ["001", "003"]  # the query itself is junk
    assert names_of(ds, ds.ground_truth[1]["positives"]) == ["a", "b"] and ds.ground_truth[1]["junk"].size == 0
    assert ds.query_boxes[0] == (1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"queries": [{"image": "tower/001.jpg", "positives": []}]}, r"queries\[0\]: query .* has no positives"),
        (
            {"queries": [{"image": "tower/001.jpg", "positives": ["nope.jpg"]}]},
            r"queries\[0\]\.positives\[0\]: image 'nope\.jpg' does not exist",
        ),
        (
            {
                "database": ["tower/001.jpg", "tower/002.jpg"],
                "queries": [{"image": "tower/001.jpg", "positives": ["bridge/a.jpg"]}],
            },
            r"queries\[0\]\.positives\[0\]: 'bridge/a\.jpg' is not a database image",
        ),
        (
            {"database": ["tower/001.jpg", "tower/001.jpg"], "queries": []},
            r"database\[1\]: 'tower/001\.jpg' is listed twice",
        ),
        (
            {"queries": [{"image": "tower/001.jpg", "positives": ["tower/002.jpg"], "junk": ["tower/002.jpg"]}]},
            "both positive and junk",
        ),
        ({"queries": [], "extra": 1}, "unknown keys"),
    ],
)
def test_json_errors_name_the_entry(user_root, spec, message):
    gt = user_root / "gt.json"
    gt.write_text(json.dumps(spec))
    with pytest.raises(GroundTruthError, match=message):
        load_image_folder(user_root, gt)


def test_json_syntax_error_names_the_line(user_root):
    gt = user_root / "gt.json"
    gt.write_text('{"queries": [\n  {"image": "tower/001.jpg",,}\n]}')
    with pytest.raises(GroundTruthError, match=r"gt\.json:2: invalid JSON"):
        load_image_folder(user_root, gt)


def test_folder_without_ground_truth_is_a_database(user_root):
    ds = load_image_folder(user_root)
    assert len(ds.database) == 9 and ds.queries == [] and ds.ground_truth == []


# ---------------------------------------------------------------- downloads


def _payload(n=300_000):
    return np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_download_file_url_with_checksum(tmp_path):
    import hashlib

    src = tmp_path / "src.bin"
    src.write_bytes(_payload())
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = download(src.as_uri(), tmp_path / "out" / "file.bin", sha256=good)
    assert dest.read_bytes() == src.read_bytes() and not (tmp_path / "out" / "file.bin.part").exists()
    assert download("file:///does/not/matter", dest, sha256=good) == dest  # already there: nothing fetched
    with pytest.raises(ChecksumError, match="sha256"):
        download(src.as_uri(), tmp_path / "out" / "bad.bin", sha256="0" * 64)
    assert not (tmp_path / "out" / "bad.bin").exists() and not (tmp_path / "out" / "bad.bin.part").exists()
    with pytest.raises(ChecksumError, match="md5"):
        download(src.as_uri(), tmp_path / "out" / "bad.bin", md5="0" * 32)


class _RangeResponse(io.BytesIO):
    """A fake HTTP response that honours Range requests, like a real server."""

    def __init__(self, data, status):
        super().__init__(data)
        self.status = status
        self.headers = {"Content-Length": str(len(data))}

    def getcode(self):
        return self.status


def test_download_resumes_partial_file(tmp_path, monkeypatch):
    import hashlib
    import urllib.request

    data = _payload()
    requests = []

    def fake_urlopen(request, timeout=None):
        requests.append(request.headers.get("Range"))
        start = int(request.headers["Range"].split("=")[1].rstrip("-")) if "Range" in request.headers else 0
        return _RangeResponse(data[start:], 206 if start else 200)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(data[:123_456])
    download("https://example.invalid/big.bin", dest, sha256=hashlib.sha256(data).hexdigest())
    assert requests == ["bytes=123456-"] and dest.read_bytes() == data


def test_download_restarts_when_server_ignores_range(tmp_path, monkeypatch):
    import urllib.request

    data = _payload(1000)
    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout=None: _RangeResponse(data, 200))
    (tmp_path / "f.bin.part").write_bytes(b"garbage")
    assert download("https://example.invalid/f.bin", tmp_path / "f.bin").read_bytes() == data


def _tar_with(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    return path


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/evil_abs.txt", "jpg/../../evil.txt"])
def test_extract_refuses_path_traversal(tmp_path, evil):
    archive = _tar_with(tmp_path / "a.tgz", [("jpg/ok.jpg", b"ok"), (evil, b"evil")])
    with pytest.raises(UnsafeArchiveError, match="outside"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "jpg" / "ok.jpg").exists()


def test_extract_refuses_links(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("jpg/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="link"):
        extract(archive, tmp_path / "out")


def test_extract_zip_traversal_and_flatten(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("paris/defense/p1.jpg", b"1")
        zf.writestr("paris/eiffel/p2.jpg", b"2")
    written = extract(good, tmp_path / "flat", flatten=True)
    assert (
        sorted(p.name for p in written) == ["p1.jpg", "p2.jpg"] and (tmp_path / "flat" / "p2.jpg").read_bytes() == b"2"
    )
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../../evil.jpg", b"x")
    with pytest.raises(UnsafeArchiveError):
        extract(bad, tmp_path / "out")


def test_download_dataset_end_to_end_from_local_files(tmp_path):
    # an Oxford-like dataset served from file:// URLs, then loaded with the official loader
    images = _tar_with(tmp_path / "oxbuild_images.tgz", [("a_000001.jpg", b"1"), ("a_000002.jpg", b"2")])
    gt = _tar_with(
        tmp_path / "gt.tgz",
        [
            ("a_1_query.txt", b"oxc1_a_000001 0 0 5 5\n"),
            ("a_1_good.txt", b"a_000002\n"),
            ("a_1_ok.txt", b""),
            ("a_1_junk.txt", b""),
        ],
    )
    root = download_dataset(
        "mine",
        tmp_path / "data",
        progress=False,
        resources=[Resource(images.as_uri(), "jpg"), Resource(gt.as_uri(), "groundtruth")],
    )
    ds = load_oxford5k(root)
    assert [p.name for p in ds.database] == ["a_000001.jpg", "a_000002.jpg"] and ds.ground_truth[0][
        "positives"
    ].tolist() == [1]
    images.unlink()  # already done: the second call must not fetch again
    download_dataset("mine", root, progress=False, resources=[Resource(images.as_uri(), "jpg")])
    with pytest.raises(ValueError, match="unknown dataset"):
        download_dataset("nope", root)


# ---------------------------------------------------------------- the bundled sample


def test_bundled_sample_loads_and_is_small():
    ds = load_sample()
    assert ds.name == "sample" and len(ds.database) == 45 and len(ds.queries) == 25 and len(ds.training) == 40
    assert ds.n_queries_without_positives == 0
    assert all(len(gt["positives"]) == 4 and len(gt["junk"]) == 1 for gt in ds.ground_truth)
    assert sum(b is not None for b in ds.query_boxes) == 4
    assert sorted(set(ds.query_labels)) == ["all_souls", "ashmolean", "christ_church", "hertford", "radcliffe_camera"]
    files = [p for p in SAMPLE_ROOT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 4.2e6
    for path in ds.database + ds.training:
        with Image.open(path) as img:
            assert max(img.size) <= 512
    for q, box in zip(ds.queries, ds.query_boxes):
        if box is not None:
            with Image.open(q) as img:
                assert box[2] <= img.size[0] and box[3] <= img.size[1]


def test_bundled_sample_provenance_lists_every_file():
    text = (SAMPLE_ROOT / "PROVENANCE.md").read_text()
    listed = {line[2:].strip() for line in text.splitlines() if line.startswith("- ") and line.strip().endswith(".jpg")}
    present = {p.name for p in (SAMPLE_ROOT / "images").iterdir()} | {
        p.name for p in (SAMPLE_ROOT / "training").iterdir()
    }
    assert listed == present
    for word in ("Philbin", "BSDS500", "ImageNet", "Flickr", "research"):
        assert word in text


# ---------------------------------------------------------------- the shared Oxford subset (real data)


@pytest.mark.shared_data
def test_oxford5k_subset_official_10_counts():
    root = require_shared_data("oxford5k-subset")
    ds = load_oxford5k_subset(root, "official-10")
    assert len(ds.database) == 1008 and len(ds.queries) == 10 and len(ds.training) == 1000
    assert [q.stem for q in ds.queries][:2] == ["oxford_002985", "ashmolean_000305"]
    assert ds.query_labels == [
        "all_souls",
        "ashmolean",
        "balliol",
        "balliol",
        "balliol",
        "bodleian",
        "christ_church",
        "christ_church",
        "cornmarket",
        "magdalen",
    ]
    n_pos = [len(gt["positives"]) for gt in ds.ground_truth]
    assert min(n_pos) == 2 and max(n_pos) == 18
    assert all(box is not None for box in ds.query_boxes)
    # each query image is among its own positives (Oxford lists it good/ok) and is cropped by its box
    assert all(ds.database.index(q) in gt["positives"] for q, gt in zip(ds.queries, ds.ground_truth))


@pytest.mark.shared_data
def test_oxford5k_subset_loo_landmark_counts():
    root = require_shared_data("oxford5k-subset")
    ds = load_oxford5k_subset(root, "loo-landmark", training_root=None)
    assert len(ds.queries) == 113 and ds.training == [] and ds.n_queries_without_positives == 0
    for q, gt in zip(ds.queries, ds.ground_truth):
        qi = ds.database.index(q)
        assert qi in gt["junk"] and qi not in gt["positives"]
    double = ds.query_labels.index("all_souls|radcliffe_camera")
    assert len(ds.ground_truth[double]["positives"]) == 14 - 1 + 45 - 1
    # README: 45 of the 55 official queries have at least one positive in the subset
    from selconv.datasets.oxford_paris import read_oxford_ground_truth

    names = {p.stem for p in ds.database}
    parsed = read_oxford_ground_truth(root / "groundtruth")
    assert len(parsed) == 55 and sum(bool(set(q.good + q.ok) & names) for q in parsed) == 45


@pytest.mark.shared_data
def test_generic_training_images():
    root = require_shared_data()
    images = load_generic_training_images(root)
    assert len(images) == 1000 and len({p.name for p in images}) == 1000
    assert len(load_generic_training_images(root, sources=("bsds500",))) == 500


# ------------------------------------------------------------------ labels from sub-folder names, the registry


def test_labelled_folder_every_image_queries_the_rest(tmp_path):
    touch_images(tmp_path / "cat", ["a", "b", "c"])
    touch_images(tmp_path / "dog", ["a", "b"])
    touch_images(tmp_path / "owl", ["alone"])  # alone in its label: no positive, so not a query
    touch_images(tmp_path, ["stray"])  # directly in the folder: a distractor
    touch_images(tmp_path / "train", ["t0", "t1"])
    ds = load_labelled_folder(tmp_path, training="train")
    names = [p.relative_to(tmp_path).as_posix() for p in ds.database]
    assert names == ["cat/a.jpg", "cat/b.jpg", "cat/c.jpg", "dog/a.jpg", "dog/b.jpg", "owl/alone.jpg", "stray.jpg"]
    assert [p.relative_to(tmp_path).as_posix() for p in ds.queries] == names[:5]
    assert ds.query_labels == ["cat", "cat", "cat", "dog", "dog"]
    assert ds.database_labels[-2:] == ["owl", None]
    assert names_of(ds, ds.ground_truth[0]["positives"]) == ["b", "c"]
    assert ds.ground_truth[0]["junk"].tolist() == [0]
    assert ds.ground_truth[3]["positives"].tolist() == [4] and ds.ground_truth[3]["junk"].tolist() == [3]
    assert [p.name for p in ds.training] == ["t0.jpg", "t1.jpg"] and ds.info["single_images"] == 1


def test_labelled_folder_without_any_pair_is_an_error(tmp_path):
    touch_images(tmp_path / "cat", ["a"])
    touch_images(tmp_path, ["b", "c"])
    with pytest.raises(GroundTruthError, match="no sub-folder holds two images"):
        load_labelled_folder(tmp_path)


def test_query_and_database_folders_match_labels(tmp_path):
    touch_images(tmp_path / "q" / "cat", ["q1", "q2"])
    touch_images(tmp_path / "q" / "fox", ["q3"])  # a label the database lacks: a query without positives
    touch_images(tmp_path / "db" / "cat", ["d1", "d2"])
    touch_images(tmp_path / "db" / "dog", ["d3"])
    touch_images(tmp_path / "db", ["noise"])
    ds = load_query_database_folders(tmp_path / "q", tmp_path / "db")
    assert [p.name for p in ds.queries] == ["q1.jpg", "q2.jpg", "q3.jpg"]
    assert [p.name for p in ds.database] == ["d1.jpg", "d2.jpg", "d3.jpg", "noise.jpg"]
    assert [names_of(ds, gt["positives"]) for gt in ds.ground_truth] == [["d1", "d2"], ["d1", "d2"], []]
    assert all(gt["junk"].size == 0 for gt in ds.ground_truth) and ds.n_queries_without_positives == 1


@pytest.mark.parametrize(
    ("layout", "message"),
    [({"q": ["loose"], "db/cat": ["d1"]}, "not in a label sub-folder"), ({"q/fox": ["q"], "db/cat": ["d"]}, "match")],
)
def test_query_and_database_folder_errors(tmp_path, layout, message):
    for folder, names in layout.items():
        touch_images(tmp_path / folder, names)
    with pytest.raises(GroundTruthError, match=message):
        load_query_database_folders(tmp_path / "q", tmp_path / "db")


def test_registry_checks_options_once_and_fills_default_protocols(revisited_root, tmp_path):
    from selconv.datasets import DATASETS, load_dataset

    assert load_dataset("roxford5k", data_dir=revisited_root).info["protocol"] == "medium"
    assert load_dataset("roxford5k", data_dir=revisited_root, protocol="hard").name == "roxford5k-hard"
    assert DATASETS["ukbench"].scores == ("mAP", "N-S") and DATASETS["sample"].scores == ("mAP",)
    with pytest.raises(ValueError, match="--protocol does not apply to dataset oxford5k"):
        load_dataset("oxford5k", data_dir=tmp_path, protocol="hard")
    with pytest.raises(ValueError, match="not valid for roxford5k; choose one of easy, medium, hard"):
        load_dataset("roxford5k", data_dir=revisited_root, protocol="loo-landmark")
    with pytest.raises(ValueError, match="needs --queries and --database"):
        load_dataset("query-folders")
    with pytest.raises(ValueError, match="--rotations .* is not a file"):
        load_dataset("holidays", data_dir=tmp_path, rotations=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")


def test_ukbench_reports_the_ns_score(tmp_path):
    touch_images(tmp_path / "full", [f"ukbench{i:05d}" for i in range(8)])
    assert load_ukbench(tmp_path).scores == ("mAP", "N-S")
