"""The small things of the board's issue: option checks, error wording, help texts, the plugins listing."""

from __future__ import annotations

import re

import pytest

from decoderbench.cli import cli, main


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("extra", [[], ["--grid", "default"]])
def test_min_samples_above_max_samples_is_refused(in_tmp, capsys, extra):
    args = ["run", "--plugins", "linear", "--ns", "64", "--min-samples", "1000", "--max-samples", "500", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1000" in err and "500" in err and "Traceback" not in err, err
    assert list(in_tmp.iterdir()) == []


@pytest.mark.parametrize("args,needle", [
    (["--ns", "1000"], "got 1000"),
    (["--ns", "64", "--nd", "1000"], "got 1000"),
    (["--ns", "64", "--seed", "-3"], "got -3"),
])
def test_integers_are_echoed_as_integers(in_tmp, capsys, args, needle):
    assert main(["run", "--plugins", "linear", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and f"{needle}.0" not in err, err


def test_leaderboard_on_a_folder_that_is_not_a_store_says_it_cannot_read(tmp_path, capsys):
    d = tmp_path / "notastore"
    d.mkdir()
    (d / "x.txt").write_text("hello")
    assert main(["leaderboard", "--results", str(d)]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "write" not in err and len(err.strip().splitlines()) == 1, err
    assert sorted(f.name for f in d.iterdir()) == ["x.txt"]


@pytest.mark.parametrize("command", ["symmetry", "leaderboard", "run", "plugins", "theory"])
def test_help_names_only_options_that_exist(command):
    from click.testing import CliRunner

    res = CliRunner().invoke(cli, [command, "--help"], terminal_width=200)
    assert res.exit_code == 0
    import click

    cmd = cli.get_command(click.Context(cli), command)  # plugin commands (symmetry) load on first use
    known = {o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
    known |= {"--help"}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", res.output))
    assert named <= known, named - known


def test_plugins_shows_decoder_requirements_and_encoder_capabilities(capsys):
    import json

    rc = main(["plugins"])
    out = capsys.readouterr().out
    dec_part, enc_part = out.split("\nencoders:\n")
    assert re.match(r"name\s+kind\s+source\s+requires\s+description", dec_part.splitlines()[0])
    assert re.match(r"name\s+source\s+capabilities\s+description", enc_part.splitlines()[0])
    assert "requires" not in enc_part
    vamp = next(ln for ln in dec_part.splitlines() if ln.startswith("vamp "))
    assert "orthogonal_rows" in vamp or "fast_transform" in vamp or "-" in vamp
    assert main(["plugins", "--json"]) == rc
    entries = json.loads(capsys.readouterr().out)
    encs = [e for e in entries if e["kind"] == "encoder"]
    decs = [e for e in entries if e["kind"] not in ("encoder", "error", "collision")]
    assert encs and all("capabilities" in e and "requires" not in e for e in encs)
    assert decs and all("requires" in e for e in decs)
