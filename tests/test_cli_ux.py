"""The command line as a new user meets it: one-line errors without a traceback (--debug
shows it) and nothing left behind; an output folder that remembers every option and refuses
other ones (--fresh starts over); --success-error 0; figures that check their inputs first;
plain --help texts; the summary table of rnnfast train; the time estimate's model."""

import json
import os
import re
from pathlib import Path

import pytest

from rnnfast.cli import build_parser, main
from rnnfast.cli.outdir import _subparsers

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAIN = ["train", "--min-length", "10", "--max-length", "14", "--hidden", "8", "--valid-every",
         "10", "--valid-size", "40", "--valid-batch", "20", "--batch-size", "5", "--threads", "1",
         "--quiet", "--checkpoint-every", "5"]


def _one_line_error(capsys, rc, *words):
    err = capsys.readouterr().err
    assert rc != 0
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err
    return err


# --------------------------------------------------------------------------- errors
def test_bad_paths_are_one_line_errors_and_leave_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    _one_line_error(capsys, main(TRAIN + ["--out", "afile/run", "--max-updates", "5"]),
                    "afile/run")
    _one_line_error(capsys, main(["reproduce", "music", "--dataset", "JSB", "--data",
                                  str(tmp_path / "nodata"), "--out", "m"]),
                    "nodata", "rnnfast data download music")
    _one_line_error(capsys, main(["reproduce", "table1", "--data", str(tmp_path / "nodata"),
                                  "--out", "t"]), "rnnfast data download")
    _one_line_error(capsys, main(["reproduce", "generalization", "--model", "none.npz",
                                  "--out", "g"]), "none.npz")
    _one_line_error(capsys, main(TRAIN + ["--task", "juggling", "--out", "j"]), "unknown task")
    assert sorted(os.listdir(tmp_path)) == ["afile"]  # no empty result folder anywhere
    with pytest.raises(Exception, match="nodata"):
        main(["--debug", "reproduce", "table1", "--data", str(tmp_path / "nodata")])


