"""Optimizers and schedules by transformers' names: the same lr trace as transformers, 8-bit
state that is really 8-bit, decay where transformers decays, and state that resumes exactly."""

from __future__ import annotations

import io
import itertools
from typing import Any

import pytest
import torch
from transformers import Trainer, get_scheduler

from oneseekd.trainer.hubless import import_bitsandbytes
from oneseekd.trainer.optim import (
    MIN_LR_RATE,
    OPTIMIZERS,
    SCHEDULERS,
    OptimizerRefused,
    build_optimizer,
    build_scheduler,
    decay_groups,
    keep_paging,
    uses_8bit_state,
    warmup_steps,
)

# its numbers follow the CPU's bf16 answer: CI runs it with ONESEEK_CPU_BF16 forced both ways
pytestmark = pytest.mark.precision


class Net(torch.nn.Module):
    """Big enough (128 x 64 = 8192 weights) for bitsandbytes to keep 8-bit state."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(128, 64)
        self.layer_norm = torch.nn.LayerNorm(64)
        self.norm = torch.nn.Module()
        self.norm.weight = torch.nn.Parameter(torch.ones(64))
        self.head = torch.nn.Linear(64, 8, bias=False)
        self.frozen = torch.nn.Linear(8, 8)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer_norm(self.proj(x)) * self.norm.weight)


TEACHER = torch.randn(128, 8, generator=torch.Generator().manual_seed(7))


def loss_of(net: Net, step: int) -> torch.Tensor:
    """A learnable task: classes a fixed linear teacher gives each input."""
    x = torch.randn(16, 128, generator=torch.Generator().manual_seed(step))
    return torch.nn.functional.cross_entropy(net(x), (x @ TEACHER).argmax(-1))


def held_out(net: Net) -> float:
    with torch.no_grad():
        return sum(float(loss_of(net, s)) for s in range(1000, 1004))


def trace(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("name", SCHEDULERS)
def test_each_schedule_is_transformers_own(name: str) -> None:
    total, warmup = 40, warmup_steps(40, None, 0.1)
    ours = build_scheduler(name, torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], 0.1), 40, 4)
    extra = {"min_lr_rate": MIN_LR_RATE} if name == "cosine_with_min_lr" else None
    theirs = get_scheduler(
        name,
        torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], 0.1),
        num_warmup_steps=warmup,
        num_training_steps=total,
        scheduler_specific_kwargs=extra,
    )
    expected = trace(theirs, total + 2)
    assert trace(ours, total + 2) == pytest.approx(expected, abs=1e-12)
    if name != "constant":  # every other schedule warms up over 4 steps
        assert expected[:5] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])


def test_default_schedule_ends_at_a_tenth() -> None:
    sched = build_scheduler(
        "cosine_with_min_lr", torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], 0.2), 10, 1
    )
    lrs = trace(sched, 11)
    assert lrs[1] == pytest.approx(0.2)
    assert lrs[10] == pytest.approx(0.02)
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))


def test_warmup_steps_win_over_the_ratio() -> None:
    assert warmup_steps(110, None, 0.03) == 4  # 3.3 rounded up, like transformers
    assert warmup_steps(110, 20, 0.03) == 20
    assert warmup_steps(10, 20, 0.0) == 10
    assert warmup_steps(100, None, 0.0) == 0


def test_schedule_resumes_from_its_state() -> None:
    def fresh() -> torch.optim.lr_scheduler.LRScheduler:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], 0.1)
        return build_scheduler("cosine_with_restarts", opt, 30, 3)

    whole = trace(fresh(), 30)
    first = fresh()
    head = trace(first, 12)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = fresh()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert head + trace(resumed, 18) == whole


def test_weight_decay_skips_biases_and_norms_as_transformers_does() -> None:
    net = Net()
    decay, plain = decay_groups(net, 0.01)
    names = {id(p): n for n, p in net.named_parameters()}
    expected = set(Trainer.get_decay_parameter_names(None, net)) - {"frozen.weight", "frozen.bias"}
    assert {names[id(p)] for p in decay["params"]} == expected == {"proj.weight", "head.weight"}
    assert {names[id(p)] for p in plain["params"]} == {
        "proj.bias",
        "layer_norm.weight",
        "layer_norm.bias",
        "norm.weight",
    }
    assert (decay["weight_decay"], plain["weight_decay"]) == (0.01, 0.0)


def train(name: str, steps: int, start: dict[str, object] | None = None) -> tuple[Net, object]:
    net = Net()
    opt = build_optimizer(name, net, 0.5 if name == "sgd" else 1e-2, 0.01)
    if start is not None:
        net.load_state_dict(start["net"])  # type: ignore[arg-type]
        opt.load_state_dict(start["opt"])  # type: ignore[arg-type]
    first = int(start["step"]) if start else 0  # type: ignore[call-overload]
    for step in range(first, first + steps):
        loss_of(net, step).backward()
        opt.step()
        opt.zero_grad()
    return net, opt


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n != "paged_adamw_8bit"])
def test_each_optimizer_learns_and_resumes_exactly(name: str) -> None:
    whole, opt = train(name, 30)
    assert held_out(whole) < 0.9 * held_out(Net())
    if name == "adamw_8bit":
        assert uses_8bit_state(opt)  # type: ignore[arg-type]
    half, half_opt = train(name, 15)
    buffer = io.BytesIO()
    state = {"net": half.state_dict(), "opt": half_opt.state_dict(), "step": 15}  # type: ignore[attr-defined]
    torch.save(state, buffer)
    buffer.seek(0)
    resumed, _ = train(name, 15, torch.load(buffer, weights_only=True))
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_adamw_8bit_is_lighter_than_adamw() -> None:
    def state_bytes(name: str) -> int:
        _, opt = train(name, 1)
        return sum(
            t.numel() * t.element_size()
            for s in opt.state.values()  # type: ignore[attr-defined]
            for t in s.values()
            if isinstance(t, torch.Tensor) and t.numel() > 1
        )

    assert state_bytes("adamw_8bit") < 0.35 * state_bytes("adamw_torch")


def test_paged_needs_cuda() -> None:
    with pytest.raises(OptimizerRefused) as refused:
        build_optimizer("paged_adamw_8bit", Net(), 1e-3, device="cpu")
    assert str(refused.value) == (
        'optimizer "paged_adamw_8bit" pages its state through CUDA unified memory, and this '
        'host trains on its CPU; ask for "adamw_8bit" (the same 8-bit state, unpaged) or '
        '"adamw_torch"'
    )


def test_unknown_names() -> None:
    with pytest.raises(OptimizerRefused, match="unknown optimizer 'lion'"):
        build_optimizer("lion", Net(), 1e-3)
    with pytest.raises(ValueError, match="unknown lr_scheduler 'onecycle'"):
        build_scheduler("onecycle", torch.optim.SGD(Net().parameters(), 0.1), 10, 1)


def _paged(simulated: bool) -> torch.optim.Optimizer:
    """bitsandbytes' PagedAdamW8bit over a large and a small parameter; `simulated`, its
    buffers made as on CUDA: those it would page (get_state_buffer) marked is_paged, as
    bitsandbytes marks its unified-memory buffers (this CPU has none to make, and such a
    one cannot step here)."""
    import_bitsandbytes()
    from bitsandbytes.optim.adamw import PagedAdamW8bit

    class Simulated(PagedAdamW8bit):  # type: ignore[misc]
        def get_state_buffer(self, p: torch.Tensor, dtype: torch.dtype = torch.float32) -> Any:
            buffer = torch.zeros_like(p, dtype=dtype)
            if p.numel() >= 1e5:
                buffer.is_paged = True  # type: ignore[attr-defined]
            return buffer

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(200_000)), torch.nn.Parameter(torch.randn(4096))]
    return (Simulated if simulated else PagedAdamW8bit)(params, lr=1e-3, min_8bit_size=4096)


def test_a_resumed_paged_optimizer_pages_its_moments_again() -> None:
    fresh = _paged(simulated=False)  # on a CPU bitsandbytes keeps it unpaged, and steps
    sum((p * p).sum() for p in fresh.param_groups[0]["params"]).backward()
    fresh.step()
    saved = io.BytesIO()
    torch.save(fresh.state_dict(), saved)
    saved.seek(0)
    resumed = _paged(simulated=True)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    large, small = resumed.param_groups[0]["params"]
    was = {k: resumed.state[large][k].clone() for k in ("state1", "state2")}
    assert not getattr(resumed.state[large]["state1"], "is_paged", False)  # what bnb leaves
    assert keep_paging(resumed) == 2  # state1 and state2 of the large parameter
    for key in ("state1", "state2"):
        assert getattr(resumed.state[large][key], "is_paged", False)
        assert torch.equal(resumed.state[large][key], was[key])
        assert was[key].any()
        assert not getattr(resumed.state[small][key], "is_paged", False)  # too small to page
    assert keep_paging(resumed) == 0


def test_an_unpaged_optimizer_is_left_alone() -> None:
    _, opt = train("adamw_8bit", 1)
    before = {id(t) for s in opt.state.values() for t in s.values()}  # type: ignore[attr-defined]
    assert keep_paging(opt) == 0  # type: ignore[arg-type]
    assert {id(t) for s in opt.state.values() for t in s.values()} == before  # type: ignore[attr-defined]
