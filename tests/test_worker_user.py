"""Where the harness runs as root, a worker that imports third-party code the harness has not imported runs as an
unprivileged user (``nobody``, or ``DECODERBENCH_WORKER_USER``), with a private home; code the harness runs
itself (built-ins, hand-registered classes, entry points named in ``DECODERBENCH_TRUSTED_PLUGINS``) keeps the
harness's user. A plugin that user cannot read is one error naming the folder that stops it. (The attacks on the
harness's process and store from such a worker: tests/adversarial, ``adv_privdrop``.)"""

from __future__ import annotations

import os
import textwrap

import pytest

import decoderbench as db
from decoderbench import api
from decoderbench.cli import main
from decoderbench.contract import registry as plugins
from decoderbench.errors import BadInput
from decoderbench.run import worker
from decoderbench.run.runner import WorkUnit

ROOT_ONLY = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                               reason="the harness does not run as root: its workers keep its user")
CELL = ["--ns", "256", "--r", "0.25", "--p", "0.05", "--max-samples", "256", "--device", "cpu"]

PLUGIN = textwrap.dedent('''
    import os
    import torch
    from decoderbench import Decoder, hookimpl

    class WhoAmI(Decoder):
        """Reports who it runs as, its HOME and TMPDIR, and imports modules of the standard library that the
        forkserver did not preload (the worker must still read the Python environment)."""
        name = "whoami"
        kind = "elementwise"

        def fit(self, train):
            import http.server, wave, xml.dom.minidom  # noqa: F401
            home = os.environ["HOME"]
            if os.getuid():
                open(os.path.join(home, "cache"), "w").close()
            return {"ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()], "groups": os.getgroups(),
                    "home": home, "tmpdir": os.environ.get("TMPDIR")}

        def decode(self, z):
            return z.clamp(min=0)

    @hookimpl
    def decoderbench_register_decoders(register):
        register(WhoAmI)
''')


def _install(where, monkeypatch, name: str = "whoami_plugin"):
    """The plugin above as distribution ``dbt-whoami`` (a .dist-info and a module on sys.path) in ``where``."""
    info = where / "dbt_whoami-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dbt-whoami\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[decoderbench]\nwhoami = {name}\n")
    (where / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(where))
    monkeypatch.setenv("DECODERBENCH_PLUGINS", "activations,rug,whoami")


@pytest.fixture
def fresh_plugins():
    plugins.reset()
    yield
    plugins.reset()


def _row(decoder: str, **guard) -> dict:
    unit = WorkUnit(256, 64, 0.05, decoder, seed=0, min_samples=256, max_samples=256, device="cpu")
    return worker.run_guarded(unit, worker.Guard(**guard))


# ----------------------------------------------------------------------------- who the worker runs as


def _user(monkeypatch, euid: int, value: str | None):
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    if value is None:
        monkeypatch.delenv(worker.WORKER_USER_ENV, raising=False)
    else:
        monkeypatch.setenv(worker.WORKER_USER_ENV, value)
    return worker.worker_user()


def test_the_worker_user_by_harness_user_and_variable(monkeypatch):
    import pwd

    me = os.geteuid()
    nobody = _user(monkeypatch, 0, None)
    assert nobody.uid == (pwd.getpwnam("nobody").pw_uid if "nobody" in {p.pw_name for p in pwd.getpwall()} else 65534)
    assert _user(monkeypatch, 0, "") == nobody  # empty: as unset
    assert _user(monkeypatch, 0, "root") is None  # named: workers keep root (an explicit choice)
    assert _user(monkeypatch, 0, "0") is None
    assert _user(monkeypatch, 0, str(nobody.uid)) == nobody  # a uid works as the name
    assert _user(monkeypatch, 1000, None) is None  # not root: nothing changes
    assert _user(monkeypatch, me, pwd.getpwuid(me).pw_name) is None  # its own user: nothing to change
    with pytest.raises(BadInput, match="names no user"):
        _user(monkeypatch, 0, "no-such-user-of-decoderbench")
    if me != 0:
        monkeypatch.setattr(os, "geteuid", lambda: me)
    other = next(p for p in pwd.getpwall() if p.pw_uid != (me if me != 0 else 1000))
    with pytest.raises(BadInput, match="only a harness running as root"):
        _user(monkeypatch, me if me != 0 else 1000, other.pw_name)


