"""Each attack class of ``tests/adversarial`` (see the package docstring's table) against one run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from helpers import survivors

from decoderbench.cli import main
from decoderbench.contract import registry as plugins
from decoderbench.results.store import ResultsStore
from decoderbench.run import scoring, worker

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
PATHS = [HERE / "plugins", TESTS / "faulty" / "decoderbench-cheats", TESTS / "faulty" / "decoderbench-faulty"]
ENTRY_POINTS = {"adv_unpickle": "adv_unpickle", "adv_monkeypatch": "adv_monkeypatch", "adv_key": "adv_key",
                "activations": "adv_impostor", "adv_probe": "adv_probe", "adv_overflow": "adv_overflow",
                "adv_signals": "adv_signals", "adv_frames": "decoderbench_cheats", "adv_prints": "decoderbench_faulty",
                "adv_privdrop": "adv_privdrop"}
DECODERS = ["relu", "adv_signals", "linear", "adv_unpickle", "adv_monkeypatch", "cheat_frames", "adv_key",
            "adv_probe", "adv_overflow", "faulty_prints", "adv_privdrop"]
SECRET = "adversarial-secret-key"
CELL = ["--ns", "256", "--r", "0.25", "--p", "0.05", "--max-samples", "256", "--device", "cpu", "--timeout", "15"]


@pytest.fixture(scope="module")
def attack(shared_tmp_factory):
    """Install the distribution, run every attack once into a store; yields what the checks read. The folder is
    one other users can read (the workers run as ``nobody`` where the harness is root); the attacks' own files go
    to a subfolder anyone may write, the store is made by the harness (root-owned, 0755, where root)."""
    tmp = shared_tmp_factory.mktemp("adversarial")
    info = tmp / "decoderbench_adversarial-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: decoderbench-adversarial\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[decoderbench]\n" + "".join(f"{k} = {v}\n" for k, v in ENTRY_POINTS.items()))
    mp = pytest.MonkeyPatch()
    for p in [tmp, *PATHS]:
        mp.syspath_prepend(str(p))
    out = tmp / "out"
    out.mkdir()
    out.chmod(0o777)
    files = {k: out / k for k in ("pids", "plant", "signals")}
    store = tmp / "store"
    mp.setenv("ADV_STORE", str(store))
    mp.setenv("ADV_PIDFILE", str(files["pids"]))
    mp.setenv("ADV_PLANT", str(files["plant"]))
    mp.setenv("ADV_PIDFILE_SIGNALS", str(files["signals"]))
    mp.setenv("DECODERBENCH_EVAL_KEY", SECRET)
    mp.setenv("DECODERBENCH_PLUGINS", "rug,linear," + ",".join(ENTRY_POINTS))
    mp.setattr("decoderbench.run.worker.harden_harness", lambda: False)  # (it would last for the whole test session)
    scorer = scoring.sample_losses
    plugins.reset()
    _restart_forkserver()  # a forkserver started by an earlier test keeps that test's environment (no ADV_*)
    capsys_out = out / "stdout"
    try:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc_plugins = main(["plugins", "--json"])
            listed = json.loads(buf.getvalue())
        buf = io.StringIO()
        t0 = time.monotonic()
        with contextlib.redirect_stdout(buf):
            rc = main(["run", "--plugins", ",".join(DECODERS), *CELL, "--out", str(store), "--json"])
        capsys_out.write_text(buf.getvalue())
        yield {"rc": rc, "stdout": buf.getvalue(), "rc_plugins": rc_plugins, "listed": listed, "files": files,
               "scorer": scorer, "wall": time.monotonic() - t0, "cost": plugins.discovery_cost(), "store": store,
               "user": worker.worker_user()}
    finally:
        mp.undo()
        plugins.reset()
        _restart_forkserver()  # ... and later tests must not inherit this one's


def _restart_forkserver() -> None:
    """Stop multiprocessing's forkserver (the next worker starts a fresh one from the current environment)."""
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)
    if stop is not None:
        stop()


def _rows(attack) -> dict:
    return {r["decoder"]: r for r in json.loads(attack["stdout"])}


def _honest(attack) -> float:
    rows = _rows(attack)
    return min(rows["relu"]["loss"], rows["linear"]["loss"])


def check_unpickle(attack):
    row = _rows(attack)["adv_unpickle"]
    assert row["status"] == "error" and "not a torch.Tensor" in row["error"], row
    assert not attack["files"]["plant"].exists()


def check_monkeypatch(attack):
    pids = [int(x) for x in attack["files"]["pids"].read_text().split()] if attack["files"]["pids"].exists() else []
    assert os.getpid() not in pids  # its import-time code never ran in the harness (it ran in workers: pids)
    assert pids, "the module was imported nowhere: the attack did not run"
    assert scoring.sample_losses is attack["scorer"]
    row = _rows(attack)["adv_monkeypatch"]
    assert row["status"] == "ok" and row["loss"] >= _honest(attack), row


def check_frames(attack):
    row = _rows(attack)["cheat_frames"]
    assert row["status"] == "ok" and row["loss"] >= _honest(attack) and row["isolated"], row


def check_key(attack):
    row = _rows(attack)["adv_key"]
    assert row["status"] == "ok" and row["eval_stream"].startswith("key-"), row
    assert row["params"]["seen"] == {"os.environ": False, "self": False, "parent": False}, row["params"]


