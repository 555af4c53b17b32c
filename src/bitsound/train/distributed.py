"""Training on several processes with PyTorch's own engine (``torch.distributed``, DDP).

A run is started by ``torchrun --nproc-per-node N -m bitsound train ...`` (on one or many
machines) or by ``bitsound train --nproc N``, which starts the N processes on this machine with
the environment torchrun would give them (:func:`launch`). Each process then joins the process
group (:func:`session`: gloo on CPU, NCCL on CUDA, one GPU per process) and the one training
loop (:func:`bitsound.train.fit`) changes in these ways only:

- the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, which averages
  the gradients of the ranks after every backward pass;
- each epoch's examples come from a :class:`~torch.utils.data.DistributedSampler` (or, for
  ``train.balanced_sampling: true``, :class:`DistributedBalancedSampler`): one permutation (or
  one set of class-balanced draws) per epoch, the same on every rank, dealt out rank by rank, so
  the N local batches of ``batch_size / N`` examples make up one global batch of
  ``batch_size``. Seed 002's ``balanced_sampling: undersample`` runs in one process only and is
  refused before any work (:func:`check_config`);
- augmentation, mixup and dropout draw from generators seeded by (seed, epoch, rank) at every
  epoch start (:func:`seed_epoch`), so a run is a function of its seed and world size, and
  resuming needs no random state of the other ranks. Bitwise repeatable on CPU (gloo); NCCL's
  reductions and cuDNN's kernels are not bitwise deterministic, so GPU runs differ in the last
  bits from run to run;
- rank 0 validates, writes ``log.jsonl``, the checkpoints and ``model.pt``; the training loss
  of an epoch is the mean over every example every rank trained on (the examples
  DistributedSampler repeats to give every rank an equal share count twice), and rank 0's epoch
  record (validation metrics included) is sent to every rank, so early stopping and plateau
  schedules decide the same on all of them;
- rank 0 checks the clips and fills the feature cache first; the others wait and then read it
  (:func:`main_first`). Without a cache every rank computes its own features.

BatchNorm layers normalise with the statistics of their rank's local batch (DDP's default;
SyncBatchNorm has no CPU implementation), and rank 0's running statistics are the ones kept.
Only rank 0 logs below ERROR and prints a failure that all ranks share (:func:`quiet_other_ranks`).

A single process (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) runs exactly as before: every helper
here is then a no-op.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

from bitsound.data.sampler import balanced_weights
from bitsound.errors import ConfigError, DistributedError

log = logging.getLogger("bitsound.train")

#: Seconds a collective operation may wait, e.g. the other ranks while rank 0 fills the
#: feature cache of a large data set; override with this environment variable.
TIMEOUT_ENV = "BITSOUND_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 6 * 3600
#: The longest wait accepted (30 days): larger values overflow torch's timeout arithmetic.
MAX_TIMEOUT_S = 30 * 24 * 3600
#: Seconds :func:`launch` lets the other processes run on after one failed, so that rank 0
#: can print the error that made the others stop before they are terminated.
LAUNCH_GRACE_S = 10.0
_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a run: ``rank`` of ``world_size`` (``local_*``: this machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def active(self) -> bool:
        """More than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates and writes files."""
        return self.rank == 0


def env_info() -> DistInfo:
    """The ranks a launcher (torchrun or :func:`launch`) gave this process in its environment.

    Raises
    ------
    ConfigError
        A variable is set but is not a whole number, or a rank is out of range.
    """
    if "WORLD_SIZE" not in os.environ:
        return DistInfo()
    values = {}
    for key in _ENV_KEYS:
        text = os.environ.get(key)
        if text is None:
            continue
        try:
            values[key] = int(text)
        except ValueError:
            raise ConfigError(f"environment variable {key}={text!r} is not a whole number; "
                              "start distributed runs with torchrun or bitsound train --nproc N") from None
    world = values["WORLD_SIZE"]
    rank = values.get("RANK", 0)
    local_world = values.get("LOCAL_WORLD_SIZE", world)
    local_rank = values.get("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
        raise ConfigError(f"inconsistent distributed environment (RANK={rank}, WORLD_SIZE={world}, "
                          f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world}); start the run "
                          "with torchrun or bitsound train --nproc N")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world)


def current() -> DistInfo:
    """This process's place in the process group it has joined (world size 1 when none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    info = env_info()
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=info.local_rank, local_world_size=info.local_world_size)


