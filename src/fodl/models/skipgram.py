"""Skip-gram word vectors (book chapter 6): NCE as in the book, or word2vec's negative sampling.

A batch (``fodl.data.corpus.SkipGramBatch``) is N blocks of T consecutive center words, the
words around each block, a mask of its skip-gram pairs and M noise words shared by the block.
The logits of every center against every word and noise word of its block are two batched
matrix products (``SkipGramNet.block_logits``); the mask keeps the pairs. Per pair:

- ``loss=nce`` (the book's ``tf.nn.nce_loss``): logistic regression of ``u.v + b - log(M q(w))``,
  the true context against all M noise words (q: the noise distribution);
- ``loss=negative_sampling`` (word2vec, gensim): ``-log s(u.v) - sum_k log s(-u.v_k)`` over
  ``negatives_per_pair`` noise words, no bias. Each center scores all M noise words of its
  block; their term is weighted by ``pairs * negatives_per_pair / M``, which is word2vec's
  expected gradient (each of its pairs draws ``negatives_per_pair`` words of its own).

Validation is the Google analogy test (``val/analogy_acc`` and one metric per section) and,
as the book prints them, the nearest neighbours of 20 words drawn from the 500 most frequent.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from fodl.errors import FodlError
from fodl.metrics.analogy import analogy_hits, format_analogies, nearest_neighbours, summarize
from fodl.models.base import FodlModule
from fodl.nets.skipgram import SkipGramNet
from fodl.text.vocab import Vocabulary

log = logging.getLogger(__name__)

LOSSES = ("nce", "negative_sampling")


class LinearDecayLR(torch.optim.lr_scheduler.LRScheduler):
    """word2vec's learning-rate schedule: linear from the optimizer's rate down to
    ``end_factor`` times it over ``total_steps`` optimizer steps, then flat. Step it per
    minibatch (``model.scheduler_interval=step``). ``total_steps=None``: the training module
    fills in the run's number of steps (:meth:`~fodl.models.base.FodlModule.scheduler_horizon`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, end_factor: float = 1e-4 / 0.025,
                 total_steps: int | None = None, last_epoch: int = -1) -> None:
        self.end_factor = end_factor
        self.total_steps = total_steps
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        done = min(self.last_epoch / self.total_steps, 1.0) if self.total_steps else 0.0
        factor = 1.0 - (1.0 - self.end_factor) * done
        return [base * factor for base in self.base_lrs]


