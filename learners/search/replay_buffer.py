"""Fixed-capacity FIFO replay buffer of DDPG transitions, kept as CPU tensors."""
from __future__ import annotations

import torch

FIELDS = ("states", "actions", "rewards", "next_states", "terminals")


class ReplayBuffer:
    """Ring buffer; ``ready`` once full (PocketFlow: the warm-up lasts until the buffer is full)."""

    def __init__(self, capacity: int, state_dim: int, action_dim: int) -> None:
        if capacity <= 0:
            raise ValueError(f"replay buffer capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.data = {"states": torch.zeros(capacity, state_dim),
                     "actions": torch.zeros(capacity, action_dim),
                     "rewards": torch.zeros(capacity),
                     "next_states": torch.zeros(capacity, state_dim),
                     "terminals": torch.zeros(capacity)}
        self.ptr = 0  # slot the next transition is written to
        self.size = 0

    def __len__(self) -> int:
        return self.size

    @property
    def ready(self) -> bool:
        return self.size == self.capacity

    def append(self, state: torch.Tensor, action: torch.Tensor, reward: float,
               next_state: torch.Tensor, terminal: bool) -> None:
        """Store one transition, overwriting the oldest one when full."""
        values = (state, action, float(reward), next_state, float(terminal))
        for name, value in zip(FIELDS, values):
            self.data[name][self.ptr] = torch.as_tensor(value, dtype=torch.float32)
        self.ptr = (self.ptr + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``batch_size`` transitions drawn uniformly with replacement."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = torch.randint(self.size, (batch_size,), generator=generator)
        return {name: tensor[idx] for name, tensor in self.data.items()}

    def state_dict(self) -> dict:
        return {**{name: t[:self.size].clone() for name, t in self.data.items()},
                "capacity": self.capacity, "ptr": self.ptr, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"replay buffer capacity {state['capacity']} was saved, "
                             f"this buffer holds {self.capacity}")
        for name, tensor in self.data.items():
            tensor.zero_()
            tensor[:state["size"]] = state[name]
        self.ptr, self.size = int(state["ptr"]), int(state["size"])
