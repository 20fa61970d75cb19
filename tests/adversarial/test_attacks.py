"""Each attack class of ``tests/adversarial`` (see the package docstring's table) against one run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from decoderbench.contract import registry as plugins
from decoderbench.run import scoring
from decoderbench.cli import main

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
PATHS = [HERE / "plugins", TESTS / "faulty" / "decoderbench-cheats", TESTS / "faulty" / "decoderbench-faulty"]
ENTRY_POINTS = {"adv_unpickle": "adv_unpickle", "adv_monkeypatch": "adv_monkeypatch", "adv_key": "adv_key",
                "activations": "adv_impostor", "adv_probe": "adv_probe", "adv_overflow": "adv_overflow",
                "adv_signals": "adv_signals", "adv_frames": "decoderbench_cheats", "adv_prints": "decoderbench_faulty"}
DECODERS = ["relu", "adv_signals", "linear", "adv_unpickle", "adv_monkeypatch", "cheat_frames", "adv_key",
            "adv_probe", "adv_overflow", "faulty_prints"]
SECRET = "adversarial-secret-key"
CELL = ["--ns", "256", "--r", "0.25", "--p", "0.05", "--max-samples", "256", "--device", "cpu", "--timeout", "15"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    """Install the distribution, run every attack once; yields what the checks read."""
    tmp = tmp_path_factory.mktemp("adversarial")
    info = tmp / "decoderbench_adversarial-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: decoderbench-adversarial\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[decoderbench]\n" + "".join(f"{k} = {v}\n" for k, v in ENTRY_POINTS.items()))
    mp = pytest.MonkeyPatch()
    for p in [tmp, *PATHS]:
        mp.syspath_prepend(str(p))
    files = {k: tmp / k for k in ("pids", "plant", "signals")}
    mp.setenv("ADV_PIDFILE", str(files["pids"]))
    mp.setenv("ADV_PLANT", str(files["plant"]))
    mp.setenv("ADV_PIDFILE_SIGNALS", str(files["signals"]))
    mp.setenv("DECODERBENCH_EVAL_KEY", SECRET)
    mp.setenv("DECODERBENCH_PLUGINS", "rug,linear," + ",".join(ENTRY_POINTS))
    mp.setattr("decoderbench.run.worker.harden_harness", lambda: False)  # (it would last for the whole test session)
    scorer = scoring.sample_losses
    plugins.reset()
    _restart_forkserver()  # a forkserver started by an earlier test keeps that test's environment (no ADV_*)
    capsys_out = tmp / "stdout"
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
            rc = main(["run", "--plugins", ",".join(DECODERS), *CELL, "--json"])
        capsys_out.write_text(buf.getvalue())
        yield {"rc": rc, "stdout": buf.getvalue(), "rc_plugins": rc_plugins, "listed": listed, "files": files,
               "scorer": scorer, "wall": time.monotonic() - t0, "cost": plugins.discovery_cost()}
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
    for _ in range(50):
        if not any(_alive(p) for p in pids):
            break
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def check_prints(attack):
    assert attack["rc"] == 1  # error rows: exit 1
    json.loads(attack["stdout"])  # stdout is JSON only
    assert _rows(attack)["faulty_prints"]["status"] == "ok"


CLASSES = {"output runs code when unpickled": check_unpickle, "module-level monkeypatch of the scorer": check_monkeypatch,
           "frame walk to the scored x": check_frames, "key from env or /proc/*/environ": check_key,
           "name collision with a built-in": check_collision, "entrywise on probe calls, then ctx.encoder": check_probe,
           "finite-overflow outputs": check_overflow, "signals, grandchildren": check_signals,
           "prints on stdout with --json": check_prints}


@pytest.mark.slow
@pytest.mark.parametrize("attack_class", list(CLASSES))
def test_attack_class_gets_its_outcome(attack, attack_class):
    CLASSES[attack_class](attack)


@pytest.mark.slow
def test_third_party_discovery_costs_one_worker_start(attack):
    """Every adversarial entry point was described by one worker for the whole run (not one per unit)."""
    assert attack["cost"]["worker_starts"] == 1, attack["cost"]
