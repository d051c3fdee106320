"""live_metrics.json in the seed's shape, where CivicAI's live leaderboard polls it:
`oneseek-certified/<run_id>/live_metrics.json`, atomically replaced after every epoch and at
each progress update while the run trains (docs/training.md, "Live metrics")."""

from __future__ import annotations

import errno
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from oneseekd import protocol
from oneseekd.certify.dna import final_weights, weight_inputs
from oneseekd.certify.staging import remove, render_json, staging_path
from oneseekd.errors import OneseekError
from oneseekd.times import utc_text

# In a live folder the trainer made: the run it was made for. A folder without it (another
# program's files) is never written into nor removed, and a link there is never followed.
LIVE_OWNER = ".oneseekd-run"


class LiveFolderRefused(OneseekError):
    """oneseek-certified/<run_id> is not this run's to write: another program's files or a link."""

    exit_code = protocol.EXIT_REFUSED


def owns_live_folder(folder: Path, run_id: str) -> bool:
    """Whether folder is a real folder (not a link) the trainer made for run_id."""
    try:
        fd = os.open(folder / LIVE_OWNER, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        owner = os.read(fd, 256)
    finally:
        os.close(fd)
    return not folder.is_symlink() and owner == run_id.encode()


def claim_live_folder(folder: Path, run_id: str) -> None:
    """Make the run's live folder, marked as the run's, or find it already made so; a folder
    (or file, or link) there that the run did not make is refused, naming it. The folder is
    made whole under a dot-name and renamed into place, so a crash never leaves it unmarked."""
    if owns_live_folder(folder, run_id):
        return
    if not os.path.lexists(folder):
        # not `.tmp`: that is a certified folder being staged (and the crash harness's cue)
        staged = folder.with_name(f".{folder.name}.claim")
        if os.path.lexists(staged):  # what a killed attempt left
            remove(staged)
        os.mkdir(staged)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(staged / LIVE_OWNER, flags, 0o644)
        try:
            os.write(fd, run_id.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(staged, folder)  # fails on anything but an empty folder in its place
            return
        except OSError:
            remove(staged)
    what = "a link" if folder.is_symlink() else "a folder" if folder.is_dir() else "a file"
    raise LiveFolderRefused(
        f"run {run_id} cannot write its live metrics",
        [
            f"{folder} already exists as {what} that oneseekd did not make for this run; it "
            "is left as it is: move it away, or submit the request again with another RUN_ID"
        ],
    )


def write_json(path: Path, data: Any, *, strict: bool = False) -> None:
    """staging.write_json's bytes, written by write_into: never through a link."""
    write_into(path.parent, path.name, render_json(data, strict=strict))


def write_into(folder: Path, name: str, data: bytes) -> None:
    """Replace folder/name atomically without following a link at folder or at name: the
    folder is opened with O_NOFOLLOW and the file written and renamed relative to it."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise LiveFolderRefused(
                f"{folder} is a link or a file now, not the run's live folder",
                ["oneseekd never writes through a link there; move it away"],
            ) from None
        raise
    tmp = staging_path(Path(name)).name
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        fd = os.open(tmp, flags, 0o644, dir_fd=dir_fd)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def live_document(
    train: dict[str, list[float]],
    val: dict[str, list[float]],
    total_epochs: int,
    *,
    weighting: str,
    progress_percent: float,
    now: datetime,
    running_loss: float | None = None,
    bits_per_byte: dict[str, list[float | None]] | None = None,
    step_losses: dict[str, list[float]] | None = None,
    auto_stop: dict[str, dict[str, Any]] | None = None,
    shipped: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The seed's live metrics: `val_losses` and `weights` hold one number per model key (its
    latest validation loss, and the ensemble weight that gives); `total_loss` is the mean of
    the models' latest training losses (`running_loss`, the current epoch's so far, when given);
    `epoch` the furthest epoch any model finished. oneseekd adds `val_bits_per_byte` (each
    model's latest held-out bits per byte, what `bits_per_byte` weighting weighs),
    `step_losses` (every optimizer step's training loss, per model, for a live chart) and
    `auto_stop` (each model's auto-stop state, trainer/autostop.py `info`, for the models that
    asked for it). A model in `shipped` (key: the 1-based epoch it ships, trainer/keep.py)
    is that epoch's figures instead of its latest, and `shipped_epochs` says so."""
    chosen = shipped or {}

    def pick(key: str, values: list[Any]) -> Any:
        """The model's figure of its shipped epoch, else its latest."""
        epoch = chosen.get(key, len(values))
        return values[epoch - 1] if 1 <= epoch <= len(values) else values[-1]

    latest = {k: pick(k, v) for k, v in val.items() if v and math.isfinite(pick(k, v))}
    bpb = {
        k: pick(k, v)
        for k, v in (bits_per_byte or {}).items()
        if v and pick(k, v) is not None and math.isfinite(pick(k, v))
    }
    trains = [pick(k, v) for k, v in train.items() if v]
    total = (
        running_loss
        if running_loss is not None
        else (sum(trains) / len(trains) if trains else None)
    )
    return {
        "type": "epoch_end",
        "epoch": max((len(v) for v in val.values()), default=0),
        "total_epochs": total_epochs,
        "total_loss": _number(total),
        "val_losses": latest,
        "weights": final_weights(
            weight_inputs(latest, {k: bpb.get(k) for k in latest}, weighting), weighting
        ),
        "val_bits_per_byte": bpb,
        "step_losses": {k: [_number(x) for x in v] for k, v in (step_losses or {}).items()},
        "progress_percent": round(progress_percent, 2),
        "auto_stop_info": auto_stop_info(auto_stop or {}),
        "timestamp": utc_text(now),
    } | ({"shipped_epochs": dict(chosen)} if chosen else {})


def auto_stop_info(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """live_metrics.json's `auto_stop_info`: enabled when any model asked for auto-stop,
    stopped when any stopped early (the epoch each stopped after is in its entry)."""
    if not models:
        return {"enabled": False, "stopped": False}
    return {
        "enabled": True,
        "stopped": any(info.get("stopped") for info in models.values()),
        "models": models,
    }


class LiveMetrics:
    """The run's live_metrics.json while it trains. `epoch_end` rewrites it after an epoch;
    `progress` at each progress update (the trainer's are about a second apart; CivicAI counts
    a run as active while the file is under 60 s old)."""

    def __init__(
        self,
        path: Path,
        total_epochs: int,
        models: int,
        weighting: str,
        owner: str | None = None,
    ) -> None:
        self.path = path
        self.owner = owner  # the run id: the folder is claimed for it (claim_live_folder)
        self.total_epochs = total_epochs
        self.models = max(models, 1)
        self.weighting = weighting
        self.train: dict[str, list[float]] = {}
        self.val: dict[str, list[float]] = {}
        self.bpb: dict[str, list[float | None]] = {}
        self.steps: dict[str, list[float]] = {}
        self.percent = 0.0
        self.running: float | None = None
        self.auto_stops: dict[str, dict[str, Any]] = {}
        self.ships: dict[str, int] = {}

    def epoch_end(
        self,
        key: str,
        val_losses: list[float],
        train_losses: list[float] | None = None,
        bits_per_byte: list[float | None] | None = None,
        step_losses: list[float] | None = None,
    ) -> None:
        """After an epoch of `key` (the recipe tells the validation losses; the training loss
        is then the epoch's running loss last reported), or for a model an earlier attempt
        trained (both lists from its row)."""
        self.val[key] = list(val_losses)
        if bits_per_byte is not None:
            self.bpb[key] = list(bits_per_byte)
        if step_losses is not None:
            self.steps[key] = list(step_losses)
        if train_losses is not None:
            self.train[key] = list(train_losses)
        elif self.running is not None:
            self.train[key] = [*self.train.get(key, []), self.running]
        self.running = None
        self._write()

    def auto_stop(self, key: str, info: dict[str, Any]) -> None:
        """Auto-stop's state of `key` after its latest epoch (told right after epoch_end)."""
        self.auto_stops[key] = dict(info)
        self._write()

    def shipped(self, key: str, epoch: int) -> None:
        """`key` is trained and ships `epoch` (trainer/keep.py): its figures are that epoch's
        from now on."""
        self.ships[key] = epoch
        self._write()

    def progress(self, data: dict[str, Any]) -> None:
        """A progress report of the trainer: model_index/models and step/steps give the share
        of the whole run done; loss the current epoch's running training loss."""
        steps = data.get("steps") or 0
        done = (data.get("step") or 0) / steps if steps else 0.0
        index = max(int(data.get("model_index") or 1), 1)
        self.percent = min(100.0, 100.0 * ((index - 1) + done) / self.models)
        loss = data.get("loss")
        self.running = float(loss) if isinstance(loss, int | float) else None
        self._write()

    def step(self, key: str, losses: list[float]) -> None:
        """Every optimizer step's training loss of `key` so far (the recipe's list, told after
        each step): written with the next progress update, not at each step."""
        self.steps[key] = losses

    def _write(self) -> None:
        if self.owner is not None:  # checked again at every write: a link is never followed
            claim_live_folder(self.path.parent, self.owner)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(
            self.path,
            live_document(
                self.train,
                self.val,
                self.total_epochs,
                weighting=self.weighting,
                progress_percent=self.percent,
                now=datetime.now(UTC),
                running_loss=self.running,
                bits_per_byte=self.bpb,
                step_losses=self.steps,
                auto_stop=self.auto_stops,
                shipped=self.ships,
            ),
            strict=True,
        )
