"""The command line: parse, call, print. Nothing here computes.

Bad input prints one line ``error: ...`` to stderr and exits 2, with no traceback.
"""

from __future__ import annotations

import json
import math
import sys

import click

from . import __version__
from ._validate import check_nd, check_ns, check_p, check_seed, nd_from_r


def _floats(name: str, text: str) -> list[float]:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise ValueError(f"{name} must be a comma-separated list of numbers, got {text!r}") from None
    if not out:
        raise ValueError(f"{name} must list at least one value, got {text!r}")
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="decoderbench")
def cli():
    """decoderbench: how good is a sparse decoder, against exact theory."""


def _cells(ns: str, r: str | None, nd: str | None, p: str) -> list[tuple[int, int, float]]:
    if r is not None and nd is not None:
        raise ValueError("--r and --nd: give one of them, not both")
    out = []
    for n_s in _floats("--ns", ns):
        n_s = check_ns(n_s)
        if nd is not None:
            n_ds = [check_nd(v, n_s) for v in _floats("--nd", nd)]
        else:
            n_ds = [nd_from_r(n_s, v) for v in _floats("--r", r if r is not None else "0.25")]
        for n_d in n_ds:
            for pv in _floats("--p", p):
                out.append((n_s, n_d, check_p(pv)))
    return out


@cli.command()
@click.option("--ns", default="4096", show_default=True, help="n_s, the number of sparse features (power of two).")
@click.option("--r", "r", default=None, help="Compression ratio r = n_d/n_s in (0, 1) [default: 0.25].")
@click.option("--nd", default=None, help="n_d instead of --r.")
@click.option("--p", "p", default="0.045", show_default=True, help="Sparsity p in (0, 1].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def theory(ns, r, nd, p, as_json):
    """Print the exact per-cell theory (quadrature, no sampling)."""
    from .theory import cell_theory

    cells = _cells(ns, r, nd, p)
    results = [cell_theory(*c) for c in cells]
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
    from . import plugins

    rows = [{"name": d.name, "kind": d.kind, "source": d.source, "plugin": d.plugin, "version": d.version,
             "requires": sorted(d.cls.requires), "description": d.cls.description}
            for d in plugins.decoders().values()]
    enc = [{"name": e.name, "kind": "encoder", "source": e.source, "plugin": e.plugin, "version": e.version,
            "requires": sorted(e.cls.capabilities), "description": (e.cls.__doc__ or "").strip().split("\n")[0]}
           for e in plugins.encoders().values()]
    errors = plugins.load_errors()
    if as_json:
        out = rows + enc + [{"name": k, "kind": "error", "source": None, "error": v} for k, v in errors.items()]
        click.echo(json.dumps(out))
        return
    click.echo(_table(rows, ["name", "kind", "source", "description"]))
    click.echo("\nencoders:")
    click.echo(_table(enc, ["name", "source", "requires"]))
    for k, v in errors.items():
        click.echo(f"broken plugin: {v}", err=True)


def _select_decoders(spec: str) -> list[str]:
    """Names from --plugins: 'all' or a comma-separated list; an unknown name is bad input."""
    from . import plugins

    registered = list(plugins.decoders())
    broken = plugins.load_errors()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError(f"--plugins must be 'all' or a comma-separated list of: {', '.join(registered)}")
    if names == ["all"]:
        # broken plugins are selected too, so their failure shows as an error row
        return registered + [b for b in broken if b not in registered]
    unknown = [n for n in names if n not in registered and n not in broken]
    if unknown:
        raise ValueError(f"--plugins: unknown decoder {unknown[0]!r}; registered: {', '.join(registered)}")
    return names


ROW_COLUMNS = ["decoder", "kind", "n_s", "n_d", "p", "seed", "loss", "loss_se", "ratio_e2", "ratio_mmse", "status"]


@cli.command()
@click.option("--plugins", "plugin_spec", default="all", show_default=True,
              help="Decoders to score: 'all' or a comma-separated list of names.")
@click.option("--ns", default="4096", show_default=True, help="n_s list (powers of two).")
@click.option("--r", "r", default=None, help="r list in (0, 1) [default: 0.25].")
@click.option("--nd", default=None, help="n_d list instead of --r.")
@click.option("--p", "p", default="0.045", show_default=True, help="p list in (0, 1].")
@click.option("--seed", default="0", show_default=True, help="Seed list (non-negative integers).")
@click.option("--encoder", default="rug", show_default=True, help="Encoder name (see `decoderbench plugins`).")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu or cuda.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float64"]))
@click.option("--target-se", default=0.01, show_default=True, type=float,
              help="Stop sampling when the standard error is below this fraction of the loss.")
@click.option("--max-samples", default=131072, show_default=True, type=int, help="Cap on evaluation samples.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON list.")
def run(plugin_spec, ns, r, nd, p, seed, encoder, device, dtype, target_se, max_samples, as_json):
    """Score decoders on cells against the theory."""
    from . import plugins
    from .runner import WorkUnit, run_unit

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    plugins.get_encoder(encoder)
    names = _select_decoders(plugin_spec)
    seeds = [check_seed(s) for s in _floats("--seed", seed)]
    units = [WorkUnit(n_s, n_d, pv, name, seed=s, encoder=encoder, device=device, dtype=dtype,
                      target_rel_se=target_se, max_samples=max_samples, min_samples=min(2048, max_samples))
             for (n_s, n_d, pv) in _cells(ns, r, nd, p) for s in seeds for name in names]
    rows = [run_unit(u) for u in units]
    if as_json:
        click.echo(json.dumps([{k: v for k, v in row.items() if k != "traceback"} for row in rows]))
    else:
        click.echo(_table(rows, ROW_COLUMNS))
        for row in rows:
            if row["status"] != "ok":
                click.echo(f"{row['decoder']}: {row['status']}: {row['error']}", err=True)
    return 1 if any(row["status"] == "error" for row in rows) else 0


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
    except ValueError as exc:
        click.echo(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", err=True)
        return 2
    except BrokenPipeError:  # e.g. piped into head
        return 0
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
