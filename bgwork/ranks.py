"""Which process of a data-parallel run this is, and the few collectives bgwork itself needs.

Under `accelerate launch` (bgwork.launch) every rank runs the same code; these helpers are no-ops in a plain,
single process, so the in-process run is untouched:

    share(specs)            # this rank's part of a list: items rank, rank + N, ...
    unshare(all_gather(x))  # the whole list again, in its original order, on every rank
    same_as_rank0(value)    # rank 0's value everywhere (a timestamped dir name must not differ by a second)
    is_main()               # rank 0: the one that writes shared files
    launched()              # started by bgwork.launch (also with one process)

Every rank must call a collective (all_gather, same_as_rank0) at the same point, in the same order.
"""

from __future__ import annotations

import os

LAUNCHED_ENV = "BGWORK_LAUNCHED"  # set by bgwork.launch in the processes it starts


def launched() -> bool:
    """A rank that bgwork.launch started: the notebook process holds the run dir's lock and shows the progress."""
    return os.environ.get(LAUNCHED_ENV) == "1"


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist else 1


def rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist else 0


def is_main() -> bool:
    return rank() == 0


def all_gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (any picklable object)."""
    dist = _dist()
    if not dist:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def same_as_rank0(obj):
    dist = _dist()
    if not dist:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share(items: list) -> list:
    """This rank's items: every world_size-th, starting at its rank (shares differ in length by one at most)."""
    return list(items[rank()::world_size()])


def unshare(shares: list[list]) -> list:
    """The inverse of `share` over all ranks' shares (as `all_gather` returns them)."""
    n = len(shares)
    out = [None] * sum(map(len, shares))
    for r, part in enumerate(shares):
        out[r::n] = part
    return out
