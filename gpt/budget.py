"""--time-budget: the run times its own first steps and evaluations, then takes as many steps
as fit in the seconds it was given.

The timed steps are steps of the run it then chooses, so that `--max-iters N` repeats it
exactly: with a learning rate that decays over the run's length, they are taken during the
warm-up, whose rates do not depend on that length.
"""

from __future__ import annotations

import math
import statistics

from .errors import RunStops

MEASURED_STEPS = 100  # the most steps timed before the run's length is chosen
FIRST_STEPS_LEFT_OUT = 2  # slower than the rest (the first allocations, cold caches): not timed
# Of the time left: the steps' speed wanders between the measure and the end (on a shared
# machine by more than this: benchmarks/RESULTS.md, "Five minutes of Shakespeare").
MARGIN = 0.95


def measured_steps(decay_lr: bool, warmup_iters: int, lr_decay_iters: int | None) -> int:
    """How many of its first steps a run times before it chooses its length: all of them
    within the warm-up where the learning rate decays over the run's length."""
    if not decay_lr or lr_decay_iters:  # (the rates do not depend on the run's length)
        return MEASURED_STEPS
    return min(MEASURED_STEPS, warmup_iters)


def step_and_evaluation_seconds(step_seconds: list[float], session_seconds: float,
                                evaluations: int) -> tuple[float, float]:
    """What a step and an evaluation take, from a session's first steps (each step's seconds)
    and its time so far: the mean step, the first ones left out; the time that was not in
    steps, shared among the evaluations (the loop's other work, checkpoints included). The
    mean, not the median: the run's length is the sum of its steps, the few slow ones
    included (benchmarks/RESULTS.md has a run that the median made end late)."""
    step_s = statistics.fmean(step_seconds[FIRST_STEPS_LEFT_OUT:] or step_seconds)
    return step_s, (session_seconds - sum(step_seconds)) / max(evaluations, 1)


def steps_that_fit(seconds_left: float, step: int, step_seconds: float, eval_seconds: float, eval_interval: int,
                   last_eval_seconds: float | None = None) -> int:
    """The run's length, in steps, that ends within seconds_left from `step`, a step taking
    step_seconds and an evaluation (every eval_interval steps) eval_seconds, and the one at
    the end last_eval_seconds (default: eval_seconds; more where it covers the whole val
    split). A RunStops error where not one more step and the last evaluation fit."""
    left = MARGIN * seconds_left
    last_eval_seconds = eval_seconds if last_eval_seconds is None else last_eval_seconds

    def seconds(steps: int) -> float:  # `steps` more steps, and the evaluations from here to the end
        along_the_way = (step + steps - 1) // eval_interval - (step - 1) // eval_interval
        return steps * step_seconds + along_the_way * eval_seconds + last_eval_seconds

    if seconds(1) > left:
        raise RunStops(f"the --time-budget is too small: {seconds_left:.1f}s are left at step {step}, where a step "
                       f"takes {1000 * step_seconds:.1f}ms and the last evaluation {last_eval_seconds:.1f}s")
    fits, too_many = 1, math.ceil(left / step_seconds) + 1
    while too_many - fits > 1:  # seconds() grows with the steps: bisect
        middle = (fits + too_many) // 2
        fits, too_many = (middle, too_many) if seconds(middle) <= left else (fits, middle)
    return step + fits
