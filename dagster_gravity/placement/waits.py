"""How long a step would wait for a slot in a busy compute pool.

Dask's `worker_objective` estimates when a task could *start* on each worker from that
worker's occupancy; this is the same idea for a compute pool of ``slots`` slots: its
running steps free their slots as they end (each after its expected remaining time), the
steps already queued for it take the slots that free first, in order, and the step asking
gets the next one.

Expected durations come from history (the executor reads each step's earlier runs); a step
never seen before is expected to take `DEFAULT_STEP_SECONDS`.
"""

from __future__ import annotations

import heapq
from typing import Sequence

# Expected duration of a step with no history: Dask's `unknown-task-duration` (500ms). Short,
# because a copy cannot be taken back but a wait can: a full compute pool is waited for first,
# and as its running steps outlast this guess the overrun rule below raises their expected
# remaining time until moving wins (a 10 s guess sent a 50 MB copy over the WAN to save a
# wait of 1 s on every first run of a job).
DEFAULT_STEP_SECONDS = 0.5

# A step running past its expected duration is expected to need this fraction of what it
# has run so far again (so the estimate grows the longer it overruns), at least MIN_REMAINING.
OVERRUN_FRACTION = 0.25
MIN_REMAINING_SECONDS = 0.1


def remaining_seconds(expected: float, elapsed: float) -> float:
    """Expected seconds left for a step expected to take `expected` that has run `elapsed`."""
    if elapsed < expected:
        return max(expected - elapsed, MIN_REMAINING_SECONDS)
    return max(OVERRUN_FRACTION * elapsed, MIN_REMAINING_SECONDS)


def expected_wait(slots: int, running_remaining: Sequence[float], queued: Sequence[float] = ()) -> float:
    """Seconds until a new step gets a slot in a compute pool.

    ``slots``: the pool's slot count; ``running_remaining``: expected seconds left for each
    step running there; ``queued``: expected durations of the steps waiting for it ahead of
    the new one, in order. 0 when a slot is free now and nothing is queued.
    """
    if slots <= 0:
        raise ValueError(f"expected_wait: slots is {slots}; expected at least 1")
    # when each of the pool's slots frees: the free ones now, then at the running steps' ends
    # (the earliest ends: a backend never runs more steps than slots)
    heap = ([0.0] * max(0, slots - len(running_remaining)) + sorted(max(0.0, r) for r in running_remaining))[:slots]
    heapq.heapify(heap)
    for duration in queued:
        start = heapq.heappop(heap)
        heapq.heappush(heap, start + max(0.0, duration))
    return heap[0]
