"""The store you can trust: concurrent runs, validated rows, `verify`.

* two `decoderbench run` processes started together into one new store both succeed, and between
  them compute every row exactly once (the counts lines add up), every row stored once;
* a row file edited by hand (a loss changed), truncated, or with a wrong column type is named by
  file: `leaderboard` refuses the store (exit 2), the next `run` recomputes it, and `verify` names it;
* `verify` on a fresh store reproduces every row bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from decoderbench.cli import main
from decoderbench.results.store import ResultsStore, StoreError

ENV = {**os.environ, "DECODERBENCH_PLUGINS": "rug,linear,activations,topk", "OMP_NUM_THREADS": "1"}
RUN = ["run", "--plugins", "linear,relu,topk", "--ns", "256", "--r", "0.1,0.25,0.5", "--p", "0.05,0.1",
       "--target-se", "0.05", "--min-samples", "256", "--max-samples", "512", "--device", "cpu", "--no-summary"]
N_ROWS = 3 * 3 * 2


def _counts(stderr: str) -> tuple[int, int]:
    m = re.search(r"(\d+) rows reused, (\d+) computed", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2))


def _edit(path: Path, **changes) -> None:
    """Rewrite one row file with some cells changed (its row_hash kept: a hand edit)."""
    t = pq.read_table(path)
    row = t.to_pylist()[0]
    row.update(changes)
    pq.write_table(pa.Table.from_pylist([row], schema=t.schema), path)


@pytest.fixture(scope="module")
def fresh_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("fresh") / "store"
    out = subprocess.run([sys.executable, "-m", "decoderbench", *RUN, "--out", str(d)], capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr
    return d


def test_two_concurrent_runs_compute_every_row_once(tmp_path):
    store = tmp_path / "shared"  # does not exist yet: the two runs race to create it
    cmd = [sys.executable, "-m", "decoderbench", *RUN, "--out", str(store)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    counts = [_counts(err) for _, err in outs]
    assert sum(c for _, c in counts) == N_ROWS, counts  # none computed twice, none lost
    assert all(r + c == N_ROWS for r, c in counts)  # each run returned every row
    st = ResultsStore(store, create=False)
    rows = st.rows()
    assert len(rows) == N_ROWS == len(st.keys()) and not st.problems()
    idents = {(r["decoder"], r["n_d"], r["p"]) for r in rows}
    assert len(idents) == N_ROWS  # every row once


def test_verify_reproduces_a_fresh_store(fresh_store, capsys):
    rc = main(["verify", "--results", str(fresh_store), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(report) == N_ROWS
    assert {e["verdict"] for e in report} == {"reproduced"}
    assert main(["verify", "--results", str(fresh_store), "--sample", "0.25", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5  # ceil(0.25 * 18)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("locks", "board"))
    return dst


def test_hand_edited_loss_is_named_refused_recomputed(fresh_store, tmp_path, capsys):
    store = _copy(fresh_store, tmp_path / "edited")
    st = ResultsStore(store, create=False)
    victim = next(r for r in st.rows() if r["decoder"] == "relu")
    path = st.row_path(victim["key"])
    _edit(path, loss=victim["loss"] / 2)  # a better loss, typed in
    name = f"rows/{path.name}"

    rc = main(["verify", "--results", str(store), "--json"])
    report = {e["file"]: e for e in json.loads(capsys.readouterr().out)}
    assert rc == 1
    assert report[name]["verdict"] == "bad" and "content hash" in report[name]["detail"]
    assert "recomputed" in report[name]["detail"] and report[name]["recomputed_loss"] == victim["loss"]
    assert all(e["verdict"] == "reproduced" for f, e in report.items() if f != name)

    with pytest.raises(StoreError, match=re.escape(name)):
        st.rows()
    rc = main(["leaderboard", "--results", str(store), "--no-figures", "--quiet", "--out", str(tmp_path / "lb")])
    err = capsys.readouterr().err
    assert rc == 2 and name in err and len(err.strip().splitlines()) == 1, err

    # the next run recomputes that row (and only it) and says so
    out = subprocess.run([sys.executable, "-m", "decoderbench", *RUN, "--out", str(store)], capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr
    assert _counts(out.stderr) == (N_ROWS - 1, 1)
    assert "recomputed 1 row file(s) that failed validation" in out.stderr and path.name in out.stderr
    assert st.read(victim["key"])["loss"] == victim["loss"] and not st.problems()


@pytest.mark.parametrize("how,needle", [
    ("truncate", "unreadable"),
    ("negative", "content hash"),
    ("type", "content hash"),
    ("made_up", "not its file name"),
])
def test_damaged_rows_are_named(fresh_store, tmp_path, how, needle):
    store = _copy(fresh_store, tmp_path / how)
    st = ResultsStore(store, create=False)
    row = st.rows()[0]
    path = st.row_path(row["key"])
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "negative":
        _edit(path, loss=-1.0)
    elif how == "type":
        t = pq.read_table(path)
        cells = t.to_pylist()[0]
        cells["n_s"] = "256"
        fields = [pa.field(f.name, pa.string() if f.name == "n_s" else f.type) for f in t.schema]
        pq.write_table(pa.Table.from_pylist([cells], schema=pa.schema(fields)), path)
    else:  # a made-up row under a key of its own
        fake = st.rows_dir / "0123456789abcdef01234567.parquet"
        fake.write_bytes(path.read_bytes())
        path = fake
    problems = st.problems()
    assert list(problems) == [f"rows/{path.name}"] and needle in problems[f"rows/{path.name}"], problems
    with pytest.raises(StoreError, match=re.escape(path.name)):
        st.rows()
    assert len(st.rows(strict=False)) == N_ROWS - (how != "made_up")


def test_negative_loss_with_a_valid_hash_is_still_refused(tmp_path):
    """A row whose hash was recomputed after the edit (a forger's): its contents are checked too."""
    from test_store import valid_row

    st = ResultsStore(tmp_path / "s")
    row = valid_row(loss=-1.0)
    st.write(row)  # write() hashes whatever it is given
    assert "finite loss >= 0" in st.problems()[f"rows/{row['key']}.parquet"]
    row2 = valid_row(loss=float("nan"), seed=1)
    st.write(row2)
    assert "finite loss >= 0" in st.problems()[f"rows/{row2['key']}.parquet"]


@pytest.mark.parametrize("changes, columns", [
    ({"kind": "iterative"}, ["kind"]),
    ({"ratio_e2": 0.5, "precision_met": False}, ["precision_met", "ratio_e2"]),
    ({"status": "error", "error": "RuntimeError: made up", "loss": None, "loss_se": None}, ["error", "loss",
                                                                                          "loss_se", "status"]),
    ({"params": {"fit_pairs": 1}}, ["params.a", "params.b", "params.fit_pairs"]),
], ids=["kind", "ratio-and-precision", "flipped-to-error", "params"])
def test_verify_compares_every_result_column_of_a_rehashed_row(fresh_store, tmp_path, capsys, changes, columns):
    """A forger who edits result columns and recomputes the row's hash (so the store accepts the file) is
    caught by verify, which recomputes the row and names every column that differs; error rows too."""
    store = _copy(fresh_store, tmp_path / "forged")
    st = ResultsStore(store, create=False)
    victim = next(r for r in st.rows() if r["decoder"] == "relu")
    forged = {**victim, **changes}
    st.write(forged)  # write() hashes whatever it is given: the file is valid
    assert not st.problems()
    rc = main(["verify", "--results", str(store), "--json"])
    report = {e["key"]: e for e in json.loads(capsys.readouterr().out)}
    assert rc == 1
    e = report[victim["key"]]
    assert e["verdict"] == "differs" and set(columns) <= set(e["columns_differing"]), e
    for col in columns:
        assert col in e["detail"]
    assert all(x["verdict"] == "reproduced" for k, x in report.items() if k != victim["key"])


def test_verify_recomputes_error_rows(tmp_path, capsys):
    """An error row is recomputed like any other: the same failure reproduces; an ok row typed in over it
    (rehashed) differs."""
    from decoderbench.api import result_differences

    a = {"status": "error", "error": "RuntimeError: boom at /tmp/x1", "loss": None, "kind": "elementwise"}
    b = {"status": "error", "error": "RuntimeError: boom at /tmp/x2", "loss": None, "kind": "elementwise"}
    assert result_differences(a, b) == []
    c = {**b, "status": "ok", "error": None, "loss": 0.1}
    assert [col for col, _ in result_differences(c, b)] == ["error", "loss", "status"]
