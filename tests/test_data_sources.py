"""Tests of the dataset sources: folder, manifest, fsdd, esc10-2015, esc50/esc10, xeno-canto.

Each source is tested on a small tree built in tmp_path (including the broken layouts a user
will produce) and on the real sets in ../shared/data when they are present.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bitsound.data import given_folds, leave_one_group_out, open_dataset
from bitsound.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data set {path} is absent (CI provides ../shared/data)")
    return path


def _wav(path: Path, seconds: float = 0.2, sr: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), sr)
    return path


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ==================================================================== folder
def test_folder_finds_audio_recursively_in_any_case(tmp_path, caplog):
    _wav(tmp_path / "dog" / "a.wav")
    _wav(tmp_path / "dog" / "deep" / "b.WAV")
    _touch(tmp_path / "rain" / "c.FLAC")
    _touch(tmp_path / "rain" / "d.ogg")
    _touch(tmp_path / "rain" / "e.Mp3")
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.kind == "folder" and ds.labels == ["dog", "rain"]
    assert Counter(c.label for c in ds) == {"dog": 2, "rain": 3}
    assert all(Path(c.path).is_absolute() and c.fold is None for c in ds)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_folder_lists_non_audio_files_in_a_warning(tmp_path, caplog):
    _wav(tmp_path / "dog" / "a.wav")
    _touch(tmp_path / "dog" / "notes.txt")
    _touch(tmp_path / "dog" / "clip.aiff")
    _touch(tmp_path / "README.md")
    _touch(tmp_path / "dog" / ".DS_Store")
    with caplog.at_level(logging.INFO, logger="bitsound.data.folder"):
        ds = open_dataset(f"folder:{tmp_path}")
    assert len(ds) == 1
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for name in ("notes.txt", "clip.aiff", "README.md"):
        assert name in warning
    assert "3 files" in warning
    assert any("1 hidden" in r.getMessage() for r in caplog.records)


def test_folder_without_class_folders_is_an_error(tmp_path):
    _wav(tmp_path / "a.wav")
    with pytest.raises(DataError, match="has no class subfolders"):
        open_dataset(f"folder:{tmp_path}")


def test_folder_with_empty_class_folders_names_them(tmp_path):
    _wav(tmp_path / "dog" / "a.wav")
    (tmp_path / "cat").mkdir()
    _touch(tmp_path / "owl" / "hoot.aiff")
    with pytest.raises(DataError) as info:
        open_dataset(f"folder:{tmp_path}")
    assert "cat/ (0 non-audio files)" in str(info.value)
    assert "owl/ (1 non-audio files)" in str(info.value)


# ==================================================================== manifest
def _manifest(tmp_path: Path, text: str) -> Path:
    return _touch(tmp_path / "lists" / "train.csv", text)


def test_manifest_reads_all_columns_and_resolves_relative_paths(tmp_path):
    _wav(tmp_path / "lists" / "audio" / "a.wav")
    absolute = _wav(tmp_path / "elsewhere" / "b.wav")
    csv = _manifest(tmp_path, (
        "path,label,fold,group,device,start,end,quality\n"
        "audio/a.wav,dog,1,spk1,phone,0.05,0.15,A\n"
        f"{absolute},cat,,,,,,B\n"
    ))
    ds = open_dataset(f"manifest:{csv}")
    a, b = ds.clips
    assert a.path == str(tmp_path / "lists" / "audio" / "a.wav")
    assert (a.label, a.fold, a.group, a.device, a.start, a.end) == (
        "dog", "1", "spk1", "phone", 0.05, 0.15)
    assert a.meta == {"quality": "A"}
    assert (b.fold, b.group, b.device, b.start, b.end) == (None, None, None, None, None)
    assert ds.load(a).shape == (1, 800)


def test_manifest_missing_column_names_csv_and_columns(tmp_path):
    csv = _manifest(tmp_path, "file,label\nx.wav,dog\n")
    with pytest.raises(DataError, match=r"train.csv' lacks the column\(s\) \['path'\]"):
        open_dataset(f"manifest:{csv}")


def test_manifest_reports_every_bad_row_at_once(tmp_path):
    _wav(tmp_path / "lists" / "ok.wav")
    csv = _manifest(tmp_path, (
        "path,label,start,end\n"
        "ok.wav,dog,,\n"
        "ok.wav,,,\n"
        "missing.wav,dog,,\n"
        "ok.wav,dog,0.5,0.2\n"
        "ok.wav,dog,abc,\n"
        ",dog,,\n"
    ))
    with pytest.raises(DataError) as info:
        open_dataset(f"manifest:{csv}")
    message = str(info.value)
    assert "train.csv' has 5 problem(s)" in message
    assert "line 3: empty label" in message
    assert "line 4: audio file" in message and "missing.wav' does not exist" in message
    assert "line 5: end (0.2 s) must be greater than start (0.5 s)" in message
    assert "line 6: start 'abc' is not a number" in message
    assert "line 7: empty path" in message
    assert "fix these rows" in message


def test_manifest_without_rows_is_an_error(tmp_path):
    csv = _manifest(tmp_path, "path,label\n")
    with pytest.raises(DataError, match="no rows"):
        open_dataset(f"manifest:{csv}")


def test_manifest_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match=r"nope.csv' does not exist; expected a CSV file"):
        open_dataset(f"manifest:{tmp_path / 'nope.csv'}")


# ==================================================================== fsdd
def test_fsdd_tmp_tree_root_or_recordings(tmp_path):
    for name in ("3_alice_0.wav", "3_alice_1.wav", "7_bob_12.wav"):
        _touch(tmp_path / "recordings" / name)
    _touch(tmp_path / "README.md")
    for spec in (f"fsdd:{tmp_path}", f"fsdd:{tmp_path / 'recordings'}"):
        ds = open_dataset(spec)
        assert ds.labels == ["3", "7"]
        assert [c.group for c in ds] == ["alice", "alice", "bob"]
        assert ds[2].meta == {"speaker": "bob", "index": 12}


def test_fsdd_lists_misnamed_files(tmp_path):
    _touch(tmp_path / "recordings" / "3_alice_0.wav")
    _touch(tmp_path / "recordings" / "three_alice_0.wav")
    _touch(tmp_path / "recordings" / "3_alice_0.flac")
    with pytest.raises(DataError) as info:
        open_dataset(f"fsdd:{tmp_path}")
    assert "2 entries" in str(info.value)
    assert "three_alice_0.wav" in str(info.value) and "3_alice_0.flac" in str(info.value)


def test_fsdd_real():
    ds = open_dataset(f"fsdd:{_shared('fsdd')}")
    assert len(ds) == 2000
    assert ds.labels == [str(d) for d in range(10)]
    assert len({c.group for c in ds}) == 4
    assert ds.load(ds[0]).shape[0] == 1
    assert [len(s.val) for s in leave_one_group_out(ds)] == [500] * 4  # unseen speakers


# ==================================================================== ESC-10, 2015 layout
def test_esc10_2015_tmp_tree(tmp_path):
    _touch(tmp_path / "001 - Dog bark" / "1-100032-A.ogg")
    _touch(tmp_path / "001 - Dog bark" / "2-100032-B.ogg")
    _touch(tmp_path / "002 - Rain" / "3-17367-A.ogg")
    _touch(tmp_path / "README.txt")
    ds = open_dataset(f"esc10-2015:{tmp_path}")
    assert ds.labels == ["Dog bark", "Rain"]
    assert [(c.fold, c.group) for c in ds] == [("1", "100032"), ("2", "100032"), ("3", "17367")]
    assert ds[1].meta == {"class_id": "001", "take": "B"}


def test_esc10_2015_lists_unexpected_names(tmp_path):
    _touch(tmp_path / "001 - Dog bark" / "1-100032-A.ogg")
    _touch(tmp_path / "001 - Dog bark" / "dog.ogg")
    _touch(tmp_path / "extras" / "x.ogg")
    with pytest.raises(DataError) as info:
        open_dataset(f"esc10-2015:{tmp_path}")
    assert "001 - Dog bark/dog.ogg" in str(info.value)
    assert "extras/ (not 'NNN - Class name')" in str(info.value)


def test_esc10_2015_real():
    ds = open_dataset(f"esc10-2015:{_shared('esc10')}")
    assert len(ds) == 320
    assert len(ds.labels) == 10 and "Dog bark" in ds.labels
    assert sorted({c.fold for c in ds}) == ["1", "2", "3", "4"]
    assert Counter(c.fold for c in ds) == {f: 80 for f in "1234"}
    # ESC keeps all takes of one source recording in one fold.
    folds_per_source = {}
    for clip in ds:
        folds_per_source.setdefault(clip.group, set()).add(clip.fold)
    assert all(len(folds) == 1 for folds in folds_per_source.values())
    assert [s.name for s in given_folds(ds)] == ["1", "2", "3", "4"]


# ==================================================================== ESC-50 layout
_ESC50_HEADER = "filename,fold,target,category,esc10,src_file,take\n"


def _esc50_tree(tmp_path: Path, rows: list[str], files: list[str]) -> Path:
    _touch(tmp_path / "meta" / "esc50.csv", _ESC50_HEADER + "".join(r + "\n" for r in rows))
    for name in files:
        _touch(tmp_path / "audio" / name)
    return tmp_path


_ROWS = [
    "1-100032-A-0.wav,1,0,dog,True,100032,A",
    "1-100038-A-14.wav,1,14,chirping_birds,False,100038,A",
    "2-100648-A-43.wav,2,43,car_horn,False,100648,A",
    "2-100032-B-0.wav,2,0,dog,True,100032,B",
]


def test_esc50_tmp_tree(tmp_path):
    root = _esc50_tree(tmp_path, _ROWS, [r.split(",")[0] for r in _ROWS])
    ds = open_dataset(f"esc50:{root}")
    assert ds.labels == ["car_horn", "chirping_birds", "dog"]
    assert [c.label for c in ds] == ["dog", "chirping_birds", "dog", "car_horn"]  # by filename
    dog = ds[0]
    assert (dog.fold, dog.group, dog.meta["target"]) == ("1", "100032", 0)
    assert Path(dog.path) == root / "audio" / "1-100032-A-0.wav"


def test_esc10_subset_of_esc50_layout(tmp_path):
    root = _esc50_tree(tmp_path, _ROWS, [r.split(",")[0] for r in _ROWS])
    ds = open_dataset(f"esc10:{root}")
    assert ds.labels == ["dog"] and len(ds) == 2


def test_esc50_files_and_csv_must_agree(tmp_path):
    files = [r.split(",")[0] for r in _ROWS[1:]] + ["5-9999-A-1.wav"]
    root = _esc50_tree(tmp_path, _ROWS, files)
    with pytest.raises(DataError) as info:
        open_dataset(f"esc50:{root}")
    assert "1-100032-A-0.wav: listed in esc50.csv but not in audio/" in str(info.value)
    assert "5-9999-A-1.wav: in audio/ but not in esc50.csv" in str(info.value)


def test_esc50_missing_meta_names_what_is_expected(tmp_path):
    (tmp_path / "audio").mkdir()
    with pytest.raises(DataError, match=r"esc50.csv' does not exist; expected the ESC-50 root"):
        open_dataset(f"esc50:{tmp_path}")


# ==================================================================== xeno-canto
_XC_HEADER = "Recording_ID,Genus,Specific_epithet,English_name,Country,Quality,License\n"


def _xc_tree(tmp_path: Path, rows: list[str], files: list[str]) -> Path:
    _touch(tmp_path / "metadata.csv", _XC_HEADER + "".join(r + "\n" for r in rows))
    for name in files:
        _touch(tmp_path / "mp3" / name)
    return tmp_path


def test_xeno_canto_tmp_tree(tmp_path):
    root = _xc_tree(
        tmp_path,
        ["11,Acrocephalus,palustris,Marsh Warbler,Poland,A,by-nc-sa",
         "12,Acrocephalus,scirpaceus,Reed Warbler,Spain,B,by-nc-nd"],
        ["Acrocephalus-palustris-11.mp3", "Acrocephalus-scirpaceus-12.mp3"],
    )
    ds = open_dataset(f"xeno-canto:{root}")
    assert ds.labels == ["Acrocephalus palustris", "Acrocephalus scirpaceus"]
    assert [c.group for c in ds] == ["11", "12"]
    assert ds[0].meta["Country"] == "Poland" and ds[1].meta["Quality"] == "B"


def test_xeno_canto_lists_every_mismatch(tmp_path):
    root = _xc_tree(
        tmp_path,
        ["11,Acrocephalus,palustris,,,,", "13,Acrocephalus,arundinaceus,,,,",
         "14,Acrocephalus,palustris,,,,"],
        ["Acrocephalus-palustris-11.mp3", "Acrocephalus-palustris-12.mp3",
         "Acrocephalus-dumetorum-14.mp3", "song.mp3"],
    )
    with pytest.raises(DataError) as info:
        open_dataset(f"xeno-canto:{root}")
    message = str(info.value)
    assert "Acrocephalus-palustris-12.mp3: recording 12 has no row in metadata.csv" in message
    assert "recording 13: in metadata.csv but mp3/ has no file for it" in message
    assert "file name says 'Acrocephalus dumetorum', metadata.csv says" in message
    assert "song.mp3: not named" in message


def test_xeno_canto_real():
    ds = open_dataset(f"xeno-canto:{_shared('xeno-canto-acrocephalus')}")
    assert len(ds) == 48
    assert len(ds.labels) == 4 and all(label.startswith("Acrocephalus ") for label in ds.labels)
    assert len({c.group for c in ds}) == 48
    assert {"Country", "Quality", "Vocalization_type", "Recordist", "License"} <= set(ds[0].meta)