class SkipGramModule(FodlModule):
    """Skip-gram around an injected :class:`~fodl.nets.skipgram.SkipGramNet`.

    Args:
        net: the net (its ``vocab_size`` at least the DataModule's vocabulary).
        optimizer, scheduler, scheduler_interval, gradient_clip_val: the shared loop's settings
            (:class:`~fodl.models.base.FodlModule`). With the net's sparse gradients the
            optimizer must take them: SGD (no momentum), Adagrad, SparseAdam.
        loss: ``nce`` or ``negative_sampling`` (module docstring).
        negatives_per_pair: word2vec's ``negative`` (negative sampling only).
        reduction: ``mean`` over the batch's pairs (the book's ``reduce_mean``) or ``sum``
            (word2vec's per-pair SGD, whose rate does not depend on the batch size).
        neighbours, neighbours_from, top_k: the book's validation printout: ``top_k`` nearest
            neighbours of ``neighbours`` words drawn (seeded) from the ``neighbours_from`` most
            frequent.
        seed: for that draw.
    """

    def __init__(
        self,
        net: SkipGramNet,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "step",
        loss: str = "nce",
        negatives_per_pair: int = 5,
        reduction: str = "mean",
        neighbours: int = 20,
        neighbours_from: int = 500,
        top_k: int = 8,
        gradient_clip_val: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, gradient_clip_val)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.loss_name = loss
        self.negatives_per_pair = negatives_per_pair
        self.reduction = reduction
        self.neighbours, self.neighbours_from, self.top_k = neighbours, neighbours_from, top_k
        self.seed = seed
        self.vocab: Vocabulary | None = None
        self.analogy = None
        self._hits: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- data this family needs from its DataModule ----------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        self.vocab = getattr(dm, "vocab", None)
        self.analogy = getattr(dm, "analogy", None)
        if self.vocab is not None and len(self.vocab) > self.net.vocab_size:
            raise FodlError(f"The vocabulary has {len(self.vocab)} words but the net only "
                            f"{self.net.vocab_size} rows (model.net.vocab_size). Set "
                            f"model.net.vocab_size >= {len(self.vocab)}, or lower data.max_size.")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        monitored = {getattr(cb, "monitor", None) for cb in self.trainer.callbacks}
        wanted = sorted(m for m in monitored if isinstance(m, str) and m.startswith("val/analogy"))
        if self.analogy is None and wanted:
            raise FodlError(f"The checkpoint callback monitors {wanted[0]}, but this run has no "
                            "analogy questions (data.analogies=null), so that metric is never "
                            "logged. Give data.analogies the path of questions-words.txt, or "
                            "monitor another metric: monitor=train/loss monitor_mode=min.")

    # -- training --------------------------------------------------------------------------
    def training_loss(self, batch) -> torch.Tensor:
        words, positive, negatives, log_noise = batch
        n, block, c = positive.shape
        m = negatives.shape[1]
        window = (c - block) // 2
        nce = self.loss_name == "nce"
        targets = torch.cat([words, negatives], dim=1)  # (N, C + M)
        logits = self.net.block_logits(words[:, window : window + block], targets, bias=nce)
        pairs = positive.sum(-1, dtype=logits.dtype)  # (N, T) pairs per center
        if nce:  # logit of "w is data, not noise": s - log(M q(w)), M noise words per pair
            logits = logits - (log_noise[targets] + math.log(m)).unsqueeze(1)
            noise_weight = pairs
        else:
            noise_weight = pairs * (self.negatives_per_pair / m)
        # -log sigmoid(x) for a pair, -log sigmoid(-x) for a noise word, i.e. softplus(-/+ x)
        sign = torch.ones(c + m, dtype=logits.dtype, device=logits.device)
        sign[c:] = -1.0
        weight = torch.cat([positive.to(logits.dtype), noise_weight.unsqueeze(2).expand(n, block, m)], dim=2)
        loss = (F.softplus(logits * -sign) * weight).sum()
        if self.reduction == "mean":
            loss = loss / pairs.sum().clamp_min(1.0)
        return loss

    def configure_optimizers(self):
        conf = super().configure_optimizers()
        opt = conf["optimizer"] if isinstance(conf, dict) else conf
        if self.net.sparse:
            _check_sparse_optimizer(opt)
        return conf

    # -- evaluation ------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> None:
        self._analogy_step(batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._analogy_step(batch)

    def _analogy_step(self, batch) -> None:
        questions, section, candidates, canon = batch
        hits = analogy_hits(self.net.in_embed.weight.detach(), candidates, canon, questions)
        self._hits.append((section, hits))

    def on_validation_epoch_end(self) -> None:
        self._log_analogies("val")
        self._log_neighbours()

    def on_test_epoch_end(self) -> None:
        self._log_analogies("test")

    def _log_analogies(self, stage: str) -> None:
        if self.analogy is None or not self._hits:
            self._hits.clear()
            return
        s = len(self.analogy.sections)
        section = torch.cat([x for x, _ in self._hits])
        hits = torch.cat([h for _, h in self._hits]).to(torch.float64)
        self._hits.clear()
        counts = torch.stack([torch.bincount(section, weights=hits, minlength=s),
                              torch.bincount(section, minlength=s).to(torch.float64)])
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        correct, evaluated = counts.round().long().tolist()
        result = summarize(self.analogy.sections, correct, evaluated, self.analogy.asked)
        self.log(f"{stage}/analogy_acc", result["total"], prog_bar=True, sync_dist=False)
        for r in result["sections"]:
            if r["acc"] is not None:
                self.log(f"{stage}/analogy/{r['section']}", r["acc"])
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            log.info("%s analogy accuracy (epoch %d, among the %d most frequent words):\n%s", stage,
                     self.current_epoch, len(self.analogy.candidates), format_analogies(result))

    def _log_neighbours(self) -> None:
        """The book's printout: "Nearest neighbor of <word>: <8 words>" for the validation words."""
        t = self.trainer
        if self.vocab is None or not self.neighbours or not t.is_global_zero or t.sanity_checking:
            return
        lo = self.vocab.num_specials
        hi = min(len(self.vocab), lo + self.neighbours_from)
        g = torch.Generator().manual_seed(self.seed)
        query = lo + torch.randperm(hi - lo, generator=g)[: self.neighbours]
        emb = self.net.in_embed.weight.detach()[: len(self.vocab)]
        near = nearest_neighbours(emb, query.to(emb.device), self.top_k, exclude=lo).cpu()
        lines = [f"Nearest neighbor of {self.vocab.words[q]}: " + ", ".join(self.vocab.decode(n))
                 for q, n in zip(query.tolist(), near)]
        log.info("epoch %d\n%s", self.current_epoch, "\n".join(lines))
        from fodl.callbacks import tensorboard

        writer = tensorboard(t)
        if writer is not None:
            writer.add_text("nearest_neighbours", "  \n".join(lines), self.global_step)


def _check_sparse_optimizer(opt: torch.optim.Optimizer) -> None:
    """A clear error, before the first step, for an optimizer that cannot take the
    embeddings' sparse gradients."""
    group = opt.param_groups[0]
    ok = (isinstance(opt, torch.optim.SparseAdam)
          or (isinstance(opt, torch.optim.Adagrad) and not group.get("weight_decay"))
          or (isinstance(opt, torch.optim.SGD) and not group.get("momentum") and not group.get("weight_decay")))
    if not ok:
        raise FodlError(
            f"The skip-gram net has sparse gradients (model.net.sparse=true: only the looked-up "
            f"rows), which {type(opt).__name__} with these settings cannot take. Use optimizer=sgd "
            "(without momentum or weight decay, the book's), optimizer=adagrad, or "
            "torch.optim.SparseAdam; or set model.net.sparse=false (dense gradients: every step "
            "then touches the whole vocabulary)."
        )
