"""Communication backends behind the IR's collective operators (GB/T 42382.2 Tables 8-14).

A kernel of a communication operator calls ``ctx.comm``, an object with the small
:class:`CommBackend` interface (``base``). Two implementations agree value for value:

* :class:`SimulatedGroup` — N ranks as threads of one process, the numpy
  reference. It reduces in rank order in the input's dtype, checks that every rank
  makes the same call (operator, reduce type, root, dtype, shape), gives ``send``
  rendezvous semantics (it returns once the peer has received) and reports a
  deadlock the moment every live rank is blocked, naming what each one waits for.
* :class:`TorchDistributedBackend` — one rank of a real ``torch.distributed``
  process group over gloo on 127.0.0.1, imported lazily.

:func:`run_collective` runs ``fn(ctx)`` on every rank of a group of either kind and
returns the per-rank results; it is how tests and users run IR operators on a group.

Reduction semantics shared by both: ``sum``/``prod`` wrap around for integers as
two's complement does; ``avg`` is the sum divided by the world size in the same
dtype and is only defined for floating dtypes; ``reduce`` leaves the input
unchanged on non-root ranks; ``reduce_scatter`` splits the reduced array into
``world_size`` equal blocks along axis 0; ``allgather`` concatenates along axis 0.
"""

from ptmpack.ir.comm_backends.base import (
    BACKENDS,
    REDUCE_TYPES,
    CommBackend,
    CommError,
    check_peer,
    check_rank,
    check_reduce_type,
    numpy_dtype,
    reduce_arrays,
    split_rows,
)
from ptmpack.ir.comm_backends.gloo import TorchDistributedBackend, free_port
from ptmpack.ir.comm_backends.launch import RemoteTraceback, run_collective, spawn_ranks
from ptmpack.ir.comm_backends.simulated import SimulatedComm, SimulatedGroup

__all__ = [
    "BACKENDS", "REDUCE_TYPES", "CommBackend", "CommError", "RemoteTraceback", "SimulatedComm", "SimulatedGroup",
    "TorchDistributedBackend", "check_peer", "check_rank", "check_reduce_type", "free_port", "numpy_dtype",
    "reduce_arrays", "run_collective", "spawn_ranks", "split_rows",
]
