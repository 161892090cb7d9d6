"""Task heads over the headless backbone, and the fine-tuning model that joins them (GPT-1 §3.2).

GPT-1 adds a single linear layer W_y on h_l^m, the final hidden state of the last (extract) token, with dropout
0.1 before it; everything else is the pre-trained model. The four tasks differ only in how the extract states of
one example's sequences are combined before W_y (§3.3):

    ClassificationHead   one sequence                → W_y → class logits (or one score: regression)
    SimilarityHead       two orders, states added    → W_y → class logits (or one score)
    MultipleChoiceHead   one sequence per answer     → W_y → one logit per answer

`FinetuneModel` runs the backbone once over all of a batch's sequences, gathers the extract states, applies the
head, and (for λ > 0) computes the auxiliary language-modelling loss L1 on the same tokens with the model's own
tied LM head.

Shapes: B examples, K sequences per example, T tokens, C width, N = B·K sequences actually present.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ..model import GPT
    from .tasks import TaskSpec


class ExtractHead(nn.Module):
    """W_y with dropout on its input (GPT-1 §4.1: 'we add dropout to the classifier with a rate of 0.1')."""

    def __init__(self, n_embd: int, n_out: int, dropout: float = 0.1, init_std: float = 0.02) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(n_embd, n_out)
        nn.init.normal_(self.linear.weight, mean=0.0, std=init_std)  # as the rest of the model (§4.1)
        nn.init.zeros_(self.linear.bias)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(h))


class ClassificationHead(ExtractHead):
    """`s text e` (or `s premise $ hypothesis e`): (B, 1, C) extract states → (B, n_out)."""

    def forward(self, h: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(h[:, 0])


class SimilarityHead(ExtractHead):
    """Both orders `s A $ B e`, `s B $ A e`: (B, 2, C) → their sum (§3.3: 'added element-wise') → (B, n_out)."""

    def forward(self, h: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(h[:, 0] + h[:, 1])


class MultipleChoiceHead(ExtractHead):
    """One `s context $ answer_k e` per answer: (B, K, C) → (B, K) logits, softmaxed over the answers by the
    loss. Examples with fewer than K answers have their missing answers masked to -inf."""

    def __init__(self, n_embd: int, dropout: float = 0.1, init_std: float = 0.02) -> None:
        super().__init__(n_embd, 1, dropout, init_std)

    def forward(self, h: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.project(h).squeeze(-1)  # (B, K)
        if present is not None and not bool(present.all()):
            logits = logits.masked_fill(~present, float("-inf"))
        return logits


def build_head(spec: TaskSpec, n_embd: int, dropout: float = 0.1, init_std: float = 0.02) -> ExtractHead:
    """The head a task spec calls for."""
    if spec.task == "multiple-choice":
        return MultipleChoiceHead(n_embd, dropout, init_std)
    if spec.task == "similarity":
        return SimilarityHead(n_embd, spec.n_outputs, dropout, init_std)
    return ClassificationHead(n_embd, spec.n_outputs, dropout, init_std)


class FinetuneModel(nn.Module):
    """A pre-trained GPT (backbone + tied LM head) with a task head on its extract states."""

    def __init__(self, gpt: GPT, head: ExtractHead, regression: bool = False) -> None:
        super().__init__()
        self.gpt = gpt
        self.head = head
        self.regression = regression
        self.autocast_dtype = torch.float32  # what it was fine-tuned in (set by load_finetuned); predict's default

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor, lm_loss: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, K, T) right-padded token ids; lengths (B, K) real lengths (0: no such sequence).

        Returns the task output — (B, n_classes) logits, (B,) scores (regression) or (B, K) answer logits — and
        the LM loss L1: next-token cross-entropy averaged over every real token that has a successor (padding is
        ignored), i.e. Hugging Face's `labels=input_ids` convention with padding set to -100.
        Right padding is harmless: attention is causal, so no real position sees a padding token.
        """
        B, K, T = idx.shape
        flat, flen = idx.reshape(B * K, T), lengths.reshape(B * K)
        present = flen > 0
        all_present = bool(present.all())
        rows, rlen = (flat, flen) if all_present else (flat[present], flen[present])
        h = self.gpt.transformer(rows)  # (N, T, C)
        last = h[torch.arange(h.size(0), device=h.device), rlen - 1]  # (N, C): the extract tokens
        if all_present:
            ext = last.view(B, K, -1)
        else:
            ext = last.new_zeros(B * K, last.size(-1)).index_put((present.nonzero().squeeze(1),), last)
            ext = ext.view(B, K, -1)
        out = self.head(ext, lengths > 0)
        if self.regression:
            out = out.squeeze(-1)
        if not lm_loss:
            return out, None
        # L1 on the positions that predict a real next token: position t < length - 1 predicts token t + 1.
        has_next = torch.arange(T - 1, device=idx.device).unsqueeze(0) < (rlen - 1).unsqueeze(1)  # (N, T-1)
        # only real positions reach the vocabulary matmul (M, C), through the pre-training loss (GPT.lm_head_loss)
        return out, self.gpt.lm_head_loss(h[:, :-1][has_next], rows[:, 1:][has_next])
