"""Several GPUs, tested without one: the supervisor starts torchrun, two trainer ranks train one
model with DDP over gloo, and rank 0 alone writes. What it leaves is compared file by file, and
its losses number by number, with a single-process run of the same request."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from daemon import cmdlines, wait_for
from gloo import spawn, train_slowly_exported
from pausetrainer import pause_command, paused
from trainhomes import FAST, TinyHome

from oneseekd import queue
from oneseekd.daemon.supervisor import Supervisor
from oneseekd.intake.accept import Intake

# its numbers follow the CPU's bf16 answer: CI runs it with ONESEEK_CPU_BF16 forced both ways
pytestmark = pytest.mark.precision

# dropout off: with it each rank draws its own masks, and the runs differ by that noise; fp32,
# since "auto" computes in bf16 on a CPU that has it natively, and the tolerances are fp32's
SAME = {**FAST, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "precision": "fp32"}
TOLERANCE = 1e-5  # float sums in another order over 27 steps: measured under 3e-7
FSDP_TOLERANCE = 1e-5  # sharded, 2 epochs: measured under 2e-7


class Box(TinyHome):
    """A home whose [trainer] lets two CPU processes stand in for two GPUs."""

    def __init__(
        self,
        root: Path,
        cache: Path,
        models: dict[str, str],
        command: list[str] | None = None,
    ) -> None:
        trainer = "cpu_processes = 2\ncollective_timeout_seconds = 60\n"
        trainer += "cancel_grace_seconds = 20\nstop_grace_seconds = 30\n"
        if command:  # e.g. tests/pausetrainer.py: the trainer stopped at a chosen step
            trainer += f"command = {json.dumps(command)}\n"
        super().__init__(root, cache, models, trainer)
        self.supervisor = Supervisor(self.engine, self.config, None)

    def submit(self, models: list[str], **fields: object) -> str:
        body = {"base_models": models, "dataset": "civic.jsonl", **SAME, **fields}
        verdict = Intake(self.engine, self.config.home, cpu_processes=2).take_bytes(
            json.dumps(body).encode(), source="submit"
        )
        assert verdict.run_id, verdict.problems
        return verdict.run_id

    def run(self, run_id: str) -> dict[str, object]:
        con = sqlite3.connect(self.config.home.db_file)
        con.row_factory = sqlite3.Row
        try:
            return dict(con.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone())
        finally:
            con.close()

    def drive(self, run_id: str, timeout: float = 120.0) -> dict[str, object]:
        def ended() -> bool:
            self.supervisor.tick()
            return self.run(run_id)["state"] in ("succeeded", "failed", "cancelled")

        wait_for(ended, timeout=timeout, interval=0.05, what=f"run {run_id} to end")
        return self.run(run_id)

    def log(self, run_id: str) -> str:
        return (self.root / "logs" / f"{run_id}.log").read_text(errors="replace")

    def layout(self, run_id: str) -> set[str]:
        """Every file a run left under models/, its run id replaced by RUN and its DNA (the
        name of its certified folder) by DNA."""
        models = self.root / "models"
        dna = os.readlink(models / "oneseek-certified" / run_id)
        return {
            p.relative_to(models).as_posix().replace(run_id, "RUN").replace(dna, "DNA")
            for p in models.rglob("*")
            if p.is_file() and "base_models" not in p.parts
        }


def trainers_of(run_id: str) -> list[int]:
    """Live processes (torchrun's agent or a rank) working on the run."""
    return [  # a zombie's command line is empty
        pid
        for pid, cmdline in cmdlines().items()
        if run_id.encode() in cmdline and pid != os.getpid()
    ]


@pytest.fixture
def box(tmp_path: Path, cache: Path) -> Iterator[Box]:
    b = Box(tmp_path / "ddp", cache, {"Tiny-Llama": "llama"})
    yield b
    if b.supervisor.child is not None:
        b.supervisor.child.kill()
    b.engine.dispose()


@pytest.mark.timeout(300)
def test_two_gloo_processes_leave_what_one_leaves_with_the_same_losses(
    box: Box, tmp_path: Path, cache: Path
) -> None:
    two = box.submit(["llama"], gpus=2)
    done = box.drive(two, timeout=240)
    assert (done["state"], done["exit_code"]) == ("succeeded", 0), box.log(two)[-3000:]
    log = box.log(two)
    assert "torch.distributed.run" in log.splitlines()[0]  # the attempt line names torchrun
    single = Box(tmp_path / "one", cache, {"Tiny-Llama": "llama"})
    try:
        one = single.submit(["llama"])  # gpus defaults to 1: the plain child
        assert single.drive(one, timeout=240)["state"] == "succeeded", single.log(one)[-3000:]
        assert "torch.distributed.run" not in single.log(one)
        assert box.layout(two) == single.layout(one)
        a = box.results(two)["metrics"]["tiny-llama"]  # type: ignore[index]
        b = single.results(one)["metrics"]["tiny-llama"]  # type: ignore[index]
    finally:
        single.engine.dispose()
    print("losses, 2 processes:", a["train_losses"], a["val_losses"])
    print("losses, 1 process: ", b["train_losses"], b["val_losses"])
    assert (a["steps"], a["tokens"]) == (b["steps"], b["tokens"])
    for x, y in zip(
        a["train_losses"] + a["val_losses"], b["train_losses"] + b["val_losses"], strict=True
    ):
        assert x == pytest.approx(y, abs=TOLERANCE)
    assert a["train_losses"][-1] < a["train_losses"][0]  # and it learned something
    # rank 0 alone wrote: one adapter, one model_trained and one completion event
    con = sqlite3.connect(box.config.home.db_file)
    events = [e for (e,) in con.execute("SELECT event FROM ledger_events ORDER BY seq")]
    con.close()
    assert events.count("model_trained") == 1
    assert events.count("dna_v2_training_completed") == 1
    assert trainers_of(two) == []


def test_a_request_for_more_gpus_than_the_host_has_is_refused(box: Box) -> None:
    verdict = Intake(box.engine, box.config.home, cpu_processes=2).take_bytes(
        json.dumps(
            {
                "base_models": ["llama"],
                "dataset": "civic.jsonl",
                "gpus": 3,
                "perModel": {"llama": {"gpus": 4}},
            }
        ).encode(),
        source="submit",
    )
    assert verdict.problems == [
        "gpus: asks for 3 GPUs, but this host has none (and trainer.cpu_processes = 2 CPU "
        "processes stand in for them)",
        "per_model.llama.gpus: asks for 4 GPUs, but this host has none (and "
        "trainer.cpu_processes = 2 CPU processes stand in for them)",
    ]


@pytest.mark.timeout(300)
def test_cancel_stops_every_rank_and_sigkill_of_the_agent_leaves_no_worker(box: Box) -> None:
    long = {"epochs": 200, "checkpoint_every": 1000}
    first = box.submit(["llama"], gpus="all", **long)

    def stepping() -> bool:
        box.supervisor.tick()
        progress = box.run(first)["progress"]
        return progress is not None and json.loads(str(progress)).get("step", 0) >= 2

    wait_for(stepping, timeout=120, interval=0.05, what="two optimizer steps")
    assert len(trainers_of(first)) == 3  # the agent and two ranks
    queue.request_cancel(box.engine, first)
    done = box.drive(first, timeout=60)
    assert (done["state"], done["outcome"]) == ("cancelled", "cancelled")
    assert trainers_of(first) == []
    assert "stopped on request after writing a checkpoint" in box.log(first)

    second = box.submit(["llama"], gpus=2, **long)
    wait_for(
        lambda: (box.supervisor.tick(), len(trainers_of(second)) == 3)[1],
        timeout=60,
        what="the agent and two ranks",
    )
    assert box.supervisor.child is not None
    os.kill(box.supervisor.child.proc.pid, signal.SIGKILL)
    done = box.drive(second, timeout=60)
    assert (done["state"], done["outcome"]) == ("failed", "signal")
    wait_for(lambda: trainers_of(second) == [], timeout=10, what="no rank left")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_a_two_process_run_resumes_from_its_checkpoint_where_it_would_have_ended(
    box: Box, tmp_path: Path, cache: Path, sharding: str
) -> None:
    # dropout on: each rank's own RNG state must come back from the checkpoint; sharded, the
    # gathered adapter and optimizer state must go back into each rank's shards
    request = {
        "gpus": 2,
        "epochs": 8,
        "sharding": sharding,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
    }
    plain = box.submit(["llama"], **request)
    assert box.drive(plain, timeout=240)["state"] == "succeeded", box.log(plain)[-3000:]
    expected = box.results(plain)["metrics"]["tiny-llama"]  # type: ignore[index]

    # the first attempt pauses right after its checkpoint at step 6 and waits for the stop:
    # a deterministic point, never a race with a run that may end before a poll sees it
    pauses = tmp_path / "pauses"
    other = Box(tmp_path / "again", cache, {"Tiny-Llama": "llama"}, pause_command(pauses, 5))
    try:
        run_id = other.submit(["llama"], **request)

        def at_the_pause() -> bool:
            other.supervisor.tick()  # heartbeats and the lease go on while it waits
            return paused(pauses, run_id)

        wait_for(at_the_pause, timeout=180, interval=0.05, what="the trainer paused at step 6")
        other.supervisor.shutdown()  # the daemon stopping: checkpoint, exit, stay running
        assert other.run(run_id)["state"] == "running"
        assert trainers_of(run_id) == []
        other.supervisor = Supervisor(other.engine, other.config, None)
        other.supervisor.recover()
        done = other.drive(run_id, timeout=240)
        assert (done["state"], done["attempts"]) == ("succeeded", 2), other.log(run_id)[-3000:]
        resumed = other.results(run_id)["metrics"]["tiny-llama"]  # type: ignore[index]
    finally:
        other.engine.dispose()
    assert "checkpoint_loaded" in other.log(run_id)
    for x, y in zip(
        resumed["train_losses"] + resumed["val_losses"],
        expected["train_losses"] + expected["val_losses"],
        strict=True,
    ):
        assert x == pytest.approx(y, abs=1e-4)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_models_asking_for_different_gpu_counts_are_trained_in_separate_launches(
    tmp_path: Path, cache: Path
) -> None:
    box = Box(tmp_path / "mixed", cache, {"Tiny-Llama": "llama", "Tiny-Qwen2.5": "qwen2"})
    try:
        run_id = box.submit(["llama", "qwen2"], gpus=2, per_model={"qwen2": {"gpus": 1}}, epochs=1)
        done = box.drive(run_id, timeout=400)
        assert (done["state"], done["attempts"]) == ("succeeded", 1), box.log(run_id)[-3000:]
        # the supervisor's first line of each launch (the run log is JSON lines)
        attempts = [
            event["argv"]
            for line in box.log(run_id).splitlines()
            if line.startswith("{")
            and (event := json.loads(line)).get("event") == "trainer_started"
        ]
        assert len(attempts) == 2
        assert "--nproc-per-node=2" in attempts[0]
        assert "torch.distributed.run" not in attempts[1]
        assert set(box.results(run_id)["trained_models"]) == {  # type: ignore[arg-type]
            "tiny-llama",
            "tiny-qwen2-5",
        }
    finally:
        box.engine.dispose()


def test_gpus_are_counted_from_the_driver_narrowed_by_cuda_visible_devices(
    tmp_path: Path,
) -> None:
    from oneseekd.gpus import host_gpus

    driver = tmp_path / "gpus"
    for bus in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        (driver / bus).mkdir(parents=True)
    assert host_gpus({}, driver) == 3
    assert host_gpus({"CUDA_VISIBLE_DEVICES": "2,0"}, driver) == 2
    assert host_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,0"}, driver) == 1
    assert host_gpus({"CUDA_VISIBLE_DEVICES": ""}, driver) == 0
    assert host_gpus({}, tmp_path / "no-driver") == 0


def test_the_ranks_statuses_name_how_a_multi_process_trainer_ended() -> None:
    from oneseekd.protocol import combined_exit

    assert combined_exit({0: 0, 1: 0}, 2, 0) == 0
    assert combined_exit({0: 1, 1: 76}, 2, 1) == 76  # rank 1 ran out of memory
    assert combined_exit({0: 75, 1: 75}, 2, 1) == 75  # stopped on request
    assert combined_exit({0: 77, 1: 77}, 2, 1) == 77
    assert combined_exit({0: 0}, 2, -9) == -9  # rank 1 killed, the agent too
    assert combined_exit({}, 2, 1) == 1


def test_gpus_is_a_whole_number_or_all() -> None:
    from oneseekd.intake.schema import parse_request

    base = {"base_models": ["llama"], "dataset": "civic.jsonl"}
    assert parse_request({**base, "gpus": "all"})[0] is not None
    assert parse_request({**base, "gpus": 0})[1] == [
        'gpus: must be a whole number of GPUs from 1 to 1024, or "all" (got 0)'
    ]
    assert parse_request({**base, "perModel": {"llama": {"gpus": "2"}}})[1] == [
        "per_model.llama.gpus: must be a whole number of GPUs from 1 to 1024, or \"all\" (got '2')"
    ]


@pytest.mark.timeout(400)
def test_a_sharded_two_process_run_leaves_what_one_leaves_with_the_same_losses_and_adapter(
    box: Box, tmp_path: Path, cache: Path
) -> None:
    """FSDP over gloo: each rank holds half of every weight, and what rank 0 writes (the
    adapter, the .pth, the merged model) is gathered whole from both."""
    request = {"epochs": 2, "export_merged": True}
    two = box.submit(["llama"], gpus=2, sharding="fsdp", **request)
    done = box.drive(two, timeout=240)
    assert (done["state"], done["exit_code"]) == ("succeeded", 0), box.log(two)[-3000:]
    decided = [line for line in box.log(two).splitlines() if "model_sharding" in line]
    assert len(decided) == 2 and all('"sharding": "fsdp"' in line for line in decided), decided
    single = Box(tmp_path / "one", cache, {"Tiny-Llama": "llama"})
    try:
        one = single.submit(["llama"], sharding="fsdp", **request)  # one process: unsharded
        assert single.drive(one, timeout=240)["state"] == "succeeded", single.log(one)[-3000:]
        assert any(
            "model_sharding" in line and '"sharding": "none"' in line
            for line in single.log(one).splitlines()
        )
        assert box.layout(two) == single.layout(one)
        a = box.results(two)["metrics"]["tiny-llama"]  # type: ignore[index]
        b = single.results(one)["metrics"]["tiny-llama"]  # type: ignore[index]
        adapters = [
            h.root / "models" / "oneseek-7b-zero" / "lora_adapters" / "tiny-llama-adapter"
            for h in (box, single)
        ]
        merged = [
            next((h.root / "models" / "oneseek-7b-zero" / "merged").iterdir())
            for h in (box, single)
        ]
        base = box.root / "models" / "oneseek-7b-zero" / "base_models" / "Tiny-Llama"
        logits = [_adapter_logits(base, adapter) for adapter in adapters]
        whole = [_merged_logits(folder) for folder in merged]
    finally:
        single.engine.dispose()
    print("losses, 2 sharded processes:", a["train_losses"], a["val_losses"])
    print("losses, 1 process:          ", b["train_losses"], b["val_losses"])
    assert (a["steps"], a["tokens"]) == (b["steps"], b["tokens"])
    pairs = list(
        zip(a["train_losses"] + a["val_losses"], b["train_losses"] + b["val_losses"], strict=True)
    )
    print("largest loss difference:", max(abs(x - y) for x, y in pairs))
    for x, y in pairs:
        assert x == pytest.approx(y, abs=FSDP_TOLERANCE)
    assert a["train_losses"][-1] < a["train_losses"][0]
    print("largest logit difference, adapter:", float((logits[0] - logits[1]).abs().max()))
    print("largest logit difference, merged: ", float((whole[0] - whole[1]).abs().max()))
    assert float((logits[0] - logits[1]).abs().max()) < 1e-4
    assert float((whole[0] - whole[1]).abs().max()) < 1e-4
    assert float((logits[0] - whole[0]).abs().max()) < 1e-4  # the merge is of this adapter
    assert trainers_of(two) == []


def _probe() -> torch.Tensor:
    return torch.arange(3, 40).reshape(1, -1)


def _adapter_logits(base: Path, adapter: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        logits: torch.Tensor = model(input_ids=_probe()).logits
    return logits


def _merged_logits(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        logits: torch.Tensor = model(input_ids=_probe()).logits
    return logits


def test_sharding_is_ddp_fsdp_or_auto() -> None:
    from oneseekd.intake.schema import parse_request

    base = {"base_models": ["llama"], "dataset": "civic.jsonl"}
    request, problems = parse_request({**base, "perModel": {"llama": {"sharding": "fsdp"}}})
    assert request is not None and problems == []
    assert (request.sharding, request.per_model["llama"].sharding) == ("ddp", "fsdp")
    choices = (
        'must be "ddp" (each GPU holds the whole model), "fsdp" (the GPUs share one copy, for '
        'a model too large for one) or "auto" (fsdp when the weights take more than 50% of one '
        "GPU's memory)"
    )
    assert parse_request({**base, "sharding": "zero3"})[1] == [f"sharding: {choices} (got 'zero3')"]
    assert parse_request({**base, "per_model": {"llama": {"sharding": True}}})[1] == [
        f"per_model.llama.sharding: {choices} (got True)"
    ]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_other_ranks_wait_out_a_slow_export_longer_than_the_collective_timeout(
    tmp_path: Path, cache: Path
) -> None:
    """Rank 0 alone writes each model's outputs (under FSDP with export_merged, loading the
    whole base again): here 12 s each, against a collective timeout of 6 s. The other rank
    waits on a group whose timeout fits that work, and after the last model it is released."""
    box = Box(tmp_path / "slow", cache, {"Tiny-Llama": "llama", "Tiny-Qwen2.5": "qwen2"})
    try:
        run_id = box.submit(["llama", "qwen2"], gpus=2, epochs=1)
        claimed = queue.claim_next(box.engine, None)
        assert claimed is not None and claimed.run_id == run_id
        dna, rest = spawn(
            train_slowly_exported,
            2,
            tmp_path / "ranks",
            box.root,
            box.config.db_url,
            run_id,
            12.0,
            timeout=6.0,
        )
        assert dna.startswith("OneSeek-7B-Zero.v") and rest == ""
        assert set(box.results(run_id)["trained_models"]) == {  # type: ignore[arg-type]
            "tiny-llama",
            "tiny-qwen2-5",
        }
    finally:
        box.engine.dispose()
