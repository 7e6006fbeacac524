"""User errors on the command line: one message on stderr, exit 2, no traceback; ``--debug`` shows it."""

from __future__ import annotations

import pytest

from mmlens.cli import main


def _trace_args(root, dataset="EuroSAT"):
    return ["trace", "--model", "test-tiny", "--pretrained", "random", "--dataset", dataset,
            "--data-root", str(root), "--out", str(root / "store.zarr")]


def test_unknown_dataset_is_one_message(tmp_path, capsys):
    assert main(_trace_args(tmp_path, "EuroSATT")) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmlens trace: error: Unknown dataset 'EuroSATT'")
    assert "Traceback" not in err and "EuroSAT" in err and "--debug" in err


def test_malformed_split_file_names_the_file(tmp_path, capsys):
    folder = tmp_path / "eurosat"
    folder.mkdir()
    (folder / "split_zhou_EuroSAT.json").write_text("{not json")
    assert main(_trace_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "split_zhou_EuroSAT.json: not valid JSON" in err
    assert "Traceback" not in err and err.count("error:") == 1  # no chained second error


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset"):
        main(["--debug", *_trace_args(tmp_path, "EuroSATT")])


def test_bad_flag_combination_exits_2(tmp_path, capsys):
    (tmp_path / "weights").mkdir()
    code = main(["reproduce", "--out", str(tmp_path / "out"), "--maple-weights", str(tmp_path / "weights"),
                 "--methods", "maple", "bias"])
    assert code == 2
    assert "--maple-weights imports MaPLe prompts" in capsys.readouterr().out + capsys.readouterr().err


def test_bugs_keep_their_traceback(monkeypatch, tmp_path):
    """A failure that is not about the input (here an AssertionError, like CompletenessError) is not hidden."""
    import mmlens.data as data

    def broken(*args, **kwargs):
        raise AssertionError("internal invariant broken")

    monkeypatch.setattr(data, "get_manifest", broken)
    with pytest.raises(AssertionError, match="internal invariant"):
        main(_trace_args(tmp_path))


def test_open_on_a_folder_that_is_not_a_store(tmp_path):
    import mmlens

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.txt").write_text("not zarr")
    with pytest.raises(FileNotFoundError, match="is a folder but not a trace store"):
        mmlens.open(tmp_path / "photos")


def test_toy_without_pretrained_warns_once_and_random_is_quiet(recwarn):
    import warnings

    from mmlens.models import loading

    loading._warned_random_toy = False
    with pytest.warns(UserWarning, match='pretrained="toyworld"'):
        loading.load_clip("mmlens-toy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loading.load_clip("mmlens-toy")  # once only
        clip = loading.load_clip("mmlens-toy", pretrained="random")  # asked for by name: no warning
    assert clip.pretrained["source"] == "random"
