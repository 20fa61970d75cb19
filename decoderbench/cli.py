"""The command line: parse, call, print. Nothing here computes.

Bad input (``decoderbench.errors.BadInput``, and only it) prints one line ``error: ...`` to stderr and
exits 2, with no traceback; any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import json
import math
import sys

import click

from .errors import BadInput
from ._version import __version__
from .api import BOARD_SUBDIR, DEFAULT_RESULTS, ROW_COLUMNS, default_board_dir, plugin_problems as _plugin_problems
from ._validate import SAMPLING_DEFAULTS, check_nd, check_ns, check_p, check_seed, nd_from_r


def _floats(name: str, text: str) -> list[float]:
    """The numbers of a comma-separated option, each as typed: ``1000`` stays the integer 1000 (so that an
    error echoes "got 1000", not "got 1000.0"), ``0.25`` or ``1e3`` a float."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(part) if part.lstrip("+-").isdigit() else float(part))
        except ValueError:
            raise BadInput(f"{name} must be a comma-separated list of numbers, got {text!r}") from None
    if not out:
        raise BadInput(f"{name} must list at least one value, got {text!r}")
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        if v == 0 or not math.isfinite(v):
            return str(v)
        return f"{v:.6g}"
    return str(v)


def _table(rows: list[dict], cols: list[str]) -> str:
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


_plugin_commands: dict | None = None


def plugin_commands() -> dict:
    """Sub-commands registered by plugins (hook ``decoderbench_register_commands``), by name; loaded on first use.

    A plugin whose registration fails, or that offers a taken name or a non-command, is reported on stderr."""
    global _plugin_commands
    if _plugin_commands is None:
        from .contract import registry as plugins

        found: dict = {}
        caller = plugins.get_plugin_manager().hook.decoderbench_register_commands
        for impl in caller.get_hookimpls():
            def register(cmd, _plugin=impl.plugin_name):
                if not isinstance(cmd, click.Command) or not cmd.name:
                    raise ValueError(f"a command must be a named click.Command, got {cmd!r}")
                if cmd.name in cli.commands or cmd.name in found:
                    raise ValueError(f"command name {cmd.name!r} is already taken")
                found[cmd.name] = cmd

            try:
                impl.function(register=register)
            except Exception as exc:  # one broken plugin costs only its commands
                click.echo(f"broken plugin: {impl.plugin_name!r} failed to register commands: "
                           f"{type(exc).__name__}: {exc}", err=True)
        _plugin_commands = found
    return _plugin_commands


class _Group(click.Group):
    """The built-in commands, then the plugins' (looked up only when a name is not built in, or for --help)."""

    def get_command(self, ctx, name):
        return super().get_command(ctx, name) or plugin_commands().get(name)

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(plugin_commands()))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="decoderbench")
def cli():
    """decoderbench: how good is a sparse decoder, against exact theory."""


def _cells(ns: str, r: str | None, nd: str | None, p: str) -> list[tuple[int, int, float]]:
    if r is not None and nd is not None:
        raise BadInput("--r and --nd: give one of them, not both")
    out = []
    for n_s in _floats("--ns", ns):
        n_s = check_ns(n_s)
        if nd is not None:
            n_ds = [check_nd(v, n_s) for v in _floats("--nd", nd)]
        else:
            n_ds = [nd_from_r(n_s, v) for v in _floats("--r", r if r is not None else "0.25")]
        for n_d in n_ds:
            for pv in (float(v) for v in _floats("--p", p)):
                out.append((n_s, n_d, check_p(pv)))
    return out


@cli.command()
@click.option("--ns", default="4096", show_default=True, help="n_s, the number of sparse features (power of two).")
@click.option("--r", "r", default=None, help="Compression ratio r = n_d/n_s in (0, 1) [default: 0.25].")
@click.option("--nd", default=None, help="n_d instead of --r.")
@click.option("--p", "p", default="0.045", show_default=True, help="Sparsity p in (0, 1].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--exact", is_flag=True,
              help="Also the exact finite-size references of the rug of --seed (no Gaussian assumption): "
                   "mmse_elementwise_exact, e2_bound_exact, relu_theory_exact (characteristic function + FFT).")
