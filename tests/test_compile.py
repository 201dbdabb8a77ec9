"""``--compile``: the training step through ``torch.compile``. One compilation for a run whose temperature
anneals, KL weight warms up and learning rate decays; a compiled run stopped and resumed ends bitwise where
an unbroken compiled run does, and its checkpoints resume eagerly; compiled and eager runs of one seed train
to the same bound within the seeds' spread; ``auto``'s choice and every fallback are one line.

The compile tests use the smallest model and share Inductor's cache within the run (the first compile of
this test file takes ~10-20 s on two cores, later ones a few seconds)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from cli_helpers import FAST, dvae, last_json
from discrete_vae import compiling
from discrete_vae.checkpoint import load_checkpoint
from discrete_vae.compiling import BREAK_EVEN, Step, should_compile
from discrete_vae.estimators import ESTIMATORS

pytestmark = pytest.mark.usefixtures("one_thread")
# annealing every 10 steps, KL warm-up over half the run, the cosine learning rate: all change per step
SCHEDULES = ["--anneal-every", 10, "--anneal-rate", 0.01, "--kl-warmup", 0.5, "--lr-schedule", "cosine"]
CPU = torch.device("cpu")


def test_a_compiled_run_compiles_once(tmp_path, capsys):
    torch._dynamo.reset()
    counters.clear()
    run = dvae(capsys, "train", *FAST, *SCHEDULES, "--steps", 300, "--eval-every", 150, "--compile", "on",
               "--out", tmp_path / "r")
    assert last_json(run.out)["compiled"] is True and last_json(run.out)["compile_seconds"] > 0, run.err
    assert counters["stats"]["unique_graphs"] == 1  # 300 steps of changing τ, KL weight and lr: one graph
    assert not counters["recompiles"]


def test_a_compiled_run_resumes_exactly_and_its_checkpoint_eagerly(tmp_path, capsys):
    """Stopped at step 150 and resumed, a compiled run ends bitwise where an unbroken one does (the
    schedules here are functions of the step alone, as a split run needs)."""
    args = [*FAST, "--anneal-every", 10, "--anneal-rate", 0.01, "--lr-schedule", "constant",
            "--eval-every", 150, "--checkpoint-every", 150, "--compile", "on"]
    dvae(capsys, "train", *args, "--steps", 300, "--out", tmp_path / "whole")
    split = tmp_path / "split"
    dvae(capsys, "train", *args, "--steps", 150, "--out", split)
    dvae(capsys, "train", "--resume", split, "--steps", 300)
    a, b = (load_checkpoint(p / "last.safetensors")["model"] for p in (tmp_path / "whole", split))
    assert all(torch.equal(a[k], b[k]) for k in a)
    eager = dvae(capsys, "train", "--resume", split, "--steps", 330, "--compile", "off")  # mode-free
    assert last_json(eager.out)["compiled"] is False and "compiling" not in eager.err


def test_a_compiled_run_follows_the_eager_run_of_its_seed(tmp_path, capsys):
    """Random numbers come from torch's generator in both modes, so the compiled run of a seed differs from
    the eager one by float rounding only: its bound within 0.001 nats, where another seed lands further."""
    args = [*FAST, "--steps", 300, "--eval-every", 300, "--lr-schedule", "constant"]
    eager = [last_json(dvae(capsys, "train", *args, "--seed", s, "--compile", "off",
                            "--out", tmp_path / f"eager{s}").out)["nll"] for s in (0, 1)]
    compiled = last_json(dvae(capsys, "train", *args, "--seed", 0, "--compile", "on",
                              "--out", tmp_path / "compiled").out)
    assert compiled["compiled"] is True
    assert abs(compiled["nll"] - eager[0]) < 1e-3 < abs(eager[1] - eager[0]), (compiled["nll"], eager)


def test_auto_compiles_long_runs_where_it_pays_and_says_why_not(monkeypatch, capsys):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert not should_compile("auto", CPU, BREAK_EVEN - 1, 1, "dvae train")  # short: silently eager
    assert capsys.readouterr().err == ""
    assert should_compile("auto", CPU, BREAK_EVEN, 1, "dvae train")
    assert not should_compile("off", CPU, 10**6, 1, "dvae train")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not should_compile("auto", CPU, 10**6, 1, "dvae train")
    assert should_compile("on", CPU, 10, 1, "dvae train")  # on: regardless
    assert not should_compile("on", CPU, 10**6, 2, "dvae train")  # torchrun: eager
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "(AVX2) has no AVX-512" in err[0] and "torchrun" in err[1]


def test_without_a_cxx_compiler_the_step_runs_eagerly_and_says_so(monkeypatch, capsys):
    from torch._inductor import config

    monkeypatch.delenv("CXX", raising=False)
    with config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
        assert compiling.cxx_compiler() is None
        assert not should_compile("on", CPU, 10**6, 1, "dvae train")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "no C++ compiler" in err[0]


def test_a_step_that_cannot_be_compiled_falls_back_with_one_line_and_the_same_numbers(capsys):
    """A graph break under ``fullgraph=True``: one line naming it, the RNG restored, and the eager
    function's result."""
    def step(x: torch.Tensor, scale: float) -> torch.Tensor:
        y = x * torch.rand(3) * scale
        torch._dynamo.graph_break()  # what an untraceable call does
        return y + 1

    torch._dynamo.reset()
    torch.manual_seed(0)
    want = step(torch.ones(3), 2.0)
    torch.manual_seed(0)
    fallback = Step(step, True, CPU, "dvae train", tensors=(1,))
    got = fallback(torch.ones(3), 2.0)
    assert torch.equal(got, want) and not fallback.compiled
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("dvae train: compiling the training step failed (") and "eagerly" in err[-1]
    assert len(err) == 2  # "compiling ..." then the failure


