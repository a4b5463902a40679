"""Two-level labels (coarse -> fine, e.g. phylum -> family): three strategies behind one module
whose output is the log-probability of each fine class, so every command (predict, evaluate,
serve) works unchanged, and the coarse prediction is the parent with the highest summed
probability.

- flat: one model over fine classes (the course's option 2).
- two-stage: a coarse model and a fine model; p(fine) = p(coarse) * p(fine | coarse), the fine
  model's probabilities renormalised within the coarse class (option 1, conditioned on the coarse).
- multi-head: one shared backbone with a coarse head and a fine head, trained jointly and decoded
  the same way as two-stage, so the two levels are consistent.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
STRATEGIES = ("flat", "two-stage", "multi-head")


class Hierarchical(nn.Module):
    def __init__(self, strategy: str, fine_model: nn.Module, parents: list[int], num_coarse: int,
                 coarse_model: nn.Module | None = None):
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown hierarchy strategy {strategy!r}")
        self.strategy = strategy
        self.fine = fine_model
        self.coarse = coarse_model if strategy == "two-stage" else None
        self.coarse_head = nn.Linear(fine_model.num_features, num_coarse) if strategy == "multi-head" else None
        self.register_buffer("parents", torch.tensor(parents, dtype=torch.long), persistent=False)
        member = torch.zeros(num_coarse, len(parents), dtype=torch.bool)
        member[torch.tensor(parents), torch.arange(len(parents))] = True
        self.register_buffer("member", member, persistent=False)
        self.num_features = fine_model.num_features

    def _levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.strategy == "flat":
            return self.fine(x), None
        if self.strategy == "two-stage":
            return self.fine(x), self.coarse(x)
        feats = self.fine.features(x)
        return self.fine.forward_head(feats), self.coarse_head(feats)

    def joint(self, fine_logits: torch.Tensor, coarse_logits: torch.Tensor) -> torch.Tensor:
        """log p(fine) = log p(coarse = parent) + log p(fine | coarse), the latter a log-softmax within the group."""
        masked = fine_logits.unsqueeze(1).masked_fill(~self.member, float("-inf"))     # B x C x F
        group_lse = torch.logsumexp(masked, dim=2)                                      # B x C
        within = fine_logits - group_lse[:, self.parents]
        return F.log_softmax(coarse_logits, dim=1)[:, self.parents] + within

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine, coarse = self._levels(x)
        return fine if coarse is None else self.joint(fine, coarse)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0,
                      weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, fine scores for accuracy): fine cross-entropy, plus coarse cross-entropy when there is a coarse output."""
        return self._loss(*self._levels(x), y, label_smoothing, weight)

    def head_loss(self, feats: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same loss from cached backbone features, for the head stage of fine-tuning: the backbones
        are frozen there and start from the same weights, so one feature pass serves both levels."""
        fine = self.fine.forward_head(feats)
        coarse = {"flat": None, "two-stage": lambda f: self.coarse.forward_head(f),
                  "multi-head": self.coarse_head}[self.strategy]
        return self._loss(fine, coarse(feats) if coarse is not None else None, y, label_smoothing, None)

    def _loss(self, fine: torch.Tensor, coarse: torch.Tensor | None, y: torch.Tensor, label_smoothing: float,
              weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        loss = F.cross_entropy(fine, y, weight=weight, label_smoothing=label_smoothing)
        if coarse is None:
            return loss, fine
        loss = loss + F.cross_entropy(coarse, self.parents[y], label_smoothing=label_smoothing)
        return loss, self.joint(fine.detach(), coarse.detach())

    def init_from_data(self, images: torch.Tensor) -> None:
        for m in (self.fine, self.coarse):
            if m is not None and hasattr(m, "init_from_data"):
                m.init_from_data(images)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim <= 1]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def coarse_probabilities(fine_probs, parents: list[int], num_coarse: int):
    """Sum of fine probabilities per coarse class (numpy or torch, N x F -> N x C)."""
    import numpy as np
    fine_probs = np.asarray(fine_probs)
    out = np.zeros((fine_probs.shape[0], num_coarse), dtype=fine_probs.dtype)
    np.add.at(out.T, np.asarray(parents), fine_probs.T)
    return out
