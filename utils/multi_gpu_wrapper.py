"""MultiGpuWrapper: one strategy object hides single- vs multi-process training.

Backends (chosen by ``MultiGpuWrapper.create(enabled, backend)``):
- ``single``: one process; every collective is the identity.
- ``torch``: ``torch.distributed`` (gloo on CPU, nccl on GPU), launched by torchrun.
- ``horovod``: Horovod (gloo or MPI), launched by horovodrun.
Rank 0 takes decisions (channel selection, RL actions, saving) and ``broadcast``s them.
"""
from __future__ import annotations

import datetime
import hashlib
import os
from abc import ABC, abstractmethod
from typing import Any

import torch

BACKENDS = ("auto", "horovod", "torch")


class DistributedSetupError(RuntimeError):
    """The requested multi-process backend cannot be used; the message says why and what to do."""


def horovod_available() -> bool:
    try:
        import horovod.torch  # noqa: F401
    except Exception:  # ImportError, or a broken build that fails to load its library
        return False
    return True


def _launched_by_horovodrun() -> bool:
    return "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ


class MultiGpuWrapper(ABC):
    """The strategy interface; see the module docstring."""

    name = "abstract"
    strided_gradients = True   # its gradient allreduce takes any dense layout (channels_last)

    @staticmethod
    def create(enabled: bool = False, backend: str = "auto",
               timeout_s: float = 1800.0) -> "MultiGpuWrapper":
        """Pick and initialise a backend. ``auto``: Horovod when launched by horovodrun,
        torch.distributed when launched by torchrun, else a single process."""
        if backend not in BACKENDS:
            raise DistributedSetupError(f"unknown --mgw_backend {backend!r}; valid: {', '.join(BACKENDS)}")
        if not enabled:
            return SingleProcess()
        if backend == "horovod" or (backend == "auto" and _launched_by_horovodrun()):
            if not horovod_available():
                raise DistributedSetupError(
                    "--mgw_backend=horovod but Horovod is not installed (or fails to load); "
                    "install it with scripts/install_horovod.sh, or use --mgw_backend=torch")
            wrapper: MultiGpuWrapper = HorovodWrapper()
        elif "WORLD_SIZE" in os.environ or backend == "torch":
            wrapper = TorchDistributedWrapper(timeout_s)
        else:
            wrapper = SingleProcess()
        wrapper.init()
        return wrapper

    # -- topology --------------------------------------------------------------------------
    def init(self) -> None:
        """Join the process group (idempotent)."""

    @abstractmethod
    def size(self) -> int: ...

    @abstractmethod
    def rank(self) -> int: ...

    @abstractmethod
    def local_size(self) -> int: ...

    @abstractmethod
    def local_rank(self) -> int: ...

    def is_primary(self) -> bool:
        return self.rank() == 0

    def device(self, requested: str = "auto") -> torch.device:
        """The device for this process: one GPU per local rank when CUDA is used."""
        use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise DistributedSetupError("--device=cuda but CUDA is not available")
        return torch.device("cuda", self.local_rank()) if use_cuda else torch.device("cpu")

    # -- collectives -------------------------------------------------------------------------
    @abstractmethod
    def barrier(self) -> None: ...

    @abstractmethod
    def broadcast(self, tensor: torch.Tensor, root: int = 0) -> torch.Tensor:
        """Broadcast a tensor in place from ``root``; returns it."""

    @abstractmethod
    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """Broadcast a small picklable Python object (a ratio list, a dict of decisions)."""

    @abstractmethod
    def allreduce(self, tensor: torch.Tensor, average: bool = False) -> torch.Tensor:
        """Sum (or average) a tensor over all processes; returns the reduced tensor."""

    # -- training ---------------------------------------------------------------------------
    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer,
                       model: torch.nn.Module) -> torch.optim.Optimizer:
        return optimizer

    def broadcast_parameters(self, module: torch.nn.Module, root: int = 0) -> None:
        """Make every rank hold rank ``root``'s parameters and buffers."""
        if self.size() == 1:
            return
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                self.broadcast(tensor.data, root)

    def broadcast_optimizer_state(self, optimizer: torch.optim.Optimizer, root: int = 0) -> None:
        if self.size() == 1:
            return
        state = self.broadcast_object(optimizer.state_dict() if self.rank() == root else None, root)
        optimizer.load_state_dict(state)

    def parameters_identical(self, module: torch.nn.Module) -> bool:
        """True when every rank holds bit-identical parameters (a digest compared to rank 0's)."""
        if self.size() == 1:
            return True
        digest = hashlib.sha256()
        for param in module.parameters():
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
        mine = digest.hexdigest()
        reference = self.broadcast_object(mine if self.rank() == 0 else None)
        agree = self.allreduce(torch.tensor([1.0 if mine == reference else 0.0]))
        return int(agree.item()) == self.size()

    def shutdown(self) -> None:
        """Leave the process group."""


