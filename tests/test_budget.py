"""--time-budget: the length a run chooses from its own timings, and that --max-iters of that
length repeats it exactly. (Whether a run ends within its budget is a matter of the machine:
benchmarks/RESULTS.md measures that, not these tests.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gpt import train
from gpt.budget import MARGIN, MEASURED_STEPS, steps_that_fit
from gpt.config import TrainConfig
from gpt.errors import RunStops, UserError

TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "2", "--sample-tokens", "0", "--workers", "1"]


def run_train(*args: object) -> int:
    return train.main([str(a) for a in args])


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("step, eval_interval", [(50, 250), (100, 100), (0, 7), (13, 1)])
def test_the_steps_that_fit_are_the_most_whose_steps_and_evaluations_fit(step, eval_interval):
    step_s, eval_s, left = 0.04, 1.5, 120.0

    def seconds(steps: int) -> float:  # counted the slow way: every step, and each evaluation at its step
        evaluations = sum(1 for s in range(step, step + steps) if s % eval_interval == 0)
        return steps * step_s + (evaluations + 1) * eval_s

    end = steps_that_fit(left, step, step_s, eval_s, eval_interval)
    assert seconds(end - step) <= MARGIN * left < seconds(end - step + 1)


def test_a_last_evaluation_that_costs_more_leaves_time_for_fewer_steps():
    """With --eval-all-val the last evaluation covers the whole val split: the steps that fit
    make room for what it costs, and no more."""
    step_s, eval_s, left = 0.04, 1.5, 120.0
    end = steps_that_fit(left, 50, step_s, eval_s, 10**6, last_eval_seconds=6.0)
    assert (end - 50) * step_s + 6.0 <= MARGIN * left < (end - 50 + 1) * step_s + 6.0


def test_the_last_evaluation_is_scaled_by_its_batches():
    batches = {"train": [0] * 20, "val": [0] * 20, train.WHOLE_VAL: [0] * 64}
    assert train.last_evaluation_scale(TrainConfig(eval_iters=20), batches) == 1.0
    assert train.last_evaluation_scale(TrainConfig(eval_iters=20, eval_all_val=True), batches) == (20 + 64) / 40


def test_a_budget_that_leaves_no_room_for_a_step_and_the_last_evaluation_stops_the_run():
    with pytest.raises(RunStops, match=r"^the --time-budget is too small: 2\.0s are left at step 50, where a step "
                                       r"takes 40\.0ms and the last evaluation 2\.5s$"):
        steps_that_fit(2.0, 50, 0.04, 2.5, 250)


def test_the_steps_timed_are_taken_where_the_learning_rate_does_not_depend_on_the_runs_length():
    assert TrainConfig().steps_to_time() == 0  # no budget
    assert TrainConfig(time_budget=60).steps_to_time() == MEASURED_STEPS  # baby: warm-up 100
    assert TrainConfig(time_budget=60, warmup_iters=20).steps_to_time() == 20
    assert TrainConfig(time_budget=60, warmup_iters=0, decay_lr=False).steps_to_time() == MEASURED_STEPS
    assert TrainConfig(time_budget=60, warmup_iters=0, lr_decay_iters=500).steps_to_time() == MEASURED_STEPS
    with pytest.raises(UserError, match="give --warmup-iters 5 or more"):
        TrainConfig(time_budget=60, warmup_iters=3).validate()


@pytest.mark.parametrize("flags, message", [
    (["--time-budget", "60", "--max-iters", "100"], "--time-budget chooses the number of steps, and --max-iters"),
    (["--time-budget", "0"], "--time-budget must be a number of seconds above 0, got 0.0"),
    (["--time-budget", "nan"], "--time-budget must be a number of seconds above 0, got nan"),
    (["--time-budget", "60", "--warmup-iters", "2"], "give --warmup-iters 5 or more"),
])
def test_bad_budgets_are_one_line_errors(text_file, tmp_path, capsys, flags, message):
    assert run_train("--data", text_file, "--out-dir", tmp_path / "run", *TINY, *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_budget_run_says_its_length_and_max_iters_of_it_repeats_the_run(text_file, tmp_path, capsys):
    budget = tmp_path / "budget"
    assert run_train("--data", text_file, "--out-dir", budget, *TINY, "--time-budget", "4", "--warmup-iters", "10",
                     "--eval-interval", "40") == 0
    said = re.search(r"--time-budget 4: (\d+) steps \(a step takes [\d.]+ ms, an evaluation [\d.]+ s\); "
                     r"--max-iters (\d+) repeats this run", capsys.readouterr().out)
    steps = int(said.group(1))
    assert said.group(2) == said.group(1) and steps > 10  # (10 steps were timed)
    config = json.loads((budget / "config.json").read_text())
    assert config["max_iters"] == steps and config["time_budget"] is None and rows(budget)[-1]["step"] == steps
    again = tmp_path / "again"
    assert run_train("--data", text_file, "--out-dir", again, *TINY, "--max-iters", steps, "--warmup-iters", "10",
                     "--eval-interval", "40") == 0
    timings = ("elapsed_s", "tokens_per_s")
    assert [{k: v for k, v in row.items() if k not in timings} for row in rows(again)] == \
        [{k: v for k, v in row.items() if k not in timings} for row in rows(budget)]


def test_a_budget_too_small_for_an_evaluation_is_refused_in_one_line(text_file, tmp_path, capsys):
    assert run_train("--data", text_file, "--out-dir", tmp_path / "run", *TINY, "--time-budget", "0.001",
                     "--warmup-iters", "10", "--quiet") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the --time-budget is too small: ") and err.count("\n") == 1
