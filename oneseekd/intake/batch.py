"""What one batch of intake decisions reads once (the catalog, the versions taken), and the
pure steps of a decision: the versions ended runs leave, one host for all models, the run spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneseekd.db.models import Artifact, BaseModel, Run
from oneseekd.intake.checks import next_version, version_key
from oneseekd.intake.schema import TrainingRequestModel
from oneseekd.spec.request import RunOptions, RunSpec, build


@dataclass
class Batch:
    """What a batch of decisions reads once: the catalog and the versions already taken."""

    models: dict[str, BaseModel]
    taken: set[str]  # refused when asked for by name
    next_free: str = ""
    # versions of cancelled or failed runs that left nothing: never taken again by a request
    # without a version, but given to one that names it (docs/interface.md, "Versions")
    reserved: set[str] = field(default_factory=set)
    rows: list[BaseModel] = field(default_factory=list)  # every host's rows, not `missing`
    # the keys each host can train now: judged once a batch (a row's check resolves its path)
    usable: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.next_free = next_version(self.taken | self.reserved)

    def take(self, version: str) -> None:
        self.taken.add(version)
        after = next_version({version})
        if version_key(after) > version_key(self.next_free):
            self.next_free = after


def ended_versions(session: Session) -> tuple[set[str], set[str]]:
    """The versions of cancelled and failed runs: (those that recorded an artifact, those
    that left nothing). A version that produced a file stays taken; one that produced
    nothing may be named again explicitly, but is never the next free one, so that `runs`
    never shows two runs that took the same version without the operator asking."""
    ended = session.execute(
        select(Run.id, Run.version).where(Run.state.in_(("cancelled", "failed")))
    ).all()
    if not ended:
        return set(), set()
    with_files = set(
        session.scalars(
            select(Artifact.run_id).where(Artifact.run_id.in_([pk for pk, _ in ended])).distinct()
        )
    )
    produced = {version for pk, version in ended if pk in with_files}
    return produced, {version for _, version in ended} - produced


def no_single_host(usable: dict[str, set[str]], keys: list[str]) -> str:
    """A run trains on one host: models spread over several cannot be trained together."""
    wanted = set(keys)
    where = "; ".join(
        f"{h} has {', '.join(sorted(got & wanted))}"
        for h, got in sorted(usable.items())
        if got & wanted
    )
    return f"base_models: no single host has all of {', '.join(keys)} ready ({where})"


def run_spec(
    request: TrainingRequestModel, models: list[BaseModel], per_model: dict[str, str], version: str
) -> RunSpec:
    """The request as the trainer runs it (Run.config): the typed run spec over the resolved
    keys, each model's per_model options resolved once."""
    options = RunOptions.model_validate(request.model_dump(include=set(RunOptions.model_fields)))
    overrides = {per_model[name]: o for name, o in request.per_model.items()}
    # the run id names the run, not the training: it stays out of the config the DNA hashes
    return build(
        options,
        [m.key for m in models],
        version,
        overrides,
        list(request.base_models),
        {m.key: m.display_name for m in models},
        request.language,
    )