def device_for(name: str, info: DistInfo | None = None) -> torch.device:
    """The torch device of this process: ``train.device`` resolved, and on CUDA the GPU of its
    local rank (``cuda:LOCAL_RANK``) when several processes train together."""
    from bitsound.train.loop import resolve_device  # the loop imports this module

    info = current() if info is None else info
    device = resolve_device(name)
    if not info.active or device.type != "cuda":
        return device
    if device.index not in (None, info.local_rank):
        log.warning("train.device %r: in a distributed run each process uses the GPU of its local "
                    "rank; rank %d uses cuda:%d", name, info.rank, info.local_rank)
    if info.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"local rank {info.local_rank} has no GPU: this machine has "
                          f"{torch.cuda.device_count()}; start at most that many processes per machine")
    return torch.device("cuda", info.local_rank)


def timeout_seconds() -> float:
    """Seconds a collective operation may wait: ``$BITSOUND_DIST_TIMEOUT`` or 6 hours.

    Raises
    ------
    ConfigError
        The variable is not a number in (0, :data:`MAX_TIMEOUT_S`] (``inf``, ``nan``, ``0``,
        ``1e20`` and words are refused).
    """
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise ConfigError(f"environment variable {TIMEOUT_ENV}={text!r} must be a number of seconds "
                          f"in (0, {MAX_TIMEOUT_S}] (30 days); set e.g. {TIMEOUT_ENV}=86400, or unset "
                          f"it for the default {DEFAULT_TIMEOUT_S}")
    return value


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[DistInfo]:
    """Join the process group the launcher set up, and leave it at the end.

    With NCCL on CUDA when ``device`` resolves to a GPU, else gloo. A single process (or one
    already in a group) joins nothing.

    Parameters
    ----------
    device : str
        ``train.device`` of the recipe (``auto``, ``cpu``, ``cuda`` ...).
    """
    info = env_info()
    if not info.active or dist.is_initialized():
        yield current()
        return
    target = device_for(device, info)
    backend = "nccl" if target.type == "cuda" else "gloo"
    if target.type == "cuda":
        torch.cuda.set_device(target)
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigError(f"WORLD_SIZE={info.world_size} is set but {key} is not; start "
                              "distributed runs with torchrun or bitsound train --nproc N")
    dist.init_process_group(backend, rank=info.rank, world_size=info.world_size,
                            timeout=timedelta(seconds=timeout_seconds()))
    if target.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # N processes on one machine share its cores; torchrun sets OMP_NUM_THREADS=1 itself.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.local_world_size))
    log.log(logging.INFO if info.is_main else logging.DEBUG, "%d processes joined (%s; rank 0 on %s)",
            info.world_size, backend, target)
    try:
        yield info
    finally:
        # DDP wrappers sit in reference cycles: free them while their group still exists, not
        # at interpreter exit after it is gone (seen to abort a process: SIGABRT)
        gc.collect()
        dist.destroy_process_group()