@click.option("--seed", default="0", show_default=True, help="With --exact: the seed of the rug.")
def theory(ns, r, nd, p, as_json, exact, seed):
    """Print the exact per-cell theory (quadrature, no sampling)."""
    from .model.theory import cell_theory

    cells = _cells(ns, r, nd, p)
    results = [cell_theory(*c) for c in cells]
    if exact:
        from .model.exact import exact_references

        s = check_seed(_floats("--seed", seed)[0] if str(seed).strip() else seed)
        results = [{**t, **exact_references(t["n_s"], t["n_d"], t["p"], seed=s)} for t in results]
    if as_json:
        click.echo(json.dumps(results[0] if len(results) == 1 else results, indent=None))
        return
    for t in results:
        click.echo(f"cell n_s={t['n_s']} n_d={t['n_d']} r={t['r']:.6g} p={t['p']:.6g}")
        rows = [{"quantity": k, "value": v} for k, v in t.items() if k not in ("n_s", "n_d", "r", "p")]
        click.echo(_table(rows, ["quantity", "value"]))
        click.echo("")


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def plugins_cmd(as_json):
    """List every registered decoder and encoder with its kind and source."""
    from .contract import registry as plugins
    from .contract.options import describe, describe_text
    from .run.worker import worker_user

    worker_user()  # a DECODERBENCH_WORKER_USER naming no user: one line, exit 2 (as run)

    def options_of(d):  # a described third-party decoder: what its worker reported (its code is not imported)
        desc = plugins.described(d)
        if desc is not None:
            return desc.get("options"), str(desc.get("options_text") or "?")
        return (describe(d.cls) if getattr(d.cls, "Options", None) is not None else None), describe_text(d.cls)

    rows = [{"name": d.name, "kind": d.kind, "source": d.source, "plugin": d.plugin, "version": d.version,
             "requires": sorted(d.cls.requires), "description": d.cls.description,
             "options": options_of(d)[0], "options_text": options_of(d)[1]}
            for d in plugins.decoders().values()]
    enc = [{"name": e.name, "kind": "encoder", "source": e.source, "plugin": e.plugin, "version": e.version,
            "capabilities": sorted(e.cls.capabilities),
            "description": (e.cls.__doc__ or "").strip().split("\n")[0]}
           for e in plugins.encoders().values()]
    errors = plugins.failures()
    clashes = plugins.collisions()
    problems = _plugin_problems()
    if as_json:
        out = [{k: v for k, v in d.items() if k != "options_text"} for d in rows] + enc
        out += [{"name": k, "kind": "error", "source": None, "error": v} for k, v in errors.items()]
        out += [{"name": k, "kind": "collision", "source": None, "error": m} for k, msgs in clashes.items() for m in msgs]
        click.echo(json.dumps(out))
    else:
        # a decoder's requirements (encoder capabilities it needs) and an encoder's capabilities, each named so
        shown = [{**d, "requires": ", ".join(d["requires"]) or "-"} for d in rows]
        click.echo(_table(shown, ["name", "kind", "source", "requires", "description"]))
        click.echo("\noptions (name=default; ? = not declared, checked by the decoder itself):")
        click.echo(_table(shown, ["name", "options_text"]).replace("options_text", "options     ", 1))
        click.echo("\nencoders:")
        click.echo(_table([{**e, "capabilities": ", ".join(e["capabilities"]) or "-"} for e in enc],
                          ["name", "source", "capabilities", "description"]))
    for line in problems:
        click.echo(line, err=True)
    for r in plugins._remote:  # third-party commands need their code imported here: only when trusted
        cmds = (plugins._descriptions.get(plugins._key(r)) or {}).get("commands") or []
        if cmds:
            click.echo(f"note: commands {', '.join(map(str, cmds))} of plugin {r['name']!r} ({r['dist']}) are not "
                       f"loaded: third-party code is not imported here ({plugins.TRUSTED_ENV}={r['name']} loads them)",
                       err=True)
    return 1 if problems else 0  # something is broken: say so in the exit code


DEFAULT_LEADERBOARDS = "leaderboards"  # where the committed boards live (written only when --out names it)


