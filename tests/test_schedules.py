"""Sparsity schedules: the reference's cubic arithmetic, the exact-end default, others."""

import math

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import optax
import pytest

from jaxprune import keep_count
from jaxprune import schedules


def reference_events(target, total_steps, events, begin=0, initial=0.0, last_step=None):
  """SparseBERT's loop, transcribed from REFERENCE.md: {t: s_t} at every mask event."""
  freq = round(total_steps / events)
  n = total_steps // freq
  out = {}
  t = 0
  for _ in range(last_step or begin + total_steps + 5):
    t += 1  # incremented before the check
    if begin < t < begin + total_steps and (t - begin) % freq == 0:
      k = (t - begin) // freq
      out[t] = target + (initial - target) * (1 - k / n) ** 3
  return out


def test_reference_shortfall_50_steps_10_events():
  ref = schedules.cubic_sparsity(0.8, 50, events=10, reference=True)
  assert ref.event_steps == (5, 10, 15, 20, 25, 30, 35, 40, 45)
  assert ref.final_sparsity == 0.8 + (0.0 - 0.8) * (1 - 9 / 10) ** 3
  assert round(ref.final_sparsity, 10) == 0.7992
  assert ref.rounding == "reference"
  default = schedules.cubic_sparsity(0.8, 50, events=10)
  assert default.event_steps == ref.event_steps + (50,)
  assert default.final_sparsity == 0.8
  assert default.rounding == "exact"


def test_reference_figures_from_the_paper_setup():
  # s_f = 0.95: 0.55 at 25% of the run, 0.83 at 50%, 0.935 at 75%.
  s = schedules.cubic_sparsity(0.95, 10000, reference=True)
  assert [round(s.in_effect(t), 3) for t in (2500, 5000, 7500)] == [0.549, 0.831, 0.935]
  # MRPC on MiniLM: 684 steps, 100 events -> freq 7, 97 events, the last one at 679.
  mrpc = schedules.cubic_sparsity(0.9, 684, reference=True)
  assert len(mrpc.event_steps) == 97 and mrpc.event_steps[-1] == 679
  assert mrpc.final_sparsity == 0.9


@settings(max_examples=60, deadline=None)
@given(total=st.integers(1, 3000), events=st.integers(1, 150), begin=st.integers(0, 50),
       target=st.floats(0.0, 1.0), initial=st.sampled_from([0.0, 0.1]))
def test_reference_mode_is_bit_for_bit(total, events, begin, target, initial):
  if round(total / events) == 0:
    with pytest.raises(ValueError, match="freq"):
      schedules.cubic_sparsity(target, total, events=events, begin=begin, initial=initial,
                               reference=True)
    return
  s = schedules.cubic_sparsity(target, total, events=events, begin=begin, initial=initial,
                               reference=True)
  expected = reference_events(target, total, events, begin, initial)
  assert s.event_steps == tuple(expected)
  assert {t: s.sparsity(t) for t in s.event_steps} == expected  # exact float equality
  assert all(s.is_event(t) == (t in expected) for t in range(begin + total + 3))


@settings(max_examples=80, deadline=None)
@given(total=st.integers(1, 5000), events=st.integers(1, 200), begin=st.integers(0, 20),
       target=st.floats(0.0, 1.0))
def test_default_ends_exactly_at_target(total, events, begin, target):
  s = schedules.cubic_sparsity(target, total, events=events, begin=begin)
  steps = s.event_steps
  assert steps and steps[-1] <= begin + total and steps[0] > begin
  assert s.sparsity(steps[-1]) == target and s.final_sparsity == target
  values = [s.sparsity(t) for t in steps]
  assert all(a <= b for a, b in zip(values, values[1:]))  # monotone
  gaps = {b - a for a, b in zip((begin,) + steps, steps)}
  assert len(gaps) == 1  # evenly spaced, every freq steps
  # Every event of the reference is an event here, with the same value.
  if round(total / events):
    ref = schedules.cubic_sparsity(target, total, events=events, begin=begin,
                                   reference=True)
    assert set(ref.event_steps) <= set(steps)
    assert all(ref.sparsity(t) == s.sparsity(t) for t in ref.event_steps)


def test_in_effect_and_is_event():
  s = schedules.cubic_sparsity(0.5, 100, events=4)  # freq 25: events 25, 50, 75, 100
  assert s.event_steps == (25, 50, 75, 100)
  assert s.in_effect(0) == 0.0 and s.in_effect(24) == 0.0
  assert s.in_effect(25) == s.in_effect(49) == 0.5 * (1 - 0.75**3)
  assert s.in_effect(10**6) == 0.5
  assert s.is_event(50) and not s.is_event(51)


def test_constant_one_shot_and_from_fn():
  assert schedules.constant_sparsity(0.9).event_steps == (1,)
  assert schedules.constant_sparsity(0.0).event_steps == ()
  one = schedules.one_shot(0.7, step=10)
  assert one.event_steps == (10,) and one.in_effect(9) == 0.0 and one.in_effect(10) == 0.7
  lin = schedules.from_fn(optax.linear_schedule(0.0, 0.8, 100), [100, 50, 50])
  assert lin.event_steps == (50, 100)
  assert lin.sparsity(50) == pytest.approx(0.4) and lin.final_sparsity == pytest.approx(0.8)
  with pytest.raises(ValueError, match="1-based"):
    schedules.one_shot(0.5, step=0)


def test_as_schedule():
  assert schedules.as_schedule(0.5).event_steps == (1,)
  s = schedules.cubic_sparsity(0.5, 10)
  assert schedules.as_schedule(s) is s
  assert schedules.as_schedule(lambda t: 0.1 * t, events=[1, 2]).sparsity(2) == 0.2
  with pytest.raises(ValueError, match="needs `events`"):
    schedules.as_schedule(lambda t: 0.5)
  with pytest.raises(ValueError, match="only for"):
    schedules.as_schedule(s, events=[1])


def test_keep_count_rounding():
  assert keep_count(10, 0.9) == 1
  assert keep_count(10, 0.9, "reference") == 0  # 10 * (1 - 0.9) = 0.9999999999999998
  assert keep_count(589824, 0.95) == keep_count(589824, 0.95, "reference") == 29491
  assert keep_count(7, 0.0) == 7 and keep_count(7, 1.0) == 0
  with pytest.raises(ValueError):
    keep_count(7, 1.5)


@settings(max_examples=100, deadline=None)
@given(units=st.integers(1, 10**8), sparsity=st.floats(0.0, 1.0))
def test_keep_count_matches_reference_up_to_float_noise(units, sparsity):
  ref = math.floor(units * (1 - sparsity))
  assert keep_count(units, sparsity, "reference") == ref
  assert keep_count(units, sparsity) in (ref, ref + 1)