def check_collision(attack):
    assert attack["rc_plugins"] == 1
    errors = [r for r in attack["listed"] if r["kind"] == "collision"]
    assert any("'activations'" in r["error"] and "decoderbench-adversarial==0.1" in r["error"] for r in errors)
    relu = _rows(attack)["relu"]
    assert relu["source"].startswith("decoderbench==") and relu["status"] == "ok" and relu["loss"] > 0
    assert relu["loss"] < _rows(attack)["adv_monkeypatch"]["loss"]  # the real relu, not the impostor's zeros


def check_probe(attack):
    row = _rows(attack)["adv_probe"]
    assert row["status"] == "error" and "on the scored batches" in row["error"], row


def check_overflow(attack):
    row = _rows(attack)["adv_overflow"]
    assert row["status"] in ("ok", "error"), row
    if row["status"] == "ok":
        assert row["loss"] is not None and row["loss"] > 1e70, row


def check_signals(attack):
    rows = _rows(attack)
    # killing its parent (the forkserver) ends the harness's view of the worker (exit 255, an error row); a
    # stopped worker would run into the deadline (a timeout row): either way one row, and its group is killed
    assert rows["adv_signals"]["status"] in ("error", "timeout"), rows["adv_signals"]["error"]
    assert set(rows) == set(DECODERS)  # the run completed with every row
    for name in ("relu", "linear", "faulty_prints", "adv_key", "cheat_frames"):  # scored before and after it
        assert rows[name]["status"] == "ok", rows[name]
    # the attack ran (its decode forked and wrote the grandchild's pid): an error before it would pass vacuously
    assert attack["files"]["signals"].is_file(), f"the attack never ran: {rows['adv_signals']['error']}"
    pids = [int(x) for x in attack["files"]["signals"].read_text().split()]
    assert not survivors(pids)


def check_prints(attack):
    assert attack["rc"] == 1  # error rows: exit 1
    json.loads(attack["stdout"])  # stdout is JSON only
    assert _rows(attack)["faulty_prints"]["status"] == "ok"


def check_privdrop(attack):
    user = attack["user"]
    if user is None:
        pytest.skip("the harness does not run as root: its workers run as its own user (README, Trust)")
    rows = _rows(attack)
    row = rows["adv_privdrop"]
    assert row["status"] == "ok", row  # the attack had no effect: nothing to refuse but the attempts themselves
    got = row["params"]
    who = f"uid={(user.uid,) * 3} gid={(user.gid,) * 3} groups=[]"
    assert got["who"] == who, got  # real, effective and saved ids: unprivileged, and no way back
    assert got["regain_root"] is False and got["no_new_privs"] is True, got
    desc = next(r["description"] for r in attack["listed"] if r["name"] == "adv_privdrop")
    assert desc == f"imported as {who}"  # the describing worker too
    assert got["harness"] == os.getpid(), got  # it found the harness ...
    assert got["processes"]["harness"] == got["processes"]["forkserver"] == \
        {"signal": False, "environ": False, "mem": False, "cwd": False, "sigkill": False}, got["processes"]
    store = attack["store"]
    attempts = dict(got["store"])
    assert attempts.pop("store_files_seen") > 0  # ... and the store (which it may read) ...
    assert attempts == dict.fromkeys(attempts, False), attempts  # ... and could change neither
    assert not any(p.name.startswith("adv_") or p.suffix == ".moved" for p in store.rglob("*"))
    assert store.stat().st_mode & 0o777 == 0o755
    stored = ResultsStore(store, create=False)
    assert stored.problems() == {}
    assert sorted(r["decoder"] for r in stored.rows()) == sorted(DECODERS)
    assert {r["decoder"]: r["loss"] for r in stored.rows() if r["status"] == "ok"} == \
        {k: r["loss"] for k, r in rows.items() if r["status"] == "ok"}
    # its private home: its own, writable, gone after the unit
    assert got["home"] == got["tmpdir"] and os.path.basename(got["home"]).startswith("decoderbench-worker-")
    assert got["home_writable"] and not os.path.exists(got["home"])
    for name in ("relu", "linear"):  # built-ins (run as root, in-process) are untouched
        assert rows[name]["status"] == "ok" and not rows[name]["isolated"], rows[name]


CLASSES = {"output runs code when unpickled": check_unpickle, "module-level monkeypatch of the scorer": check_monkeypatch,
           "frame walk to the scored x": check_frames, "key from env or /proc/*/environ": check_key,
           "name collision with a built-in": check_collision, "entrywise on probe calls, then ctx.encoder": check_probe,
           "finite-overflow outputs": check_overflow, "signals, grandchildren": check_signals,
           "prints on stdout with --json": check_prints,
           "the harness's process and store (root)": check_privdrop}


@pytest.mark.slow
@pytest.mark.parametrize("attack_class", list(CLASSES))
def test_attack_class_gets_its_outcome(attack, attack_class):
    CLASSES[attack_class](attack)


@pytest.mark.slow
def test_third_party_discovery_costs_one_worker_start(attack):
    """Every adversarial entry point was described by one worker for the whole run (not one per unit)."""
    assert attack["cost"]["worker_starts"] == 1, attack["cost"]
