"""The suite's own scheduling (conftest.worker_chunks): no test lost, slow ones first."""

from hypothesis import given, strategies as st

from conftest import worker_chunks


class Item:
  def __init__(self, name: str, slow: bool):
    self.name, self.slow = name, slow

  def get_closest_marker(self, name: str):
    return object() if name == "slow" and self.slow else None


def _chunks(items: list, workers: int) -> list[list]:
  """What pytest-xdist's worksteal hands each worker first (its initial split)."""
  out, left = [], list(items)
  for w in range(workers):
    size = len(left) // (workers - w)
    out.append(left[:size])
    left = left[size:]
  return out


def test_each_worker_starts_on_its_share_of_the_slow_tests():
  items = [Item(f"s{i}", True) for i in range(3)] + [Item(f"q{i}", False) for i in range(7)]
  ordered = worker_chunks(items, 2)
  assert [i.name for i in ordered] == ["s0", "s2", "q0", "q1", "q2",
                                       "s1", "q3", "q4", "q5", "q6"]
  assert [[i.name for i in c] for c in _chunks(ordered, 2)] == [
      ["s0", "s2", "q0", "q1", "q2"], ["s1", "q3", "q4", "q5", "q6"]]
  assert [i.name for i in worker_chunks(items, 1)] == [i.name for i in items]  # no xdist


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 5))
def test_every_test_is_kept_once_and_each_chunk_runs_slow_first(flags, workers):
  items = [Item(str(i), slow) for i, slow in enumerate(flags)]
  ordered = worker_chunks(items, workers)
  assert sorted(i.name for i in ordered) == sorted(i.name for i in items)
  if len(items) // workers < -(-sum(flags) // workers):
    return  # more slow tests than a chunk holds: kept, but not dealt evenly
  chunks = _chunks(ordered, workers)
  for chunk in chunks:
    kinds = [i.slow for i in chunk]
    assert kinds == sorted(kinds, reverse=True)  # slow ones, then short ones
  slow_counts = [sum(i.slow for i in c) for c in chunks]
  assert max(slow_counts) - min(slow_counts) <= 1