def _command_line(ctx: click.Context) -> str:
    """The command as typed, normalised: the sub-command and the options given (not their defaults)."""
    parts = ["decoderbench", ctx.info_name or ""]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) in (None, click.core.ParameterSource.DEFAULT):
            continue
        value = ctx.params.get(param.name)
        opt = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            if value:
                parts.append(opt)
        elif value is not None:
            text = str(value)
            parts += [opt, text if text and all(c.isalnum() or c in "-_.,/:=+" for c in text) else json.dumps(text)]
    return " ".join(parts)


#: Public names, for commands that plugins register: the numbers of a comma-separated option, a plain-text table
#: of row dicts, and the command as typed (what a board's header records).
parse_floats = _floats
table = _table
command_line = _command_line


def _grid_from_options(grid_spec, ns, r, nd, p, seed, encoder, dtype, target_se, min_samples, max_samples):
    """The grid a `run`/`leaderboard` invocation means (api.build_grid), and whether it is an ad-hoc one."""
    from .api import build_grid

    return build_grid(grid_spec, n_s=None if ns is None else _floats("--ns", ns),
                      r=None if r is None else [float(v) for v in _floats("--r", r)],
                      n_d=None if nd is None else _floats("--nd", nd),
                      p=None if p is None else [float(v) for v in _floats("--p", p)],
                      seeds=None if seed is None else _floats("--seed", seed), encoder=encoder, dtype=dtype,
                      target_se=target_se, min_samples=min_samples, max_samples=max_samples)


def _cell_options(f):
    """The options that choose cells, shared by `run` and `leaderboard`."""
    for deco in reversed([
        click.option("--grid", "grid_spec", default=None,
                     help="A built-in grid (default, paper-fig2, paper-fig15) or a grid FILE.toml "
                          "[default: the default grid, unless cells are given with --ns/--r/--nd/--p]."),
        click.option("--ns", default=None, help="n_s list (powers of two); with --grid, replaces the grid's.  "
                                                "[ad-hoc default: 4096]"),
        click.option("--r", "r", default=None, help="r list in (0, 1); with --grid, replaces the grid's. "
                                                    "[ad-hoc default: 0.25]"),
        click.option("--nd", default=None, help="n_d list instead of --r."),
        click.option("--p", "p", default=None, help="p list in (0, 1]; with --grid, replaces the grid's. "
                                                    "[ad-hoc default: 0.045]"),
        click.option("--seed", default=None, help="Seed list (non-negative integers) [default: the grid's, or 0]."),
        click.option("--encoder", default=None, help="Encoder name (see `decoderbench plugins`) [default: rug]."),
        click.option("--dtype", default=None, type=click.Choice(["float32", "float64"]),
                     help="[default: the grid's, or float32]"),
    ]):
        f = deco(f)
    return f


@cli.command()
@click.option("--decoders", "--plugins", "plugin_spec", default=None,
              help="Decoders to score: 'all' or a comma-separated list of names [default: the grid's, or all]. "
                   "--plugins is the same option (its older name).")
@_cell_options
@click.option("--device", default="auto", show_default=True,
              help="auto (a GPU when torch sees one), cpu or cuda; the resolved device is part of each row's key.")
@click.option("--target-se", default=None, type=float,
              help="Stop sampling when the standard error is below this fraction of the loss "
                   f"[default: the grid's, ad-hoc {SAMPLING_DEFAULTS['target_rel_se']}].")
@click.option("--min-samples", default=None, type=int, help="Least number of evaluation samples [default: the grid's].")
@click.option("--max-samples", default=None, type=int, help=f"Cap on evaluation samples [default: the grid's, ad-hoc {SAMPLING_DEFAULTS['max_samples']}].")
@click.option("--out", default=None,
              help=f"Results store directory [default: {DEFAULT_RESULTS}/ for grid runs; ad-hoc cells (--ns/--r/--p "
                   "without --grid) are stored only when --out is given].")
@click.option("--force", is_flag=True, help="Recompute rows the store already holds.")
@click.option("--leaderboard", "board_dir", default=None,
              help="Also write the grid's leaderboard tables into this folder [default: none; the run writes rows "
                   "to its store only, and `decoderbench leaderboard` makes tables, figures and the site].")
@click.option("--no-summary", is_flag=True, help="Do not print the summary table at the end.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON list (and nothing else on stdout).")
@click.option("--isolate/--no-isolate", "isolate", default=None,
              help="Run every decoder in a guarded worker process (--isolate) or none (--no-isolate) "
                   "[default: third-party decoders only].")
