"""Temperature schedules: hand-computed values and properties of ``step -> tau`` functions, and the
learnable temperature (positivity for every parameter value, gradients).

The anneal under test (Jang et al. 2017, sec. 4) on the global step ``t``:
``tau_t = max(tau_min, tau_0 * exp(-r * t0))`` with ``t0 = every * floor(t / every)``.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from discrete_vae.distributions import ExpConcrete
from discrete_vae.schedules import LearnableTemperature, constant, exponential_decay

# (init, rate, floor, every)
DECAY_CASES = [(1.0, 1e-3, 0.5, 100), (2.0, 3e-5, 0.1, 1), (5.0, 0.01, 0.5, 7), (1.0, 0.0, 0.5, 10)]


def case_id(case) -> str:
    return "-".join(map(str, case))


def reference(init: float, rate: float, floor: float, every: int, step: int) -> float:
    last_update = every * math.floor(step / every)
    return max(floor, init * math.exp(-rate * last_update))


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 1.0),
        (99, 1.0),  # no update before the first block ends
        (100, math.exp(-0.1)),  # 0.904837...
        (199, math.exp(-0.1)),
        (250, math.exp(-0.2)),  # 0.818730...
        (600, math.exp(-0.6)),  # 0.548811...
        (700, 0.5),  # exp(-0.7) = 0.4966 < floor
        (10**9, 0.5),
    ],
)
def test_exponential_decay_hand_computed_values(step, expected):
    schedule = exponential_decay(1.0, 1e-3, 0.5, every=100)
    assert schedule(step) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("case", DECAY_CASES, ids=case_id)
def test_exponential_decay_matches_formula_and_is_piecewise_constant_monotone(case):
    init, rate, floor, every = case
    schedule = exponential_decay(init, rate, floor, every)
    steps = range(0, 5000)
    values = [schedule(t) for t in steps]
    for t, value in zip(steps, values, strict=True):
        assert value == pytest.approx(reference(init, rate, floor, every, t), rel=1e-12)
        assert value == schedule(every * (t // every))  # constant within each block
        assert floor <= value <= init
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # non-increasing
    changes = [t for t in steps[1:] if values[t] != values[t - 1]]
    assert all(t % every == 0 for t in changes)  # changes only at block boundaries


@pytest.mark.parametrize("case", DECAY_CASES[:3], ids=case_id)
def test_exponential_decay_reaches_the_floor_and_stays(case):
    init, rate, floor, every = case
    schedule = exponential_decay(init, rate, floor, every)
    t_floor = every * math.ceil(math.log(init / floor) / rate / every)  # first update below floor
    assert schedule(t_floor) == floor
    assert schedule(t_floor - every) > floor
    assert all(schedule(t) == floor for t in (t_floor + 1, 10 * t_floor, 10**12))


def test_exponential_decay_depends_on_the_global_step_only():
    schedule = exponential_decay(1.0, 1e-3, 0.2, every=50)
    total = 1000

    def run(epoch_lengths: list[int]) -> list[float]:
        """Values a training loop sees when its ``total`` steps are split into these epochs."""
        seen, step = [], 0
        for length in epoch_lengths:
            for _ in range(length):
                seen.append(schedule(step))
                step += 1
        assert step == total
        return seen

    straight = run([total])
    assert run([37] * 27 + [1]) == straight
    assert run([100] * 10) == straight
    assert run([1] * 500 + [500]) == straight
    # a pure function of the step: no hidden state, any call order gives the same values
    order = list(range(total))
    random.Random(0).shuffle(order)
    shuffled = {t: schedule(t) for t in order}
    assert [shuffled[t] for t in range(total)] == straight
    # and a restart at step 640 (a resumed checkpoint) continues exactly
    resumed = exponential_decay(1.0, 1e-3, 0.2, every=50)
    assert [resumed(t) for t in range(640, total)] == straight[640:]


def test_constant_schedule():
    schedule = constant(0.7)
    assert {schedule(t) for t in (0, 1, 99, 10**9)} == {0.7}


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_constant_rejects_non_positive_values(value):
    with pytest.raises(ValueError):
        constant(value)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(init=0.0, rate=1e-3, floor=0.5),
        dict(init=-1.0, rate=1e-3, floor=0.5),
        dict(init=1.0, rate=1e-3, floor=0.0),
        dict(init=1.0, rate=1e-3, floor=-0.5),
        dict(init=1.0, rate=-1e-3, floor=0.5),
        dict(init=1.0, rate=1e-3, floor=0.5, every=0),
        dict(init=1.0, rate=1e-3, floor=0.5, every=-3),
    ],
)
def test_exponential_decay_rejects_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        exponential_decay(**kwargs)


# ------------------------------------------------------------------------ learnable temperature


@pytest.mark.parametrize("init, min_value", [(1.0, 0.0), (0.5, 0.1), (3.0, 2.9)])
def test_learnable_temperature_starts_at_init(init, min_value):
    tau = LearnableTemperature(init, min_value)
    assert float(tau().detach()) == pytest.approx(init, rel=1e-6)
    assert [name for name, _ in tau.named_parameters()] == ["log_excess"]


@pytest.mark.parametrize("init, min_value", [(0.5, 0.5), (0.1, 0.2), (0.0, 0.0), (-1.0, 0.0)])
def test_learnable_temperature_rejects_init_at_or_below_floor(init, min_value):
    with pytest.raises(ValueError):
        LearnableTemperature(init, min_value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("min_value", [0.0, 0.05])
@pytest.mark.parametrize("log_value", [-1e4, -1000.0, -200.0, -104.0, -50.0, 0.0, 10.0])
def test_learnable_temperature_is_positive_for_any_parameter_value(dtype, min_value, log_value):
    tau = LearnableTemperature(1.0, min_value).to(dtype)
    with torch.no_grad():
        tau.log_excess.fill_(log_value)
    value = tau()
    assert value.dtype == dtype
    assert torch.isfinite(value) and value > 0 and value >= min_value


def test_learnable_temperature_gradient_flows():
    tau = LearnableTemperature(0.8, min_value=0.1).double()
    value = tau()
    value.backward()
    # d tau / d log_excess = exp(log_excess) = tau - min_value
    assert float(tau.log_excess.grad) == pytest.approx(float(value.detach()) - 0.1, rel=1e-12)

    # and through a relaxed density scored at the learnable temperature
    tau.zero_grad()
    logits = torch.tensor([[0.3, -1.0, 2.0]], dtype=torch.float64)
    torch.manual_seed(0)
    dist = ExpConcrete(tau(), logits)
    y = dist.rsample((32,))
    loss = -dist.log_prob(y.detach()).mean() + y.exp()[..., 0].mean()
    loss.backward()
    grad = tau.log_excess.grad
    assert grad is not None and torch.isfinite(grad) and grad != 0


def test_learnable_temperature_state_dict_round_trip():
    tau = LearnableTemperature(0.9, min_value=0.2)
    with torch.no_grad():
        tau.log_excess.fill_(-1.3)
    restored = LearnableTemperature(5.0, min_value=0.2)
    restored.load_state_dict(tau.state_dict())
    assert (
        float(restored().detach())
        == float(tau().detach())
        == pytest.approx(0.2 + math.exp(-1.3), rel=1e-6)
    )
