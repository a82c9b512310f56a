"""The processes of a run launched with ``accelerate launch`` or ``torchrun``: who is who, which device, and
an exchange between them that never hangs.

A single process (the usual ``hf-attn-inspect batch ...`` or a notebook) is a "world" of one: rank 0,
nothing to exchange, no distributed package touched. When the launcher has set ``WORLD_SIZE`` above 1
(``torchrun``, ``accelerate launch``, which also set ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``), :func:`processes` reads the environment with accelerate's
:class:`~accelerate.PartialState` (which starts the process group: NCCL on GPUs, gloo on CPUs) and opens
one more, gloo, process group with a timeout for the run loop's own messages, so a rank that died
(its connection closes) or stopped answering (the timeout) makes the others fail with a one-line
:class:`~hf_attn_inspect.core.errors.DistributedError` instead of waiting for ever.

The timeout is :data:`TIMEOUT_ENV` (seconds, default :data:`DEFAULT_TIMEOUT_S`): the longest one process
may wait for the others at a meeting point, i.e. more than the time one shard takes.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Iterator, TypeVar

import torch

from ..core.errors import DistributedError, InputError

if TYPE_CHECKING:  # only its type; torch.distributed is imported when a run is launched distributed
    from torch.distributed import ProcessGroup

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "Processes",
    "alone",
    "launched_distributed",
    "process_device",
    "processes",
    "timeout_s",
]

#: Environment variable: seconds a process waits for the others at a meeting point before it gives up.
TIMEOUT_ENV = "HF_ATTN_INSPECT_TIMEOUT"

#: Default of :data:`TIMEOUT_ENV`: 30 minutes (torch.distributed's own default), more than any one shard takes.
DEFAULT_TIMEOUT_S = 1800.0

T = TypeVar("T")


def launched_distributed() -> bool:
    """True when this process is one of several launched together (``WORLD_SIZE`` above 1, as
    ``torchrun`` and ``accelerate launch`` set it, or a process group of several already started)."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            return True
    except ValueError:
        pass
    return bool(torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1)


def timeout_s() -> float:
    """Seconds to wait for the other processes at a meeting point (:data:`TIMEOUT_ENV`, default 1800)."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw in (None, ""):
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InputError(f"{TIMEOUT_ENV} must be a number of seconds above 0, got {raw!r}")
    return value


@dataclass
class Processes:
    """This process's place among the processes of one launch.

    ``rank`` (0 .. ``world_size`` - 1) and ``local_rank`` (the index on this machine, which picks the
    GPU); ``device`` is the device this rank should use (``cuda:<local_rank>`` on GPUs, else ``cpu``);
    ``timeout`` the seconds :meth:`exchange` waits for the others. Rank 0 is the main process: the one
    that checks and writes the output folder and shows progress.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    timeout: float = DEFAULT_TIMEOUT_S
    group: "ProcessGroup | None" = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes the run's outputs."""
        return self.rank == 0

    def exchange(self, item: T) -> list[T]:
        """Every rank's ``item`` (any picklable object), in rank order, on every rank.

        A meeting point: it returns when all ranks have called it. A rank that died makes it fail at
        once (its connection closes), one that does not arrive within :attr:`timeout` seconds makes it
        fail then; both raise :class:`DistributedError`. With one process it returns ``[item]``.
        """
        if self.world_size == 1:
            return [item]
        gathered: list[T | None] = [None] * self.world_size
        try:
            torch.distributed.all_gather_object(gathered, item, group=self.group)
        except Exception as exc:  # gloo raises RuntimeError/DistBackendError for a closed peer or a timeout
            raise DistributedError(
                f"rank {self.rank} of {self.world_size} lost contact with the other processes: one stopped, "
                f"or did not answer within {self.timeout:g} s ({TIMEOUT_ENV}) ({_first_sentence(exc)})"
            ) from None
        return gathered  # type: ignore[return-value]

    def share(self, item: T) -> T:
        """Rank 0's ``item``, on every rank (a meeting point like :meth:`exchange`)."""
        return self.exchange(item if self.is_main else None)[0]  # type: ignore[return-value]


def _first_sentence(exc: BaseException) -> str:
    """The first sentence of a torch.distributed error, without its C++ source location."""
    text = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", " ".join(str(exc).split()))
    return (text.split(". ")[0][:160] or type(exc).__name__).rstrip(".")


_CURRENT: Processes | None = None


def processes(device: str | None = None) -> Processes:
    """This process's :class:`Processes`; a world of one unless :func:`launched_distributed`.

    The first call of a distributed launch starts the process group through accelerate's
    ``PartialState`` (gloo when ``device`` is ``"cpu"``, no GPU is present, or the launch was
    ``accelerate launch --cpu``; else NCCL) and a gloo group with the :func:`timeout_s` timeout; later
    calls return the same object. Every rank must call it at the same point of the program.
    """
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    if not launched_distributed():
        return Processes(device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        from accelerate import PartialState
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InputError("launching on several processes needs the 'accelerate' package: pip install accelerate") from exc
    wait = timeout_s()
    cpu = (
        not torch.cuda.is_available()
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        or (device is not None and device.startswith("cpu"))
    )
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if not cpu and local >= torch.cuda.device_count():
        gpus = torch.cuda.device_count()
        raise InputError(
            f"process {local} on this machine has no GPU of its own (the machine has {gpus}); launch at most "
            f"{gpus} processes per machine (--nproc-per-node / --num_processes), or pass --device cpu"
        )
    try:
        state = PartialState(cpu=cpu, timeout=timedelta(seconds=wait))
        group = torch.distributed.new_group(backend="gloo", timeout=timedelta(seconds=wait))
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"could not join the other processes of the launch ({_first_sentence(exc)})") from None
    _CURRENT = Processes(
        rank=state.process_index, world_size=state.num_processes, local_rank=state.local_process_index,
        device="cpu" if state.device.type == "cpu" else str(state.device), timeout=wait, group=group,
    )
    return _CURRENT


@contextmanager
def alone() -> Iterator[Processes]:
    """Within the block this process is a world of one (rank 0, same device), so runs started there
    (:func:`~hf_attn_inspect.runs.sharded.run_sharded`) meet no other process: for work that only rank 0
    does after the shared part of a launch (the importance command's pruning curve and report). Yields
    that :class:`Processes`; the launch's own comes back when the block ends."""
    global _CURRENT
    before = _CURRENT
    single = Processes(device=before.device if before is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    _CURRENT = single
    try:
        yield single
    finally:
        _CURRENT = before


def process_device(device: str | None = None) -> str | None:
    """The device this process should run its model on: ``device`` as given in a single process (None
    keeps the caller's default); in a distributed launch, this rank's own device: ``cuda:<LOCAL_RANK>``
    for ``None`` or a bare ``"cuda"``, the CPU for ``"cpu"`` (or on a machine without GPU), and an
    explicit ``"cuda:N"`` as given."""
    if not launched_distributed():
        return device
    procs = processes(device)
    if device is None or device == "cuda":
        return procs.device
    return device