@click.option("--timeout", "timeout_s", default=None,
              help="Per-unit time limit in seconds; a unit past it becomes a `timeout` row [default: the grid's "
                   "[timeout], else 3600].")
@click.option("--memory-limit", "memory_mb", default=None,
              help="Address-space limit (MB) of each isolated decoder's worker process [default: none].")
@click.option("--executor", "executor_kind", default="local", show_default=True,
              help="local (this machine) or ray (Ray tasks; pip install -e \".[ray]\").")
@click.option("--workers", default="1", show_default=True,
              help="local executor: units run at once, each in its own process (1: in this process).")
@click.option("--address", default=None, help="ray executor: address of an existing Ray cluster [default: a local one].")
@click.option("--threads", default="auto", show_default=True,
              help="torch threads of the run (auto: the cores not busy now, from the load average); every row "
                   "records the count it ran with (column threads).")
@click.pass_context
def run(ctx, plugin_spec, grid_spec, ns, r, nd, p, seed, encoder, dtype, device, target_se, min_samples, max_samples,
        out, force, board_dir, no_summary, as_json, isolate, timeout_s, memory_mb, executor_kind, workers, address,
        threads):
    """Score decoders on a grid of cells against the theory, storing every row in a results store.

    Re-running the same command computes only the rows the store lacks (or whose last attempt failed).
    """
    from pathlib import Path

    import torch

    from . import api
    from .board import leaderboard
    from .contract import registry as plugins
    from .model.evalkey import configured

    api.check_execution(timeout_s, memory_mb, executor_kind, workers)  # a bad one is refused before anything runs
    before = torch.get_num_threads()
    torch.set_num_threads(api.check_threads(threads))
    ctx.call_on_close(lambda: torch.set_num_threads(before))  # the run's setting ends with it

    if configured():  # a secret stream: no worker of this user may read this process's environment or memory
        from .run.worker import harden_harness

        harden_harness()
    grid, adhoc = _grid_from_options(grid_spec, ns, r, nd, p, seed, encoder, dtype, target_se, min_samples,
                                     max_samples)
    if isolate is False:  # --no-isolate asked for: third-party plugins are imported in this process (documented)
        plugins.trust_in_process()
    plugins.get_encoder(grid.encoder)
    spec = plugin_spec if plugin_spec is not None else (grid.plugins if isinstance(grid.plugins, str)
                                                        else ",".join(grid.plugins))
    regs = api.select_decoders(spec)
    store_dir = out if out is not None else (None if adhoc else DEFAULT_RESULTS)
    # every check (execution options, encoder, decoder options) before anything runs or a store is made
    plan = api.prepare(regs, grid, adhoc=adhoc, device=device, isolate=isolate, timeout=timeout_s,
                       memory_limit=memory_mb, executor=executor_kind, workers=workers, address=address,
                       store=store_dir)
    for line in plan.problems:  # broken plugins and refused names, on every run
        click.echo(line, err=True)
    names, dev, units = plan.names, plan.device, plan.units
    command = _command_line(ctx)
    n_cells = len(grid.cells())
    if not as_json:
        click.echo(f"grid {grid.name}: {n_cells} cells x {len(grid.seeds)} seeds x {len(names)} decoders = "
                   f"{len(units)} rows on {dev}" + (f", store {store_dir}/" if store_dir is not None else ""),
                   err=True)
        if units:
            from .model.hadamard import describe_backend

            u = units[0]
            click.echo(f"transform: {describe_backend(u.device, u.dtype, u.n_s)}", err=True)
    progress = False if as_json else (True if sys.stderr.isatty() else "lines")  # a log gets plain lines
    from .run.worker import stdout_to_stderr

    with stdout_to_stderr():  # a decoder's prints go to stderr: stdout is the command's own (JSON with --json)
        result = api.execute(plan, command=command, force=force, progress=progress)
    res, store = result.sweep, result.store
    rows = res.rows
    if store is not None:
        _report_bad_rows(result.bad_before, result.bad_after)
    board_files = None
    if store is not None and board_dir is not None:  # only where asked: a run writes rows to its store only
        # the grid's leaderboard: every stored row of its cells, not only the decoders of this run
        files = leaderboard.render(api.grid_rows(store, grid), title=f"decoderbench leaderboard: grid {grid.name}",
                                   command=command)
        board_files = leaderboard.write_files(files, Path(board_dir))
    if as_json:
        click.echo(json.dumps([{k: v for k, v in row.items() if k != "traceback"} for row in rows]))
    else:
        if adhoc:
            click.echo(_table(rows, ROW_COLUMNS))
        if not no_summary:
            click.echo(("\n" if adhoc else "") + leaderboard.summary_text(rows))
        seen = set()
        for row in rows:  # failures one line each; skipped rows grouped by reason
            if row["status"] in ("error", "timeout") and (row["decoder"], row["error"]) not in seen:
                seen.add((row["decoder"], row["error"]))
                click.echo(f"{row['decoder']}: {row['status']}: {row['error']}", err=True)
        skipped: dict = {}
        for row in rows:
            if row["status"] == "skipped":
                reason = str(row["error"] or "").replace(row["decoder"], "<decoder>", 1)
                skipped.setdefault(reason, []).append(row["decoder"])
        for reason, decs in sorted(skipped.items()):
            names = sorted(set(decs))
            click.echo(f"skipped {len(decs)} row(s) of {', '.join(names)}: {reason.replace('<decoder>', 'it')}",
                       err=True)
        click.echo(res.counts_line + (f"; rows in {store_dir}/" if store is not None else ""), err=True)
        if store is not None:
            again = [f"--grid {grid_spec}"] if grid_spec is not None else []
            again += [f"--{k} {v}" for k, v in (("ns", ns), ("r", r), ("nd", nd), ("p", p), ("seed", seed),
                                                 ("encoder", encoder), ("dtype", dtype)) if v is not None]
            if not again:
                again = [f"--grid {grid.name}"]
            if board_files:
                click.echo(f"tables: {', '.join(str(f) for f in board_files)}", err=True)
            res_opt = "" if store_dir == DEFAULT_RESULTS else f" --results {store_dir}"
            click.echo(f"the board (tables, figures, site): decoderbench leaderboard{res_opt} {' '.join(again)} "
                       f"--html  (writes into {default_board_dir(store_dir, grid.name)}/)", err=True)
    return 1 if any(row["status"] in ("error", "timeout") for row in rows) else 0


