"""Adversarial third-party plugins, one per attack class of issue 22, and the outcome each must get.

``plugins/`` holds the plugin modules; ``test_attacks.py`` installs them as one distribution
(``decoderbench-adversarial``, a ``.dist-info`` on ``sys.path``: entry points, nothing copied), runs them in one
``decoderbench run --json`` with a secret ``DECODERBENCH_EVAL_KEY`` and default isolation beside ``relu`` and
``linear`` (n_s = 256, 256 samples), and checks each class. Two classes reuse the installable fault packages
of ``tests/faulty`` (``cheat_frames`` of decoderbench-cheats, ``faulty_prints`` of decoderbench-faulty).

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
killing its parent, a grandchild holding the    adv_signals         error (or timeout) row; the run completes, every other
pipe, SIGSTOP of itself                                             row intact (later isolated rows included);
                                                                    the grandchild dies with the unit
prints on stdout with ``--json``                faulty_prints       stdout is JSON only, its row is ok
==============================================  ==================  ==============================================

What this does not cover, and the README's Trust section states: a worker of the same (non-root) user can still
signal the harness itself if it finds its pid, leave its process group with its own ``setsid``, and write to the
results store.
"""
