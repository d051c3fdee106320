"""oneseekctl submit --dry-run: what a request would run, and nothing queued.

The request is judged by the intake's own parser and dataset check, its model names resolved
against the catalog; the records are encoded by the trainer's code in a child process
(oneseekd.trainer.dryrun: the tokenizer needs torch, which the CLI never imports), and the
memory of each model's step comes from spec/plan.py on its config.json.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from oneseekd.catalog.query import by_key
from oneseekd.cli import encoder
from oneseekd.cli.context import Context, emit_json
from oneseekd.db.engine import read_session
from oneseekd.db.models import BaseModel, ModelTraining
from oneseekd.errors import OneseekError
from oneseekd.gpus import host_gpus, resolve
from oneseekd.hub.repo import HubError, is_hub_name, parse
from oneseekd.intake.accept import Intake
from oneseekd.intake.batch import Batch
from oneseekd.intake.checks import check_dataset, resolve_models
from oneseekd.intake.hubnames import on_the_box
from oneseekd.intake.schema import parse_request
from oneseekd.spec.fields import memory_bytes
from oneseekd.spec.memory import Shape, activation_bytes, logits_bytes
from oneseekd.spec.plan import (
    Params,
    Plan,
    checkpointing_asked,
    fit_problem,
    held_for,
    micro_batch,
    plan,
    token_flops,
)

GIB = 2**30


def _memory(config: dict[str, Any], options: dict[str, Any], device: dict[str, Any]) -> Any:
    gpu = device["type"] == "cuda"
    held = held_for(options, gpu, device.get("bf16"))
    whole, seq = int(options["batch_size"]), int(options["max_seq_len"])
    # each GPU process takes its share of the rows; CPU processes share one RAM
    processes = resolve(options.get("gpus", 1), host_gpus()) if gpu else 1
    batch = -(-whole // max(processes, 1))
    asked = checkpointing_asked(options, gpu)
    chunked = bool(options.get("chunked_loss", True))
    bits = 8 if options.get("load_in_8bit") else 4
    weights = Params.from_config(config).weight_bytes(held, bits, frozen16=gpu)
    memory = int(device["memory"])
    cap = options.get("max_memory_per_gpu")
    if cap and gpu:  # the trainer caps its GPU memory so (loading.memory_cap)
        memory = min(memory, memory_bytes(str(cap)))
    p: Plan = plan(config, batch, seq, held, memory, weights=weights, chunked=chunked, asked=asked)
    ckpt = p.checkpointing if p.checkpointing is not None else asked is not False

    # the rows of one pass, as the trainer picks them (spec/plan.py micro_batch)
    def need(rows: int) -> int:  # a step of `rows` with checkpointing as decided, or eval
        q = plan(config, rows, seq, held, memory, weights=weights, chunked=chunked, asked=ckpt)
        return max(q.step_on if ckpt else q.step_off, q.evaluation)

    rows = micro_batch(options.get("micro_batch_size"), batch, need, memory)
    if rows < whole:
        p = plan(config, rows, seq, held, memory, weights=weights, chunked=chunked, asked=ckpt)
    shape, tokens = Shape.from_config(config), rows * seq
    return {
        "micro_batch_size": rows,
        "processes": processes,
        "held": held,
        "fits": p.fits,
        "gradient_checkpointing": p.checkpointing,
        "peak_bytes": p.need,
        "problem": fit_problem(
            options["key"], config, options, memory, gpu, device.get("bf16"), processes
        ),
        "device_bytes": p.memory,
        "breakdown": {
            "weights": p.weights,
            "activations": activation_bytes(shape, tokens, held, ckpt),
            "logits_chunk": logits_bytes(shape, tokens, held, chunked),
            "step": p.step_on if ckpt else p.step_off,
            "evaluation": p.evaluation,
        },
    }


def _encoded(
    child: subprocess.Popen[str], dataset: Path, models: list[dict[str, Any]], cache: Path
) -> Any:
    task = json.dumps({"dataset": str(dataset), "cache": str(cache), "models": models})
    out, err = child.communicate(task)
    if child.returncode != 0:
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise OneseekError(f"the dry run could not encode the records: {last}")
    return json.loads(out)


def dry_run(obj: Context, raw: bytes) -> dict[str, Any]:
    """The report of a request that is judged as submit judges it and never queued."""
    child = encoder.take()  # started early (cli/encoder.py): its imports overlap ours
    try:
        return _report(obj, raw, child)
    finally:
        encoder.release(child)  # refused before the records were asked for


def _report(obj: Context, raw: bytes, child: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OneseekError("the request was refused", [f"not JSON: {exc}"]) from exc
    request, problems = parse_request(data)
    if request is None:
        raise OneseekError("the request was refused", problems)
    paths = obj.config.home
    dataset, problems = check_dataset(request.dataset, paths, request.val_fraction)
    obj.fresh_catalog()
    intake = Intake(obj.engine(), paths, host=obj.config.catalog.host)
    with read_session(obj.engine()) as session:
        rows = list(session.scalars(select(BaseModel).where(BaseModel.state != "missing")))
        catalog = by_key(rows, intake.roots, intake.host)
        names, hub = _hub_names(session, rows, list(request.base_models), intake.host)
        chosen, more = resolve_models(catalog, names, intake.roots)
        more = hub + more
        found = [
            (name, row.key, Path(row.path))
            for name, row in zip(request.base_models, chosen, strict=False)
        ]
        rates = {key: _measured_rate(session, key) for _, key, _ in found}
    if problems or more or dataset is None:
        raise OneseekError("the request was refused", problems + more)
    models = []
    for name, key, path in found:
        options = request.per_model.get(name, request).model_dump()
        models.append({**options, "key": key, "path": str(path)})
    encoded = _encoded(child, dataset, models, paths.cache)
    report: dict[str, Any] = {
        "queued": False,
        "dataset": request.dataset,
        "records": encoded["records"],
        "duplicates": encoded["duplicates"],
        "val_fraction": request.val_fraction,
        "device": encoded["device"],
        "models": [],
    }
    for model in models:
        config = json.loads((Path(model["path"]) / "config.json").read_text(encoding="utf-8"))
        counts = encoded["models"][model["key"]]
        tokens = counts["tokens"]
        report["models"].append(
            {
                "model": model["key"],
                "batch_size": model["batch_size"],
                "max_seq_len": model["max_seq_len"],
                **counts,
                "label_share": counts["label_tokens"] / tokens if tokens else 0.0,
                # every record's tokens once (validation included): an epoch, about
                "epoch_flops": tokens * token_flops(config, int(model["max_seq_len"])),
                "memory": _memory(config, model, encoded["device"]),
                **_estimate(tokens, model, request.val_fraction, rates[model["key"]]),
            }
        )
    return report


def _hub_names(
    session: Session, rows: list[BaseModel], requested: list[str], host: str
) -> tuple[list[str], list[str]]:
    """Each `hf:ORG/NAME[@REV]` name replaced by the catalog key of the model already here for
    it, as intake reads it (intake/hubnames.py); one not here yet cannot be measured: the dry
    run says how to get it instead of calling it unknown. A name with a problem is left out of
    the names (the request is refused for it anyway)."""
    batch = Batch(models={r.key: r for r in rows}, taken=set(), rows=rows)
    names: list[str] = []
    problems: list[str] = []
    for name in requested:
        if not is_hub_name(name):
            names.append(name)
            continue
        try:
            ref = parse(name)
        except HubError as exc:
            problems.append(f"base_models: {exc.message}: {'; '.join(exc.problems)}")
            continue
        key = on_the_box(session, batch, ref, host)
        if key is None:
            problems.append(
                f"base_models: {name} is not on this box yet, and a dry run measures only "
                f"models that are: `oneseekctl pull {ref}` first, or submit the request "
                "without --dry-run (it waits for the download, then is decided)"
            )
        else:
            names.append(key)
    return names, problems


def _measured_rate(session: Session, key: str) -> float | None:
    """Tokens a second of this model's latest training in this home that measured any."""
    row = session.scalars(
        select(ModelTraining)
        .where(ModelTraining.model_key == key)
        .where(ModelTraining.tokens > 0, ModelTraining.seconds > 0)
        .order_by(ModelTraining.id.desc())
        .limit(1)
    ).first()
    return None if row is None else row.tokens / row.seconds