def _report_bad_rows(bad_before: dict, bad_after: dict) -> None:
    """Say which row files failed validation: recomputed by this run, or still bad (not rows of this run)."""
    fixed = sorted(set(bad_before) - set(bad_after))
    if fixed:
        click.echo(f"store: recomputed {len(fixed)} row file(s) that failed validation: "
                   + "; ".join(f"{f} ({bad_before[f]})" for f in fixed[:5]) + (" ..." if len(fixed) > 5 else ""),
                   err=True)
    if bad_after:
        items = sorted(bad_after.items())
        click.echo(f"store: {len(items)} row file(s) fail validation and are not rows of this run; `decoderbench "
                   "leaderboard` refuses the store until they are recomputed (by the command that made them) or "
                   "deleted: " + "; ".join(f"{f}: {why}" for f, why in items[:5]) + (" ..." if len(items) > 5 else ""),
                   err=True)


@cli.command("leaderboard")
@click.option("--results", default=DEFAULT_RESULTS, show_default=True, help="The results store to read.")
@click.option("--out", default=None,
              help=f"Where to write the tables, figures and site [default: inside the store, <results>/{BOARD_SUBDIR}/"
                   "<grid name> with --grid or cell options, else <results>/board/all]. Nothing is written into "
                   "the checkout unless --out names a folder there.")
@_cell_options
@click.option("--no-figures", is_flag=True, help="Write the tables only.")
@click.option("--html", "as_html", is_flag=True,
              help="Also write a static site into <out>/site/ (open site/index.html; no server, no network): "
                   "sortable tables, figures, each row's parameters, versions and command.")
