"""Run independent pieces of work (vectorizer chunks) as Ray tasks, in order, with bounded memory."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ray


def ray_map(
    fn: Callable[[Any], Any], items: Iterable[Any], num_cpus: float = 1, max_in_flight: int | None = None
) -> Iterator[Any]:
    """Like ``map(fn, items)`` but each call is a Ray task; results come back in input order.

    At most ``max_in_flight`` tasks (default: twice the cluster's CPUs) are pending, so a raster with
    millions of chunks never holds all their results in the object store at once.
    """
    remote_fn = ray.remote(num_cpus=num_cpus)(fn)
    limit = max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: deque[ray.ObjectRef] = deque()
    for item in items:
        pending.append(remote_fn.remote(item))
        if len(pending) >= limit:
            yield ray.get(pending.popleft())
    while pending:
        yield ray.get(pending.popleft())