def test_a_variable_that_names_no_user_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv(worker.WORKER_USER_ENV, "no-such-user-of-decoderbench")
    assert main(["run", "--plugins", "relu", *CELL, "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DECODERBENCH_WORKER_USER='no-such-user-of-decoderbench' names no user" in err


# ----------------------------------------------------------------------------- a root harness


@ROOT_ONLY
@pytest.mark.parametrize("as_user", [None, "root"], ids=["default", "root named"])
def test_a_third_party_worker_runs_unprivileged_with_a_private_home(shared_tmp, monkeypatch, fresh_plugins, as_user):
    _install(shared_tmp, monkeypatch)
    if as_user is not None:
        monkeypatch.setenv(worker.WORKER_USER_ENV, as_user)
    user = worker.worker_user()
    row = _row("whoami")
    assert row["status"] == "ok" and row["isolated"] is True, row["error"]
    got = row["params"]
    if as_user == "root":
        assert got["ids"] == [0, 0, 0, 0]
        return
    assert got["ids"] == [user.uid, user.uid, user.gid, user.gid] and got["groups"] == [], got
    assert got["home"] == got["tmpdir"] and os.path.basename(got["home"]).startswith("decoderbench-worker-")
    assert not os.path.exists(got["home"])  # removed with its unit
    plugins.reset()  # and the describing worker's with it
    assert not worker._homes


@ROOT_ONLY
def test_with_workers_too(shared_tmp, monkeypatch, fresh_plugins, capsys):
    """--workers N runs an isolated decoder's worker from the harness (scored on a thread): it drops as well."""
    import json

    _install(shared_tmp, monkeypatch)
    user = worker.worker_user()
    assert main(["run", "--plugins", "whoami,relu", *CELL, "--workers", "2", "--json"]) == 0
    rows = {r["decoder"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["whoami"]["isolated"] and rows["whoami"]["params"]["ids"] == [user.uid, user.uid, user.gid, user.gid]
    assert rows["relu"]["status"] == "ok"


class Local(db.Decoder):
    """Hand-registered (this session's code): with isolate=True it runs in a worker, as the harness's user."""
    name = "local_whoami"
    kind = "elementwise"

    def fit(self, train):
        return {"ids": [os.getuid(), os.geteuid()]}

    def decode(self, z):
        return z.clamp(min=0)


@ROOT_ONLY
def test_code_the_harness_runs_itself_keeps_its_user(shared_tmp, monkeypatch, fresh_plugins):
    """Built-ins, a hand-registered class and an entry point named in DECODERBENCH_TRUSTED_PLUGINS are imported by
    the harness itself (as root): their workers gain nothing by another user, and keep root (the trained
    models' cache under root's home, say)."""
    row = _row("relu", isolate=True)
    assert row["status"] == "ok" and row["isolated"] is True, row["error"]
    rows = api.records(db.evaluate([Local], n_s=256, r=0.25, p=0.05, max_samples=256, device="cpu", isolate=True,
                                   progress=False))
    assert rows[0]["status"] == "ok" and rows[0]["isolated"] and rows[0]["params"]["ids"] == [0, 0], rows[0]
    _install(shared_tmp, monkeypatch)
    monkeypatch.setenv("DECODERBENCH_TRUSTED_PLUGINS", "whoami")
    plugins.reset()
    row = _row("whoami")  # isolated (third-party), but imported here too: trusted
    assert row["status"] == "ok" and row["isolated"] is True and row["params"]["ids"] == [0, 0, 0, 0], row


@ROOT_ONLY
def test_a_plugin_the_worker_cannot_read_is_one_error_naming_the_folder(shared_tmp, monkeypatch, fresh_plugins,
                                                                        capsys):
    private = shared_tmp / "private"
    private.mkdir(mode=0o700)
    _install(private, monkeypatch)
    assert main(["plugins", "--json"]) == 1
    out = capsys.readouterr().out
    want = f"its worker runs as nobody (uid 65534, since the harness runs as root) and cannot read {private} " \
           "(mode 0700, owner root): make it and the folders above it readable by other users"
    assert want in out, out
    assert main(["run", "--plugins", "whoami,relu", *CELL, "--json"]) == 1
    rows = {r["decoder"]: r for r in __import__("json").loads(capsys.readouterr().out)}
    assert rows["whoami"]["status"] == "error" and want in rows["whoami"]["error"], rows["whoami"]
    assert rows["relu"]["status"] == "ok"


@ROOT_ONLY
def test_the_decoders_worker_checks_too(shared_tmp, monkeypatch, fresh_plugins):
    """Described while readable, unreadable when its unit runs: the unit's worker names the folder (before it
    imports anything of the plugin)."""
    where = shared_tmp / "site"
    where.mkdir(mode=0o755)
    _install(where, monkeypatch)
    assert plugins.described(plugins.get_decoder("whoami")) is not None
    where.chmod(0o700)
    row = _row("whoami")
    assert row["status"] == "error" and row["error"].startswith("CannotRead: plugin 'whoami' failed to load: its "
                                                                f"worker runs as nobody"), row["error"]
    assert f"cannot read {where} (mode 0700, owner root)" in row["error"]


def test_a_store_is_writable_and_lockable_by_its_owner_only_whatever_the_umask(tmp_path):
    """A dropped worker may read the store, but neither write in it nor hold a claim (flock needs only a
    descriptor opened for reading), even where the harness runs with umask 0."""
    from decoderbench.results.store import ResultsStore

    old = os.umask(0)
    try:
        store = ResultsStore(tmp_path / "store")
        lock = store.claim("0" * 64)
        lock.release()
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "store", *(tmp_path / "store").rglob("*")]}
    assert all(m & 0o002 == 0 for m in modes.values()), modes
    assert all(m & 0o007 == 0 for name, m in modes.items() if name.endswith(".lock")), modes


def test_which_folders_let_another_user_change_a_store(tmp_path):
    """store_exposed_to, from the folders' modes and owners alone (so it runs as any user): the store's own
    folders must not be writable by that user; a folder above it must not be, unless sticky (as /tmp)."""
    stranger = worker.WorkerUser("stranger", 4242, 4242)
    base = tmp_path / "base"
    store = base / "store"
    (store / "rows").mkdir(parents=True)
    for p in (base, store, store / "rows"):
        p.chmod(0o755)
    assert worker.store_exposed_to(store, stranger) is None
    assert worker.store_exposed_to(base / "not-made-yet", stranger) is None
    (store / "rows").chmod(0o777)
    assert worker.store_exposed_to(store, stranger).startswith(f"{store / 'rows'} (mode 0777")
    (store / "rows").chmod(0o755)
    store.chmod(0o775)  # group-writable: only a user of that group
    assert worker.store_exposed_to(store, stranger) is None
    assert worker.store_exposed_to(store, worker.WorkerUser("g", 4242, store.stat().st_gid)) is not None
    store.chmod(0o755)
    base.chmod(0o777)  # above the store: it could rename the store away
    assert worker.store_exposed_to(store, stranger).startswith(f"{base} (mode 0777")
    assert worker.store_exposed_to(base / "not-made-yet", stranger).startswith(f"{base} (mode 0777")
    base.chmod(0o1777)  # sticky: it may not rename what it does not own
    assert worker.store_exposed_to(store, stranger) is None
    link = tmp_path / "link"
    link.symlink_to(store)
    base.chmod(0o777)
    assert worker.store_exposed_to(link, stranger).startswith(f"{base} (mode 0777")  # the real path counts
    base.chmod(0o755)
    mine = worker.WorkerUser("owner", store.stat().st_uid, 4242)
    assert worker.store_exposed_to(store, mine).startswith(f"{store / 'rows'} (mode 0755")  # its own folders


@ROOT_ONLY
def test_a_root_run_refuses_a_store_its_workers_could_change(shared_tmp, monkeypatch, fresh_plugins, capsys):
    """With a third-party entry point installed, a root run into a store that nobody could change is one line,
    exit 2, before anything runs or the store is made; a sticky folder above it, or workers kept root, are fine."""
    _install(shared_tmp, monkeypatch)
    open_ = shared_tmp / "open"
    open_.mkdir()
    open_.chmod(0o777)
    args = ["run", "--plugins", "relu", *CELL, "--json", "--out"]
    assert main([*args, str(open_ / "store")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"results store {open_ / 'store'}: third-party decoders' workers run as nobody (uid 65534) (the " \
           f"harness runs as root) and could change the store through {open_} (mode 0777, owner root)" in err
    assert not (open_ / "store").exists()
    open_.chmod(0o1777)
    assert main([*args, str(open_ / "store")]) == 0
    (open_ / "store").chmod(0o777)  # a store made before, opened up since
    assert main([*args, str(open_ / "store")]) == 2
    assert f"through {open_ / 'store'} (mode 0777, owner root)" in capsys.readouterr().err
    monkeypatch.setenv(worker.WORKER_USER_ENV, "root")  # its workers keep root: nobody runs anything
    assert main([*args, str(open_ / "store")]) == 0
    monkeypatch.delenv(worker.WORKER_USER_ENV)
    monkeypatch.setenv("DECODERBENCH_PLUGINS", "activations,rug")  # no third-party code: nothing runs as nobody
    plugins.reset()
    assert main([*args, str(open_ / "store")]) == 0