@click.option("--quiet", is_flag=True, help="Do not print the tables.")
@click.pass_context
def leaderboard_cmd(ctx, results, out, grid_spec, ns, r, nd, p, seed, encoder, dtype, no_figures, as_html, quiet):
    """Markdown tables and figures from a results store: per cell, and a summary across cells.

    With --grid (and the same --ns/--r/--p overrides as `run`) only that grid's cells are used;
    otherwise every row of the store. Where the store holds several rows of one (cell, decoder, seed),
    the latest is used. Rows that stopped on a time, step or iteration cap, or missed their precision
    target, are listed in their own section and ranked nowhere. The rows used are written beside the
    tables (rows.json), so that a board can be checked against the rows it was made from.
    """
    from pathlib import Path

    from . import api

    store = api.read_store(results)
    rows = store.rows()
    title = f"decoderbench leaderboard: store {results} (all rows)"
    grid_name = None
    if grid_spec is not None or any(v is not None for v in (ns, r, nd, p, seed, encoder, dtype)):
        grid, _ = _grid_from_options(grid_spec, ns, r, nd, p, seed, encoder, dtype, None, None, None)
        rows = api.grid_rows(store, grid)
        title = f"decoderbench leaderboard: grid {grid.name}"
        grid_name = grid.name
    out_dir = Path(out) if out is not None else default_board_dir(results, grid_name)
    if not rows:
        raise BadInput(f"--results {results}: the store holds no rows for the cells asked for")
    board = api.Board(rows, title=title, command=_command_line(ctx))
    written = board.write(out_dir, figures=not no_figures, html=as_html)
    if grid_name == "scaling":  # the thermodynamic-limit table and figure beside the board
        from .board import scaling
        written += scaling.write_board(rows, out_dir, _command_line(ctx), grid, figures=not no_figures)
    if not quiet:
        files = board.files(figure=not no_figures)
        click.echo(files["cells.md"])
        click.echo(files["summary.md"])
    click.echo(f"wrote {', '.join(str(w) for w in written)}", err=True)
    return 0


@cli.command("verify")
@click.option("--results", default=DEFAULT_RESULTS, show_default=True, help="The results store to check.")
@click.option("--sample", "fraction", default="1", show_default=True,
              help="Fraction of the store's rows to recompute, in (0, 1] (a seeded random sample; 1: all).")
@click.option("--seed", "sample_seed", default="0", show_default=True, help="Seed of the sample of rows.")
@click.option("--isolate/--no-isolate", "isolate", default=None,
              help="As for `run` [default: third-party decoders in a worker process].")
@click.option("--timeout", "timeout_s", default=None, help="Per-row time limit in seconds [default: 3600].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per row checked, as a list.")
def verify_cmd(results, fraction, sample_seed, isolate, timeout_s, as_json):
    """Recompute a sample of a store's rows and report, row by row, whether each reproduces bit for bit.

    Runs are deterministic on CPU (same command, seed and device: same numbers), so a stored row that
    does not reproduce was computed elsewhere (another device, decoder version, backend) or edited.
    Exit 0 when every checked row reproduces, 1 otherwise.
    """
    from . import api

    api.check_fraction(fraction)
    seed_v = check_seed(_floats("--seed", sample_seed)[0]) if str(sample_seed).strip() else 0
    if timeout_s is not None:
        from .run.worker import check_timeout

        timeout_s = check_timeout(timeout_s, "--timeout")
    store = api.read_store(results)
    from .run.worker import stdout_to_stderr

    with stdout_to_stderr():  # the recomputed decoders' prints go to stderr
        report, n_keys = api.verify_rows(store, fraction, seed=seed_v, isolate=isolate, timeout=timeout_s)
    counts = {}
    for e in report:
        counts[e["verdict"]] = counts.get(e["verdict"], 0) + 1
    if as_json:
        click.echo(json.dumps(report))
    else:
        for e in report:
            cell = (f"{e.get('decoder')} n_s={e.get('n_s')} n_d={e.get('n_d')} p={e.get('p')} seed={e.get('seed')}"
                    if e.get("decoder") else "")
            click.echo(f"{e['verdict']:<10} {e['file']}  {cell}" + (f"  ({e['detail']})" if e.get("detail") else ""))
    click.echo(f"verify: {len(report)} of {n_keys} rows checked: "
               + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), err=True)
    return 0 if all(e["verdict"] in ("reproduced", "not-ok") for e in report) else 1


@cli.command("new-plugin")
@click.argument("name")
@click.option("--kind", default="elementwise", show_default=True,
              help="elementwise, filtering, reference, iterative or learned.")