class SingleProcess(MultiGpuWrapper):
    name = "single"

    def size(self) -> int:
        return 1

    def rank(self) -> int:
        return 0

    def local_size(self) -> int:
        return 1

    def local_rank(self) -> int:
        return 0

    def barrier(self) -> None:
        return None

    def broadcast(self, tensor: torch.Tensor, root: int = 0) -> torch.Tensor:
        return tensor

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allreduce(self, tensor: torch.Tensor, average: bool = False) -> torch.Tensor:
        return tensor


class TorchDistributedWrapper(MultiGpuWrapper):
    """torch.distributed, configured from torchrun's environment variables."""

    name = "torch"

    def __init__(self, timeout_s: float = 1800.0) -> None:
        self.timeout = datetime.timedelta(seconds=timeout_s)

    def init(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            return
        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise DistributedSetupError(
                f"torch.distributed needs {', '.join(missing)} in the environment; launch with "
                "scripts/run_local.sh -n=N (torchrun) instead of plain python")
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(self.local_rank())
        dist.init_process_group(backend=backend, timeout=self.timeout)

    def size(self) -> int:
        return int(os.environ.get("WORLD_SIZE", 1))

    def rank(self) -> int:
        return int(os.environ.get("RANK", 0))

    def local_size(self) -> int:
        return int(os.environ.get("LOCAL_WORLD_SIZE", self.size()))

    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", 0))

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def broadcast(self, tensor: torch.Tensor, root: int = 0) -> torch.Tensor:
        import torch.distributed as dist

        dist.broadcast(tensor, src=root)
        return tensor

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=root)
        return box[0]

    def allreduce(self, tensor: torch.Tensor, average: bool = False) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        if average:
            tensor /= self.size()
        return tensor

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        if self.size() == 1:
            return model
        device_ids = [self.local_rank()] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class HorovodWrapper(MultiGpuWrapper):
    """Horovod; gradients are averaged by ``hvd.DistributedOptimizer``."""

    name = "horovod"
    strided_gradients = False  # hvd.allreduce refuses a tensor that is not contiguous

    def init(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        if torch.cuda.is_available():
            torch.cuda.set_device(hvd.local_rank())

    def size(self) -> int:
        return self.hvd.size()

    def rank(self) -> int:
        return self.hvd.rank()

    def local_size(self) -> int:
        return self.hvd.local_size()

    def local_rank(self) -> int:
        return self.hvd.local_rank()

    def barrier(self) -> None:
        self.hvd.allreduce(torch.zeros(1), name="barrier")

    def broadcast(self, tensor: torch.Tensor, root: int = 0) -> torch.Tensor:
        self.hvd.broadcast_(tensor, root_rank=root)
        return tensor

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        # an explicit name: Horovod would otherwise name it by type(obj), which differs between
        # the root (the object) and the receivers (None), and the collective would never match
        return self.hvd.broadcast_object(obj, root_rank=root, name="pf.broadcast_object")

    def allreduce(self, tensor: torch.Tensor, average: bool = False) -> torch.Tensor:
        op = self.hvd.Average if average else self.hvd.Sum
        return self.hvd.allreduce(tensor, op=op)

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer,
                       model: torch.nn.Module) -> torch.optim.Optimizer:
        if self.size() == 1:
            return optimizer
        return self.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    def broadcast_optimizer_state(self, optimizer: torch.optim.Optimizer, root: int = 0) -> None:
        self.hvd.broadcast_optimizer_state(optimizer, root_rank=root)

    def shutdown(self) -> None:
        self.hvd.shutdown()
