"""Adversarial third-party plugins, one per attack class of issue 22, and the outcome each must get.

``plugins/`` holds the plugin modules; ``test_attacks.py`` installs them as one distribution
(``decoderbench-adversarial``, a ``.dist-info`` on ``sys.path`` in a folder other users can read: entry points,
nothing copied), runs them in one ``decoderbench run --json --out STORE`` with a secret ``DECODERBENCH_EVAL_KEY``
and default isolation beside ``relu`` and ``linear`` (n_s = 256, 256 samples), and checks each class. Two classes
reuse the installable fault packages of ``tests/faulty`` (``cheat_frames`` of decoderbench-cheats,
``faulty_prints`` of decoderbench-faulty).

==============================================  ==================  ==============================================
attack class                                    plugin              outcome (this branch)
==============================================  ==================  ==============================================
output that runs code when unpickled            adv_unpickle        error row ("not a torch.Tensor"); the
                                                                    payload never runs anywhere
module-level monkeypatch of the scorer          adv_monkeypatch     never imported in the harness (its pid file
(at import and in the registration hook)                            never holds the harness's pid);
                                                                    ``scoring.sample_losses`` untouched; its
                                                                    loss not below relu's; relu's row unchanged
frame walk to the scored x                      cheat_frames        loss not below the honest decoders' (the
                                                                    worker holds no x)
key from os.environ or /proc/*/environ          adv_key             it sees the key in none of os.environ,
                                                                    /proc/self/environ, /proc/<ppid>/environ;
                                                                    the rows are scored on the keyed stream
name collision with a built-in                  activations =       refused alone, never imported; ``plugins``
(entry point ``activations``, decoder relu)     adv_impostor        exits 1 naming it; relu is the built-in
entrywise on probe calls only, then             adv_probe           error row ("does not act on each entry alone
``ctx.encoder``                                                     on the scored batches")
finite overflow (3e38) outputs                  adv_overflow        no ok row with a non-finite or null loss: a
                                                                    finite loss far above relu's, or an error row
killing its parent, a grandchild holding the    adv_signals         error row (same user: its parent, the forkserver,
pipe, SIGSTOP of itself                                             dies) or timeout row (root harness: the kill is
                                                                    refused, the SIGSTOP runs into the deadline);
                                                                    the run completes, every other row intact (later
                                                                    isolated rows included); the grandchild dies
                                                                    with the unit
prints on stdout with ``--json``                faulty_prints       stdout is JSON only, its row is ok
the harness from its worker (a root harness):   adv_privdrop        (skipped where the harness is not root) it runs
find it (parent chain in /proc) and its store,                      as nobody: real, effective and saved uid and gid,
then create, overwrite, rename, delete files                        no groups, in the describing worker too; every
of the store, flock a lock file, chmod it,                          attempt fails (it may read the store); the store
mkdir in it; signal the harness and the                             holds every row, valid, nothing added, still
forkserver; read their ``/proc/<pid>/environ``,                     0755; its row is ok; its private HOME/TMPDIR
``mem``, ``cwd``; setuid(0)                                         was writable and is gone after its unit
==============================================  ==================  ==============================================

What this does not cover, and the README's Trust section states: a worker of the same (non-root) user can still
signal the harness itself if it finds its pid, leave its process group with its own ``setsid``, and write to the
results store; a worker dropped to ``nobody`` can still do what ``nobody`` may (read files all may read, the
store's rows included; write to ``/tmp``; signal other processes of ``nobody``, such as concurrent workers; leave
its process group).
"""
