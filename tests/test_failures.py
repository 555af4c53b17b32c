"""Bad input through the public entry points: every error names the problem and the fix.

Empty, truncated, non-audio and NaN files; a missing folder; an unknown label; a malformed
config. Each case checks the error type and that the message names the file or value.
"""

import numpy as np
import pytest
import soundfile as sf

from bitsound.audio.io import load_audio
from bitsound.cli import main
from bitsound.data import check_dataset, open_dataset
from bitsound.errors import AudioDecodeError, ConfigError, DataError
from bitsound.recipes import load_recipe


def write_wav(path, seconds=0.5, rate=16000, subtype="PCM_16"):
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.2 * np.sin(2 * np.pi * 440 * t), rate, subtype=subtype)
    return path


@pytest.fixture
def bad_files(tmp_path):
    files = {}
    files["empty"] = tmp_path / "empty.wav"
    files["empty"].write_bytes(b"")
    whole = write_wav(tmp_path / "whole.wav").read_bytes()
    files["truncated"] = tmp_path / "truncated.wav"
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    files["not audio"] = tmp_path / "notes.wav"
    files["not audio"].write_text("these are my notes, not a recording\n" * 20)
    files["nan"] = tmp_path / "nan.wav"
    samples = np.zeros(1600, dtype=np.float32)
    samples[100] = np.nan
    sf.write(files["nan"], samples, 16000, subtype="FLOAT")
    return files


@pytest.mark.parametrize("case,words", [
    ("empty", "empty"),
    ("truncated", "truncated"),
    ("not audio", "not"),
    ("nan", "NaN"),
])
def test_bad_file_names_file_and_problem(bad_files, case, words):
    path = bad_files[case]
    with pytest.raises(AudioDecodeError) as info:
        load_audio(path, sample_rate=16000, channels="mono")
    message = str(info.value)
    assert str(path) in message
    assert words.lower() in message.lower()


def test_missing_file(tmp_path):
    with pytest.raises(AudioDecodeError, match="does not exist"):
        load_audio(tmp_path / "nowhere.wav")


def test_data_check_reports_every_bad_file_at_once(bad_files, tmp_path):
    # A folder data set with one good clip per class and every kind of bad file.
    root = tmp_path / "set"
    for label in ("yes", "no"):
        (root / label).mkdir(parents=True)
        write_wav(root / label / "good.wav")
    for name, path in bad_files.items():
        (root / "yes" / f"{name.replace(' ', '_')}.wav").write_bytes(path.read_bytes())
    report = check_dataset(open_dataset(f"folder:{root}"), decode=True)
    bad = sorted(problem.path.rsplit("/", 1)[-1] for problem in report.problems)
    assert bad == ["empty.wav", "nan.wav", "not_audio.wav", "truncated.wav"], report.problems


def test_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(DataError, match="no-such-dir.*does not exist"):
        open_dataset(f"fsdd:{missing}")
    with pytest.raises(DataError, match="no-such-dir"):
        open_dataset(f"folder:{missing}")


def test_unknown_dataset_kind_lists_valid_kinds():
    with pytest.raises(ConfigError, match="valid kinds are: .*fsdd"):
        open_dataset("fsd:/data")


def test_unknown_label_in_manifest_evaluation(tmp_path, capsys):
    clip = write_wav(tmp_path / "a.wav", seconds=1.0)
    (tmp_path / "train.csv").write_text(f"path,label\n{clip.name},yes\n{clip.name},no\n")
    (tmp_path / "eval.csv").write_text(f"path,label\n{clip.name},maybe\n")
    out = tmp_path / "run"
    assert main(["train", "--recipe", "quickstart", "--data", f"manifest:{tmp_path / 'train.csv'}",
                 "--out", str(out), "--no-cache", "-q", "--set", "data.split.kind=none",
                 "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "model.pt"), "--data",
                 f"manifest:{tmp_path / 'eval.csv'}", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "maybe" in err and "not trained on" in err


def test_manifest_with_missing_file_names_row_and_path(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\nghost.wav,yes\n")
    with pytest.raises(DataError, match="ghost.wav"):
        open_dataset(f"manifest:{tmp_path / 'm.csv'}")


@pytest.mark.parametrize("yaml_text,words", [
    ("name: x\nmodel: {name: cnn2d}\ntrain: {epochs: 0}\n", "train.epochs"),
    ("name: x\nmodel: {name: cnn2d}\ntrian: {epochs: 3}\n", "trian: unknown key"),
    ("name: x\nmodel: {name: cnn2d\n", "not valid YAML"),
    ("- just\n- a list\n", "mapping"),
    ("name: x\nmodel: {name: cnn2d}\nfrontend: {kind: mfcc}\n", "frontend"),
])
def test_malformed_config_names_the_key(tmp_path, yaml_text, words):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_recipe(str(path))
    assert words in str(info.value)


def test_unknown_model_name_lists_valid_models(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\nmodel: {name: resnet9000}\ndata: {spec: 'synthetic:n_per_class=2'}\n")
    assert main(["train", "--recipe", str(path), "--out", str(tmp_path / "o"), "--no-cache",
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert "resnet9000" in err and "cnn2d" in err


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "none.pt"), "--data", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert "none.pt" in err and "does not exist" in err and "Traceback" not in err