def test_an_unknown_compile_mode_is_one_line(tmp_path, capsys):
    from discrete_vae.cli import main

    assert main(["train", *map(str, FAST), "--compile", "yes", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dvae train: error: --compile must be one of auto, on, off, got 'yes'"]


def test_sop_train_compiles_its_step(tmp_path, capsys):
    run = dvae(capsys, "sop", "train", "--dataset", "digits", "--units", 16, "--steps", 40,
               "--eval-every", 40, "--val-samples", 4, "--test-samples", 4, "--compile", "on",
               "--device", "cpu", "--out", tmp_path / "sop")
    result = last_json(run.out)
    assert result["compiled"] is True and result["nll"] > 0


def test_many_compiled_steps_of_one_function_each_compile():
    """Every run's step is a closure of the same function over its own model (of other sizes here: another
    graph each); each Step compiles its own copy, so Dynamo's limit on graphs per code object (here lowered
    to 2) never sends a later run back to eager."""
    def make(net: torch.nn.Module):
        def step(x: torch.Tensor, scale: float) -> torch.Tensor:
            return net(x).relu() * scale
        return step

    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=2):
        nets = [torch.nn.Linear(4, width) for width in (3, 4, 5, 6)]
        steps = [Step(make(net), True, CPU, "dvae train", tensors=(1,)) for net in nets]
        for net, step in zip(nets, steps, strict=True):
            torch.testing.assert_close(step(torch.ones(2, 4), 0.5), net(torch.ones(2, 4)).relu() * 0.5)
    assert all(step.compiled for step in steps)


@pytest.mark.parametrize("name", [n for n in ESTIMATORS.names() if ESTIMATORS.get(n).separable_aux])
def test_a_separable_aux_loss_takes_one_backward_pass_to_the_same_gradients(name):
    """What the compiled step relies on for such estimators (NVIL): the aux loss reaches only the
    estimator's own parameters and the surrogate none of them, so ``(loss + aux_loss).backward()`` gives
    the gradients of the two separate passes (the eager step's), bit for bit."""
    from discrete_vae.config import TrainConfig
    from discrete_vae.loop import estimator_gradients
    from discrete_vae.recipe import build_model

    torch.manual_seed(0)
    model = build_model(TrainConfig.of(latent="4x3", hidden=(16,), estimator=name), 20)
    x = (torch.rand(8, 20) < 0.4).float()
    model.prepare(x)
    own = list(model.estimator.parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}  # the estimator's running averages too
    grads = []
    for joint in (False, True):
        model.load_state_dict(state)
        with torch.random.fork_rng():
            terms = model(x, 1.0, 2)
        model.zero_grad(set_to_none=True)
        if joint:
            (terms.loss + terms.aux_loss).backward()
        else:
            aux = estimator_gradients(own, terms.aux_loss)
            terms.loss.backward()
            for p, g in zip(own, aux, strict=True):
                p.grad = g
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_each_step_gets_a_code_object_of_its_own_also_a_tasks_method():
    """Dynamo keeps its graphs on the code object: two runs' steps (functions, or a task's bound
    ``losses``) must not share one, while computing the same."""
    from discrete_vae.compiling import own_code

    class Task:
        def __init__(self, scale):
            self.scale = scale

        def losses(self, x):
            return self.scale * x

    first, second = Task(2.0), Task(3.0)
    a, b = own_code(first.losses), own_code(second.losses)
    assert a.__self__ is first and b.__self__ is second
    assert a.__func__.__code__ is not Task.losses.__code__
    assert a.__func__.__code__ is not b.__func__.__code__
    assert (a(1.0), b(1.0)) == (2.0, 3.0)

    def step(x):
        return x + 1

    copy = own_code(step)
    assert copy.__code__ is not step.__code__ and copy(1) == 2
