"""No peeking: cheating plugins cannot obtain the samples they are scored on.

`tests/faulty/decoderbench-cheats/` is an installed distribution of the strongest cheats we could
write: rebuild the evaluation sampler from the context (naively, through the harness's own function,
and by re-implementing the keyed scheme with the public key), read the caller's frames (and zero the
scored batch there), search the process's heap, write into its input, and claim `elementwise` while
comparing entries. Run as third-party plugins they are isolated by default (decoderbench.run.worker):
the eval samples and scoring stay in the harness's process. With a secret evaluation key
(DECODERBENCH_EVAL_KEY) none beats the honest built-in decoders; with the public default key the
re-implementation does (documented in decoderbench/model/evalkey.py: a public key is public), and in-process
(--no-isolate) the frame cheat does (the control: the cheats are real, in-process decoders are trusted).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from decoderbench import Cell
from decoderbench.model.data import SparseSampler
from decoderbench.model.evalkey import ENV, eval_sampler, eval_stream_id
from decoderbench.run.runner import WorkUnit

sys.path.insert(0, str(Path(__file__).parent))
from test_third_party import cli, copy_source, pip_install  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHEATS_SRC = ROOT / "tests" / "faulty" / "decoderbench-cheats"
ALLOW = "rug,linear,activations,cheats"
CELL = ["--ns", "256", "--r", "0.25", "--p", "0.05", "--min-samples", "256", "--max-samples", "512", "--device", "cpu"]
CHEATS = ["cheat_rebuild", "cheat_rebuild_informed", "cheat_rebuild_reimplemented", "cheat_frames",
          "cheat_frames_mutate", "cheat_heap", "cheat_input_mutate", "cheat_not_elementwise"]


@pytest.fixture(scope="module")
def cheats_site(tmp_path_factory):
    src = copy_source(CHEATS_SRC, tmp_path_factory.mktemp("src") / CHEATS_SRC.name)
    target = tmp_path_factory.mktemp("site")
    pip_install(src, target)
    return target


def _run(site, tmp_path, *extra) -> dict:
    out = cli(["run", "--plugins", ",".join(["relu", "linear", *CHEATS]), *CELL, "--json", *extra], site, ALLOW,
              tmp_path)
    assert out.returncode in (0, 1), out.stderr
    return {r["decoder"]: r for r in json.loads(out.stdout)}


def _beats(row, honest) -> bool:
    """Strictly better than the honest decoder beyond 3 standard errors."""
    return row["status"] == "ok" and row["loss"] + 3 * (row["loss_se"] or 0) < honest["loss"] - 3 * honest["loss_se"]


def test_no_cheat_beats_the_honest_decoders_with_a_secret_key(cheats_site, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "a secret only the harness knows")
    rows = _run(cheats_site, tmp_path)
    relu = rows["relu"]
    assert relu["status"] == "ok" and relu["eval_stream"].startswith("key-")
    for name in CHEATS:
        assert rows[name]["isolated"] is True, name
        assert not _beats(rows[name], relu), (name, rows[name]["loss"], relu["loss"])
        assert rows[name]["status"] == "error" or rows[name]["loss"] > relu["loss"], name
    bad = rows["cheat_not_elementwise"]
    assert bad["status"] == "error" and "does not act on each entry alone" in bad["error"]


def test_with_the_public_key_only_the_reimplementation_wins(cheats_site, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    rows = _run(cheats_site, tmp_path)
    relu = rows["relu"]
    assert relu["eval_stream"] == "public"
    for name in CHEATS:
        if name == "cheat_rebuild_reimplemented":
            # the documented limit: with the public default key the stream is reproducible by anyone,
            # a decoder that re-implements the scheme included; set DECODERBENCH_EVAL_KEY against that
            assert rows[name]["loss"] == 0.0
        else:
            assert not _beats(rows[name], relu), (name, rows[name]["loss"])


def test_in_process_the_frame_cheat_works_so_the_cheats_are_real(cheats_site, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "another secret")
    rows = _run(cheats_site, tmp_path, "--no-isolate")
    assert rows["cheat_frames"]["loss"] == 0.0 and rows["cheat_frames_mutate"]["loss"] == 0.0
    # what isolation does not need to stop, in-process either: the stream and the input are not the scores
    for name in ("cheat_rebuild", "cheat_rebuild_reimplemented", "cheat_input_mutate", "cheat_heap"):
        assert not _beats(rows[name], rows["relu"]), name


def test_the_eval_stream_is_keyed_and_the_key_is_in_the_row_key(monkeypatch):
    cell = Cell(256, 64, 0.05)
    monkeypatch.delenv(ENV, raising=False)
    public = eval_sampler(cell, 0).sample(4)
    assert not torch.equal(public, SparseSampler(256, 0.05, 0, "eval").sample(4))  # not the naive stream
    assert torch.equal(public, eval_sampler(cell, 0).sample(4))  # reproducible
    k_public = WorkUnit(256, 64, 0.05, "relu").key()
    monkeypatch.setenv(ENV, "s3cret")
    assert eval_stream_id().startswith("key-") and "s3cret" not in eval_stream_id()
    assert not torch.equal(public, eval_sampler(cell, 0).sample(4))
    assert WorkUnit(256, 64, 0.05, "relu").key() != k_public  # rows of another key are never reused