# --------------------------------------------------------------------------- resume
def test_train_remembers_every_option_and_refuses_other_ones(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TRAIN + ["--out", str(out), "--max-updates", "12", "--lr", "0.05", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["updates"] == 12
    # --resume alone: every option from the folder, --max-updates included (not 5M)
    assert main(["train", "--out", str(out), "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["updates"] == 12
    # how long it runs may change
    assert main(["train", "--out", str(out), "--resume", "--max-updates", "15", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["updates"] == 15
    stored = json.loads((out / "options.json").read_text())["options"]
    assert stored["max_updates"] == 15 and stored["lr"] == 0.05
    # what the run is may not: each differing option is named
    err = _one_line_error(capsys, main(["train", "--out", str(out), "--resume", "--lr", "0.1",
                                        "--hidden", "9"]), "--lr 0.1", "--hidden 9", "--fresh")
    assert "0.05" in err and "(the folder's: 8)" in err
    _one_line_error(capsys, main(TRAIN + ["--out", str(out)]), "already holds a run")
    assert main(TRAIN + ["--out", str(out), "--fresh", "--max-updates", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["updates"] == 5


SYNTH = ["reproduce", "synthetic", "--lengths", "10", "--seeds", "1", "--inits", "basic_tanh",
         "--methods", "SGD", "--hidden", "8", "--max-updates", "40", "--valid-every", "20",
         "--valid-size", "20", "--eval-size", "20", "--workers", "1", "--no-plot"]


def test_synthetic_resumes_with_its_options_and_refuses_others(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(SYNTH + ["--out", str(out)]) == 0
    assert "1 runs computed" in capsys.readouterr().out
    assert main(["reproduce", "synthetic", "--out", str(out), "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert "1 runs (1 inits" in text and "0 runs computed, 1 resumed" in text
    _one_line_error(capsys, main(["reproduce", "synthetic", "--out", str(out), "--lr", "0.1",
                                  "--lengths", "10,20"]), "--lengths 10,20", "--lr 0.1")
    assert main(["reproduce", "synthetic", "--out", str(out), "--fresh", "--lr", "0.1",
                 "--estimate-only"]) == 0  # an estimate neither deletes nor writes
    assert (out / "runs").is_dir()
    capsys.readouterr()


def test_generalization_refuses_other_options(tmp_path, capsys):
    out = tmp_path / "g"
    argv = ["reproduce", "generalization", "--out", str(out), "--min-length", "10",
            "--max-length", "12", "--hidden", "6", "--max-updates", "20", "--valid-every", "10",
            "--valid-size", "20", "--eval-lengths", "10", "--eval-size", "20"]
    main(argv)
    stored = json.loads((out / "options.json").read_text())["options"]
    assert stored["hidden"] == 6 and stored["alpha"] == 4.0  # values, not "default"
    capsys.readouterr()
    _one_line_error(capsys, main(["reproduce", "generalization", "--out", str(out),
                                  "--alpha", "2"]), "--alpha 2.0")


@pytest.mark.skipif(not (DATA / "music" / "JSB_Chorales.pickle").exists(),
                    reason="needs ../shared/data")
def test_music_resume_remembers_data_and_refuses_other_options(tmp_path, capsys):
    out = tmp_path / "m"
    base = ["reproduce", "music", "--dataset", "JSB", "--out", str(out), "--quiet"]
    assert main(base + ["--data", str(DATA), "--hidden", "4", "--max-epochs", "1",
                        "--train-eval-limit", "50", "--threads", "1"]) == 0
    _one_line_error(capsys, main(base), "already holds a run", "--resume")
    _one_line_error(capsys, main(base + ["--resume", "--hidden", "5"]), "--hidden 5")
    assert main(base + ["--resume"]) == 0  # --data, --hidden, ... from the folder
    capsys.readouterr()
    # not --quiet: the resume is logged (a crash once, hidden by --quiet in every other test)
    assert main(["reproduce", "music", "--dataset", "JSB", "--out", str(out), "--resume"]) == 0
    assert "resumed at epoch 2, batch 0, update " in capsys.readouterr().out


def _tiny_music(data, file, n_train):
    """A music data set of ``n_train`` identical 30-step pieces (one for valid and test)."""
    import pickle

    piece = [[60 + t % 5, 67] for t in range(30)]
    (data / "music").mkdir(parents=True)
    with open(data / "music" / file, "wb") as f:
        pickle.dump({"train": [piece] * n_train, "valid": [piece], "test": [piece]}, f,
                    protocol=2)


def test_music_resume_with_a_higher_max_epochs_trains_on(tmp_path, capsys):
    _tiny_music(tmp_path / "data", "JSB_Chorales.pickle", 4)
    out = tmp_path / "m"
    base = ["reproduce", "music", "--dataset", "JSB", "--out", str(out), "--quiet"]
    assert main(base + ["--data", str(tmp_path / "data"), "--hidden", "4", "--max-epochs", "1",
                        "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(base + ["--resume", "--max-epochs", "3"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 3 and results["stopped"] == "max_epochs"
    assert results["config"]["max_epochs"] == 3
    assert main(base + ["--resume"]) == 0  # the raised cap is remembered: nothing more to do
    assert json.loads((out / "results.json").read_text())["epochs"] == 3


def test_table1_max_epochs_continues_a_cell_that_stopped_at_its_cap(tmp_path, capsys):
    _tiny_music(tmp_path / "data", "Nottingham.pickle", 2)
    out = tmp_path / "t1"
    base = ["reproduce", "table1", "--out", str(out), "--cells", "Nottingham-SGD",
            "--workers", "1"]
    assert main(base + ["--data", str(tmp_path / "data"), "--max-epochs", "1"]) == 0
    cell = out / "Nottingham-SGD" / "results.json"
    first = json.loads(cell.read_text())
    assert first["stopped"] == "max_epochs" and first["epochs"] == 1
    assert main(base) == 0  # the cap is remembered: nothing more to do
    assert json.loads(cell.read_text())["epochs"] == 1
    assert main(base + ["--max-epochs", "3"]) == 0  # resumes from the cell's checkpoint
    again = json.loads(cell.read_text())
    assert again["epochs"] == 3 and again["config"]["max_epochs"] == 3
    assert again["updates"] == 3 * first["updates"]
    md = (out / "table1.md").read_text()
    assert "| Nottingham | SGD † |" in md and "† Nottingham-SGD: max_epochs 3 (default 200)" in md
    capsys.readouterr()


def test_table1_remembers_its_options(tmp_path, capsys, monkeypatch):
    import rnnfast.experiments.natural as nat

    seen = []
    monkeypatch.setattr(nat, "run_table1", lambda data, out, **kw: seen.append((data, kw)) or {})
    data = tmp_path / "data"
    for f in ("ptb.char.train.txt", "ptb.char.valid.txt", "ptb.char.test.txt"):
        (data / "ptb_char").mkdir(parents=True, exist_ok=True)
        (data / "ptb_char" / f).write_text("a b\n")
    out = str(tmp_path / "t")
    cells = "PTB-ahead1-SGD-CR"
    assert main(["reproduce", "table1", "--data", str(data), "--out", out, "--cells", cells,
                 "--budget", "7", "--workers", "1"]) == 0
    assert main(["reproduce", "table1", "--out", out, "--cells", cells]) == 0
    assert seen[1][0] == str(data) and seen[1][1]["budget_minutes"] == 7.0
    assert seen[1][1]["workers"] == 1
    capsys.readouterr()


# --------------------------------------------------------------------------- train
def test_success_error_zero_means_stop_at_zero_errors():
    from rnnfast.tasks import get_task
    from rnnfast.train import Validation

    v = Validation(get_task("temporal_order"), every=10, success_error=0)
    assert v._success(0.0) and not v._success(0.001)
    v = Validation(get_task("temporal_order"), every=10, success_error=0.01)
    assert v._success(0.0) and v._success(0.0099) and not v._success(0.01)
    args = build_parser().parse_args(TRAIN + ["--success-error", "0"])
    from rnnfast.cli.train import build

    _, _, callbacks = build(args)
    assert [c.success_error for c in callbacks if isinstance(c, Validation)] == [0.0]


def test_train_ends_with_a_summary_table(tmp_path, capsys):
    assert main(TRAIN + ["--max-updates", "10", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert not out.strip().startswith("{")
    for row in ("method", "SGD-CR", "stopped", "reached --max-updates 10", "updates",
                "best error", "files"):
        assert row in out


# --------------------------------------------------------------------------- figures
def test_figures_check_every_input_before_writing(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "figs"
    good = tmp_path / "h.json"
    good.write_text(json.dumps([{"update": 1, "loss": 1.0}, {"update": 2, "loss": 0.5}]))
    _one_line_error(capsys, main(["figures", "--out", str(out), "--history", str(good),
                                  "--history", str(tmp_path / "missing.json")]), "missing.json")
    assert not out.exists()


# --------------------------------------------------------------------------- help
def test_help_texts_are_plain_and_use_one_spelling_per_method():
    bad = re.compile(r"``|:(mod|func|class|meth|data|attr):`|SGD\+|sgd-c|docs/|\.\./shared")
    for p in _subparsers(build_parser()):
        text = p.format_help()
        assert not bad.search(text), (p.prog, bad.search(text).group(0))
    top = build_parser().format_help()
    for name in ("train", "reproduce", "figures", "data", "--debug"):
        assert name in top


# --------------------------------------------------------------------------- estimate
def test_expected_time_model_matches_the_measured_default_sweep():
    from rnnfast.experiments import synthetic as syn

    configs = syn.make_configs(syn.DEFAULT)
    # the README's run: 883,750 updates in all
    assert sum(syn.expected_updates(c) for c in configs) == pytest.approx(883_750, rel=0.01)
    per = {10: 4e-4, 20: 6e-4, 40: 1e-3}
    exp, worst = syn.expected_seconds(configs, per, 2), syn.estimate_seconds(configs, per, 2)
    assert 0.2 * worst < exp < 0.8 * worst
    other = syn.make_configs(syn.SweepSettings(hidden=20))
    assert syn.expected_updates(other[0]) is None
    assert syn.expected_seconds(other, per, 2) is None
    line = syn.estimate_line(exp, worst, 2, 20_000)
    assert "at most" in line and "median updates" in line
    assert syn.estimate_line(None, worst, 2, 20_000).startswith("estimate: at most")