@click.option("--dir", "parent", default=".", show_default=True, help="Where to write the distribution folder.")
def new_plugin_cmd(name, kind, parent):
    """Write a ready plugin distribution: pyproject.toml with the entry point, a working decoder of the kind
    (its contract in comments) and a test; `pip install -e` it and it runs like a built-in."""
    from .template import names_for, write_plugin

    folder = write_plugin(name, kind, parent)
    n = names_for(name)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        click.echo(str(f))
    click.echo(f"next: pip install -e {folder} && decoderbench run --plugins {name},relu --ns 1024 "
               f"&& python -m pytest {folder}/tests  (entry point {n['ep']} = {n['module']})", err=True)
    return 0


@cli.command("unrolled")
@click.option("--ns", default="1024", show_default=True, help="n_s (a power of two).")
@click.option("--r", default="0.25", show_default=True, help="Compression ratio n_d / n_s.")
@click.option("--p", default="0.045", show_default=True, help="Feature density.")
@click.option("--iters", default=",".join(str(t) for t in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)), show_default=True,
              help="Iteration counts t (max_iter = t, tol = 0), comma-separated.")
@click.option("--decoders", default="vamp,amp", show_default=True, help="Among vamp, amp.")
@click.option("--seed", default="0", show_default=True)
@click.option("--max-samples", default="1024", show_default=True, help="Samples per row at most.")
@click.option("--results", default=None, help="A results store to reuse and add the rows to [default: none].")
@click.option("--out", default=None,
              help="Folder for unrolled.md and unrolled.png (+ .svg) [default: <results>/board/unrolled, "
                   "results/ without --results].")
@click.pass_context
def unrolled_cmd(ctx, ns, r, p, iters, decoders, seed, max_samples, results, out):
    """Unrolled message passing: the loss of vamp and amp after t iterations against t, beside state
    evolution's prediction after t, with the best elementwise decoder and relu as references."""
    from pathlib import Path

    from .board import unrolled as un
    from ._validate import MAX_SAMPLES

    n_s = check_ns(_floats("--ns", ns)[0])
    r_v, p_v = _floats("--r", r)[0], check_p(_floats("--p", p)[0])
    nd_from_r(n_s, r_v)  # an impossible cell is refused here
    its = un.check_iterations(_floats("--iters", iters))
    decs = [d.strip() for d in decoders.split(",") if d.strip()]
    seed_v = check_seed(_floats("--seed", seed)[0])
    max_s = _floats("--max-samples", max_samples)[0]
    if isinstance(max_s, bool) or not isinstance(max_s, int) or not 16 <= max_s <= MAX_SAMPLES:
        raise BadInput(f"--max-samples must be an integer in 16..2^40, got {max_s!r}")
    from .run.worker import stdout_to_stderr

    with stdout_to_stderr():
        df = un.unrolled(decs, n_s=n_s, r=r_v, p=p_v, iterations=its, seed=seed_v, store=results,
                         progress=sys.stderr.isatty(), max_samples=max_s)
    folder = Path(out) if out is not None else default_board_dir(results or DEFAULT_RESULTS, "unrolled")
    folder.mkdir(parents=True, exist_ok=True)
    text = (f"# Unrolled message passing: loss after t iterations\n\nGenerated by `{_command_line(ctx)}`.\n\n"
            f"n_s = {n_s}, r = {r_v:g}, p = {p_v:g}, seed {seed_v}: each row is `decoder` with max_iter = t and "
            f"tol = 0; the prediction is state evolution after t iterations (the row's `predicted_t`).\n\n"
            + un.table(df) + "\n")
    (folder / "unrolled.md").write_text(text)
    fig = un.plot_unrolled(df, folder / "unrolled.png")
    click.echo(un.table(df))
    click.echo(f"wrote {folder / 'unrolled.md'}" + (f", {fig}" if fig else ""), err=True)
    return 0 if (df.status == "ok").all() else 1


def main(argv=None) -> int:
    """Entry point of the ``decoderbench`` console script."""
    try:
        rv = cli.main(args=argv, prog_name="decoderbench", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.UsageError as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except BadInput as exc:  # only the project's bad-input error; anything else is a bug: its traceback shows
        click.echo(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", err=True)
        return 2
    except BrokenPipeError:  # e.g. piped into head
        return 0
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