def _estimate(
    tokens: int, model: dict[str, Any], val_fraction: float, rate: float | None
) -> dict[str, Any]:
    """The training's seconds at the measured rate: the training split's tokens (about
    1 - val_fraction of them) every epoch; None where nothing was measured yet."""
    trained = tokens * (1 - val_fraction) * int(model["epochs"])
    return {
        "measured_tokens_per_s": rate,
        "estimated_seconds": None if rate is None else round(trained / rate, 1),
    }


def passes(batch: int, rows: int) -> str:
    return "" if rows >= batch else f" in passes of {rows} rows (micro_batch_size)"


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / 2**20:.1f} MiB"


def show(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(report)
        return
    device = report["device"]
    click.echo("Dry run: nothing was queued.")
    click.echo(
        f"Dataset {report['dataset']}: {report['records']} records, "
        f"{report['duplicates']} duplicate; val_fraction {report['val_fraction']}."
    )
    for m in report["models"]:
        mem = m["memory"]
        click.echo(
            f"{m['model']}: {m['records']} records after the template ({m['refused']} refused, "
            f"{m['truncated']} truncated at {m['max_seq_len']} tokens), {m['tokens']} tokens, "
            f"{m['label_share']:.1%} of them labels; about {m['epoch_flops']:.3g} FLOPs an epoch."
        )
        if m["refused"]:
            click.echo(
                f"  the run would be refused: {m['refused']} records cannot be trained on, "
                "for example:"
            )
        for problem in m["problems"]:
            click.echo(f"    {problem}")
        ckpt = mem["gradient_checkpointing"]
        verdict = (
            f"fits, gradient checkpointing {'on' if ckpt else 'off'}"
            if mem["fits"]
            else "does NOT fit"
        )
        click.echo(
            f"  peak per {device['type'].upper()} ({device['name']}, {_gib(mem['device_bytes'])}):"
            f" {_gib(mem['peak_bytes'])} at batch {m['batch_size']} x {m['max_seq_len']}"
            f"{passes(m['batch_size'], mem['micro_batch_size'])}, base "
            f"{mem['held']}: {verdict}"
        )
        if m["estimated_seconds"] is None:
            click.echo("  time: no training of this model measured in this home yet")
        else:
            click.echo(
                f"  time: about {m['estimated_seconds']:.0f} s of training at "
                f"{m['measured_tokens_per_s']:.0f} tokens/s (its last run here, with its "
                "options)"
            )
        if mem["problem"]:
            click.echo(f"  {mem['problem']}")
        parts = mem["breakdown"]
        click.echo("  " + ", ".join(f"{k.replace('_', ' ')} {_gib(v)}" for k, v in parts.items()))
