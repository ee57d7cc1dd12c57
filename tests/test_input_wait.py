"""Input-wait accounting and the automatic loader worker count (issue: keep accelerators busy)."""

import logging
import time

import jax
import jax.numpy as jnp
import pytest

from ssljax import input_wait
from ssljax.data import workers


def _step_fn():
    """A jitted 'train step' of ~10-30 ms on this CPU (a chain of matrix products)."""

    @jax.jit
    def step(x):
        for _ in range(6):
            x = jnp.tanh(x @ x) / 64.0
        return x

    x = jnp.ones((512, 512), jnp.float32)
    step(x).block_until_ready()  # compile outside the measurement
    return step, x


def _measure(source_delay_s: float, steps: int = 12) -> tuple[float, float]:
    step, x = _step_fn()
    start = time.perf_counter()
    step(x).block_until_ready()
    step_s = time.perf_counter() - start

    def source():
        while True:
            if source_delay_s:
                time.sleep(source_delay_s)
            yield x

    meter = input_wait.InputWaitMeter()
    batches = source()
    meter.reset()
    for _ in range(steps):
        out = step(meter.next(batches))
        meter.dispatched(out)
    out.block_until_ready()
    return meter.share(), step_s


def test_slow_input_shows_as_a_large_share():
    share, step_s = _measure(source_delay_s=0.2)
    # The source takes 0.2 s a batch, the step a fraction of that: most wall time is waiting.
    assert step_s < 0.1, f"the test's step took {step_s:.3f} s; it must be cheaper than input"
    assert share > 0.5, share


def test_fast_input_shows_as_a_small_share():
    # An instant source: the host runs at most MAX_STEPS_AHEAD steps ahead, then waits for the
    # device -- which is not input time, so the share stays near zero.
    share, _ = _measure(source_delay_s=0.0)
    assert share < 0.1, share


def test_run_ahead_is_bounded():
    meter = input_wait.InputWaitMeter()
    waited = []

    class Output:
        def __init__(self, i):
            self.i = i

        def block_until_ready(self):
            waited.append(self.i)

    for i in range(5):
        meter.dispatched(Output(i))
    # Each step beyond MAX_STEPS_AHEAD waits for the one dispatched that many steps before it.
    assert waited == list(range(5 - input_wait.MAX_STEPS_AHEAD))


def test_share_with_a_fake_clock_and_the_warning(caplog):
    now = [0.0]
    meter = input_wait.InputWaitMeter(clock=lambda: now[0])

    def slow():
        while True:
            now[0] += 3.0  # 3 s blocked in next()
            yield 0

    it = slow()
    meter.next(it)
    now[0] += 1.0  # 1 s of stepping
    assert meter.share() == pytest.approx(0.75)
    with caplog.at_level(logging.WARNING):
        assert not meter.warn_if_starved(0.75, step=10, num_workers=0)  # first high interval
        assert meter.warn_if_starved(0.75, step=20, num_workers=0)  # second in a row: warn
        assert not meter.warn_if_starved(0.75, step=30, num_workers=0)  # said once
    assert "data.num_workers (now 0)" in caplog.text
    assert not meter.warn_if_starved(0.05, step=40, num_workers=0)


@pytest.mark.parametrize(
    "requested, dataset, platform, cores, procs, expected",
    [
        (4, "image_folder", "gpu", 16, 1, 4),  # an explicit value wins
        (0, "image_folder", "gpu", 16, 1, 0),
        (-1, "digits", "gpu", 16, 1, 0),  # in memory
        (-1, "image_folder", "cpu", 2, 1, 0),  # XLA:CPU uses every core for the step
        (-1, "image_folder", "gpu", 16, 1, 15),
        (-1, "imagenet2012", "tpu", 240, 1, 32),  # capped
        (-1, "image_folder", "gpu", 16, 8, 1),  # 8 processes share 16 cores
        (-1, "image_folder", "gpu", 2, 4, 1),  # never 0 on an accelerator host
    ],
)
def test_automatic_worker_count(requested, dataset, platform, cores, procs, expected):
    n, reason = workers.resolve_num_workers(
        requested, dataset=dataset, platform=platform, cores=cores, local_processes=procs
    )
    assert n == expected, reason
    assert reason.startswith("auto" if requested == -1 else "as configured")


def test_worker_count_errors_and_environment():
    with pytest.raises(ValueError, match="data.num_workers=-2"):
        workers.resolve_num_workers(-2, dataset="image_folder", platform="gpu")
    assert workers.local_process_count({}) == 1
    assert workers.local_process_count({"SLURM_NTASKS_PER_NODE": "4(x2)"}) == 4
    assert workers.local_process_count({"LOCAL_WORLD_SIZE": "8"}) == 8
    assert workers.available_cores() >= 1