def quiet_other_ranks() -> bool:
    """Only rank 0 logs infos and warnings (the ranks share data and config, so the others would
    repeat them); the other ranks keep errors. True on rank 0."""
    info = current()
    if not info.is_main:
        logging.getLogger("bitsound").setLevel(logging.ERROR)
    return info.is_main


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast(obj: T, *, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (pickled; for small objects such as a record)."""
    if not current().active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def all_sum(values: Sequence[float]) -> list[float]:
    """The element-wise sum of ``values`` over all ranks (float64)."""
    if not current().active:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def _status_of(err: BaseException) -> tuple[str, str]:
    return ("failed", f"{type(err).__name__}: {err}")


def from_main(fn: Callable[[], T], *, what: str, share: bool = True) -> T | None:
    """Run ``fn`` on rank 0 only and return its result on every rank (``share=False``: on
    rank 0 only, None on the others, which then just know that it succeeded).

    Raises
    ------
    DistributedError
        On the other ranks, when ``fn`` failed on rank 0 (which raises its own error).
    """
    info = current()
    if not info.active:
        return fn()
    if info.is_main:
        try:
            result = fn()
        except BaseException as err:
            broadcast(_status_of(err))
            raise
        broadcast(("ok", result if share else None))
        return result
    status, payload = broadcast(None)
    if status != "ok":
        raise DistributedError(f"rank {info.rank}: rank 0 stopped while {what} ({payload})")
    return payload


def main_first(fn: Callable[[], T], *, what: str, enabled: bool = True) -> T:
    """Run ``fn`` on rank 0, then (when it succeeded) on the other ranks.

    Used to fill the feature cache once: rank 0 computes and stores every clip's features,
    the others then find them all in the cache. With ``enabled=False`` all ranks run ``fn`` at
    once (e.g. without a cache, where each must compute its own).
    """
    info = current()
    if not info.active or not enabled:
        return fn()
    result = from_main(fn, what=what, share=False)
    return result if info.is_main else fn()


class DistributedBalancedSampler(Sampler[int]):
    """Class-balanced draws with replacement, dealt out to the ranks like DistributedSampler.

    Each epoch draws ``num_replicas * ceil(n / num_replicas)`` examples with probability
    inversely proportional to their class's size
    (:func:`bitsound.data.sampler.balanced_weights`, as :func:`bitsound.train.loop.epoch_order`
    with ``balanced=True``), from a generator seeded by
    ``seed + epoch``, so every rank draws the same list; rank ``r`` takes every
    ``num_replicas``-th draw from position ``r``.

    Parameters
    ----------
    labels : Tensor [shape=(n,)] of int64
        Class index of each example.
    num_replicas, rank : int
    seed : int
    """

    def __init__(self, labels: torch.Tensor, *, num_replicas: int, rank: int, seed: int = 0):
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} is not in 0..{num_replicas - 1}")
        labels = torch.as_tensor(labels, dtype=torch.int64)
        self.weights = balanced_weights(labels)
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.num_samples = math.ceil(len(labels) / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g)
        return iter(draws[self.rank:self.total_size:self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def make_sampler(labels: torch.Tensor, *, balanced: bool | str, seed: int,
                 info: DistInfo | None = None) -> Sampler[int]:
    """This rank's sampler over ``labels`` (see the module notes).

    Raises
    ------
    ConfigError
        ``balanced="undersample"``, which has no distributed form.
    """
    info = current() if info is None else info
    if balanced == "undersample":
        raise ConfigError(_UNDERSAMPLE_REFUSED)
    if balanced:
        return DistributedBalancedSampler(labels, num_replicas=info.world_size, rank=info.rank,
                                          seed=seed)
    return DistributedSampler(range(len(labels)), num_replicas=info.world_size, rank=info.rank,
                              shuffle=True, seed=seed, drop_last=False)


def local_batch_size(batch_size: int, info: DistInfo | None = None) -> int:
    """Each rank's share of the global ``train.batch_size``.

    Raises
    ------
    ConfigError
        The batch does not divide evenly among the ranks.
    """
    info = current() if info is None else info
    if batch_size % info.world_size:
        raise ConfigError(f"train.batch_size {batch_size} is the global batch of all "
                          f"{info.world_size} processes and must divide evenly among them; set "
                          f"--set train.batch_size={max(1, batch_size // info.world_size) * info.world_size}"
                          " or change the number of processes")
    return batch_size // info.world_size


_UNDERSAMPLE_REFUSED = ("train.balanced_sampling 'undersample' (seed 002's class cycle) runs in a "
                        "single process only; drop --nproc (or torchrun), or set "
                        "--set train.balanced_sampling=true for class-balanced draws across processes")


def check_config(cfg, info: DistInfo | None = None) -> int:
    """Refuse, before any work, a training config that cannot run on ``info``'s processes;
    returns each rank's share of the global batch.

    Parameters
    ----------
    cfg : TrainConfig
    info : DistInfo, optional
        The processes that will train (default: this process group).

    Raises
    ------
    ConfigError
        ``train.balanced_sampling: undersample`` with several processes, or a global batch
        that does not divide among them (:func:`local_batch_size`).
    """
    info = current() if info is None else info
    if info.active and cfg.balanced_sampling == "undersample":
        raise ConfigError(_UNDERSAMPLE_REFUSED)
    return local_batch_size(cfg.batch_size, info)


def seed_epoch(seed: int, epoch: int, info: DistInfo | None = None) -> torch.Generator:
    """Seed torch's global generator (dropout) and return a fresh one (augmentation) for this
    rank and epoch, from (seed, epoch, rank) only: a resumed run draws what the interrupted one
    would have, without the other ranks' random states."""
    info = current() if info is None else info
    a, b = np.random.SeedSequence([seed, epoch, info.rank]).generate_state(2, dtype=np.uint64)
    torch.manual_seed(int(b) >> 1)
    return torch.Generator().manual_seed(int(a) >> 1)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when several processes train, else itself."""
    if not current().active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def free_port() -> int:
    """A TCP port free on this machine now, for the rendezvous of :func:`launch`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_per_process(nproc: int, *, requested: str | None = None, cores: int | None = None) -> int:
    """OpenMP/torch threads of each of ``nproc`` processes sharing this machine's ``cores``.

    Each gets ``cores // nproc`` (at least 1), or the user's ``OMP_NUM_THREADS`` (``requested``)
    when that is lower: a value set for one process must not make N processes use every core.
    """
    cores = (os.cpu_count() or 1) if cores is None else cores
    share = max(1, cores // nproc)
    try:
        wanted = int(requested) if requested is not None else share
    except ValueError:  # e.g. OpenMP's nested form "4,2": the share per process then
        wanted = share
    return min(wanted, share) if wanted >= 1 else share


def launch(argv: Sequence[str], *, nproc: int, command: Sequence[str] | None = None,
           grace_s: float = LAUNCH_GRACE_S) -> int:
    """Run ``python -m bitsound ARGV`` in ``nproc`` processes on this machine, as torchrun would.

    Each process gets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``,
    ``MASTER_ADDR`` (127.0.0.1), a free ``MASTER_PORT`` and ``OMP_NUM_THREADS`` from
    :func:`threads_per_process`. When one process fails, the others get ``grace_s`` seconds to
    end on their own (rank 0 then prints the error that stopped them all) before they are
    terminated, and the first failure's exit status is returned (0 when all succeed). Runs
    across machines start with torchrun (see the README). ``command`` replaces
    ``python -m bitsound``.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc} must be at least 1")
    if env_info().active:
        raise ConfigError("--nproc starts processes itself; inside torchrun leave it out")
    port = free_port()
    threads = threads_per_process(nproc, requested=os.environ.get("OMP_NUM_THREADS"))
    if "OMP_NUM_THREADS" in os.environ and str(threads) != os.environ["OMP_NUM_THREADS"].strip():
        log.info("OMP_NUM_THREADS=%s: each of the %d processes uses %d threads (the cores divided)",
                 os.environ["OMP_NUM_THREADS"], nproc, threads)
    procs = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": str(threads)}
        start = list(command) if command is not None else [sys.executable, "-m", "bitsound"]
        procs.append(subprocess.Popen([*start, *argv], env=env))
    code = 0
    stop_at = kill_at = None  # once one failed: when to terminate the rest, when to kill them
    try:
        pending = list(procs)
        while pending:
            time.sleep(0.05)  # a sweep over all: blocking on one would see a later failure first
            for proc in list(pending):
                rc = proc.poll()
                if rc is None:
                    continue
                pending.remove(proc)
                if rc != 0 and code == 0:
                    code = rc
                    stop_at = time.monotonic() + grace_s
            now = time.monotonic()
            if stop_at is not None and now >= stop_at and pending:
                for other in pending:  # a rank alone would wait for the lost one forever
                    other.terminate()
                stop_at, kill_at = None, now + 10.0
            if kill_at is not None and now >= kill_at:
                for other in pending:
                    other.kill()
                kill_at = None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code if code >= 0 else 128 - code
