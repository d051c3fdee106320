"""oneseekctl models (light: oneseekd/cli/read.py) / resolve (the full catalog query)."""

from __future__ import annotations

from typing import Any

import click

from oneseekd.cli.context import Context, emit_json, human_bytes, human_count, json_option
from oneseekd.cli.display import columns, shown, shown_table
from oneseekd.cli.read import Row, open_reader


def _paths(value: Any) -> list[str]:
    """shadowed_paths as a list of strings, whatever JSON another program stored there."""
    return [str(p) for p in value] if isinstance(value, list) else []


MODEL_COLUMNS = (
    *("host", "key", "display_name", "path", "root", "state", "state_reason", "enabled"),
    *("model_type", "architectures", "parameter_count", "size_bytes", "weight_format"),
    *("has_tokenizer", "shadowed_paths", "first_seen_at", "state_changed_at"),
    *("source_repository", "source_commit"),
)


def model_dict(row: Row) -> dict[str, Any]:
    return columns(row, MODEL_COLUMNS) | {"shadowed_paths": _paths(row.shadowed_paths)}


@click.command("models")
@json_option
@click.option("--all", "show_all", is_flag=True, help="Include models that are gone (missing).")
@click.pass_obj
def models_cmd(obj: Context, as_json: bool, show_all: bool) -> None:
    """List the catalog of base models."""
    reader = open_reader(obj, catalog=True)[0]
    rows = [r for r in reader.models() if show_all or r.state != "missing"]
    if as_json:
        emit_json([model_dict(r) for r in rows])
        return
    if not rows:
        click.echo(
            f"No base models yet. Copy a model folder (config.json + weights) into "
            f"{obj.config.home.base_models}/"
        )
        return
    click.echo(
        shown_table(
            ["KEY", "NAME", "STATE", "ARCH", "PARAMS", "SIZE", "TOKENIZER", "PATH"],
            [
                [
                    r.key,
                    r.display_name,
                    r.state + ("" if r.enabled else " (disabled)"),
                    r.model_type or "?",
                    human_count(r.parameter_count),
                    human_bytes(r.size_bytes),
                    "yes" if r.has_tokenizer else "no",
                    r.path,
                ]
                for r in rows
            ],
        )
    )
    notes = [f"{shown(r.key)}: {shown(r.state_reason)}" for r in rows if r.state_reason]
    notes += [
        f"{shown(r.key)}: shadows {shown(p)} (base_models/ wins)"
        for r in rows
        for p in _paths(r.shadowed_paths)
    ]
    notes += [
        f"{shown(r.key)}: pulled from {shown(r.source_repository)} at commit "
        f"{shown(str(r.source_commit)[:12])}"
        for r in rows
        if r.source_repository
    ]
    if notes:
        click.echo("\n" + "\n".join(notes))


@click.command("resolve")
@click.argument("names", nargs=-1, required=True)
@json_option
@click.pass_obj
def resolve_cmd(obj: Context, names: tuple[str, ...], as_json: bool) -> None:
    """Show which catalog model each NAME means, and by which matching strategy."""
    from oneseekd.catalog.query import resolve_names
    from oneseekd.catalog.scan import model_roots

    obj.fresh_catalog()
    resolved = resolve_names(
        obj.engine(), names, model_roots(obj.config), prefer_host=obj.config.catalog.host
    )
    if as_json:
        emit_json(
            [
                {
                    "requested": r.match.requested,
                    "key": r.match.key,
                    "strategy": r.match.strategy,
                    "display_name": r.model.display_name,
                    "path": r.model.path,
                    "state": r.model.state,
                }
                for r in resolved
            ]
        )
        return
    click.echo(
        shown_table(
            ["REQUESTED", "KEY", "STRATEGY", "PATH"],
            [[r.match.requested, r.match.key, r.match.strategy, r.model.path] for r in resolved],
        )
    )
