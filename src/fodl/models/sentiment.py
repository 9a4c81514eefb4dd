"""Text classification (book chapter 7's IMDB sentiment model): a classifier of token sequences.

Why a subclass of :class:`~fodl.models.classifier.ClassifierModule` and not the classifier
itself: the net takes ``(tokens, lengths)``, not one tensor. The lengths are explicit rather
than re-derived from the padding id, so a net can pack or mask without knowing the
vocabulary's conventions, and the same batches serve seq2seq later. The loss, metrics and
logging are the classifier's; this adds only the batch layout ``(tokens, lengths, label)``
and the vocabulary + tokenizer settings in every checkpoint (``fodl_text``), so
``scripts/classify.py CKPT "review"`` needs only the checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from fodl.errors import FodlError
from fodl.models.classifier import ClassifierModule
from fodl.text.tokenize import get_tokenizer
from fodl.text.vocab import Vocabulary


class TextClassifierModule(ClassifierModule):
    """Batches are ``(tokens (B, T), lengths (B,), labels (B,))``; ``net(tokens, lengths)``
    returns logits. Logs what :class:`ClassifierModule` logs. No ``cuda_graph`` (the inputs
    change shape from batch to batch).

    Regularising a net's hashed n-gram tables (``net.ngram_tables()``, e.g.
    :class:`~fodl.nets.lstm.LSTMClassifierNet` with ``bigram_buckets``), which otherwise
    memorise the training reviews:

    Args:
        ngram_weight_decay: the optimizer's ``weight_decay`` for the n-gram tables alone (their
            own parameter group; for Adam an L2 term added to their gradients).
        ngram_lr_scale: the n-gram tables' learning rate as a multiple of the optimizer's (and
            of a one-cycle schedule's ``max_lr``).
        adversarial: adversarial training on the input embeddings (Miyato et al. 2017): each
            step adds the loss of the batch with every review's embeddings moved along the
            gradient of the loss, by a perturbation whose L2 norm is ``adversarial`` times
            the square root of the review's length (so ``adversarial`` per token on average);
            0: off. Costs a second forward and backward per step.
    """

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, scheduler_interval: str = "epoch",
                 num_classes: int = 2, gradient_clip_val: float | None = None,
                 cuda_graph: bool = False, ngram_weight_decay: float = 0.0,
                 ngram_lr_scale: float = 1.0, adversarial: float = 0.0) -> None:
        if cuda_graph:
            raise FodlError("model.cuda_graph=true graphs a net of one fixed-shape input; the text "
                            "classifier's batches change length. Set model.cuda_graph=false.")
        if (ngram_weight_decay or ngram_lr_scale != 1.0) and not self._ngram_tables(net):
            raise FodlError(f"model.ngram_weight_decay={ngram_weight_decay} / model.ngram_lr_scale="
                            f"{ngram_lr_scale} act on the net's hashed n-gram tables, but "
                            f"model.net ({type(net).__name__}) has none: set "
                            "model.net.bigram_buckets (or trigram_buckets) > 0, or leave "
                            "model.ngram_weight_decay=0 and model.ngram_lr_scale=1.")
        super().__init__(net, optimizer, scheduler, scheduler_interval, num_classes,
                         gradient_clip_val, False)
        self.ngram_weight_decay, self.ngram_lr_scale = float(ngram_weight_decay), float(ngram_lr_scale)
        self.adversarial = float(adversarial)
        self.vocab: Vocabulary | None = None
        self.text_settings: dict[str, Any] = {}

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(tokens, lengths)

    @staticmethod
    def _ngram_tables(net: nn.Module) -> list[nn.Module]:
        tables = getattr(net, "ngram_tables", None)
        return list(tables()) if callable(tables) else []

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The n-gram tables in a group of their own when ``ngram_weight_decay`` or
        ``ngram_lr_scale`` is set; otherwise the base's one group."""
        if not self.ngram_weight_decay and self.ngram_lr_scale == 1.0:
            return super().parameter_groups()
        grams = {id(p) for t in self._ngram_tables(self.net) for p in t.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        table = {"params": [p for p in trainable if id(p) in grams], "lr_scale": self.ngram_lr_scale}
        if self.ngram_weight_decay:
            table["weight_decay"] = self.ngram_weight_decay
        return [{"params": [p for p in trainable if id(p) not in grams]}, table]

    def training_loss(self, batch) -> torch.Tensor:
        tokens, lengths, y = batch
        if not self.adversarial:
            return F.cross_entropy(self.net(tokens, lengths), y)
        # Miyato et al. 2017: the loss at the embeddings moved by r = eps * g / ||g|| per review
        # (g: the loss's gradient w.r.t. the input embeddings, held constant), added to the loss.
        delta = torch.zeros(*tokens.shape, self.net.embed.embedding_dim, device=tokens.device,
                            requires_grad=True)
        loss = F.cross_entropy(self.net(tokens, lengths, delta), y)
        (g,) = torch.autograd.grad(loss, delta, retain_graph=True)
        norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
        size = self.adversarial * lengths.to(g.device, g.dtype).clamp_min(1).sqrt()
        r = g * (size / norm).view(-1, 1, 1)
        return loss + F.cross_entropy(self.net(tokens, lengths, r.detach()), y)

    def _eval_step(self, batch, stage: str, metric) -> None:
        tokens, lengths, y = batch
        logits = self.net(tokens, lengths)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True,
                 batch_size=len(y), prog_bar=stage == "val")
        metric.update(logits, y)
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=stage == "val")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0], batch[1]).argmax(-1)

    # -- vocabulary in checkpoints ----------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        vocab = getattr(dm, "vocab", None)
        if vocab is None:
            return
        rows = self.net.embed.num_embeddings
        if len(vocab) > rows:
            raise FodlError(f"The vocabulary has {len(vocab)} words but the net only {rows} rows "
                            f"(model.net.vocab_size). Set model.net.vocab_size >= {len(vocab)}, or "
                            "lower data.max_size.")
        self.vocab, self.text_settings = vocab, dict(dm.text_settings())

    # -- inference on raw text ----------------------------------------------------------------
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise and numericalise raw texts as training did (tokenizer, lowercasing, cut)."""
        if self.vocab is None:
            raise FodlError("This classifier has no vocabulary: load it from a checkpoint written "
                            "by training (scripts/classify.py does).")
        s = self.text_settings
        tok = get_tokenizer(s.get("tokenizer", "words"))
        kwargs = {} if s.get("tokenizer") == "treebank" else {"lowercase": s.get("lowercase", True),
                                                               "strip_html": True}
        seqs = [tok(t, **kwargs) or [""] for t in texts]  # an empty text is one unknown word
        return self.vocab.encode_batch(seqs, s.get("max_len"))

    @torch.no_grad()
    def classify(self, texts: list[str]) -> torch.Tensor:
        """``(N, num_classes)`` class probabilities of raw texts."""
        tokens, lengths = self.encode(texts)
        was = self.net.training
        self.net.eval()
        p = self.net(tokens.to(self.device), lengths.to(self.device)).softmax(-1)
        self.net.train(was)
        return p


@torch.no_grad()
def probabilities_on(model: TextClassifierModule, reviews: list[list[str]],
                     batch_size: int = 256) -> torch.Tensor:
    """``(N, num_classes)`` class probabilities of a trained classifier for token lists (tokenised
    as its training data was, e.g. :meth:`fodl.data.imdb.IMDBDataModule.reviews`), in the
    reviews' order: each cut to the checkpoint's ``max_len``, numericalised with its vocabulary,
    classified in length-sorted batches."""
    max_len = model.text_settings.get("max_len")
    order = sorted(range(len(reviews)), key=lambda i: -len(reviews[i]))
    was = model.net.training
    model.net.eval()
    out = None
    for k in range(0, len(order), batch_size):
        sel = order[k : k + batch_size]
        tokens, lengths = model.vocab.encode_batch([reviews[i] or [""] for i in sel], max_len)
        p = model.net(tokens.to(model.device), lengths.to(model.device)).softmax(-1).float().cpu()
        if out is None:
            out = torch.empty(len(reviews), p.shape[-1])
        out[sel] = p
    model.net.train(was)
    return out if out is not None else torch.empty(0, 2)


def load_text_classifier(path: str) -> TextClassifierModule:
    """A trained :class:`TextClassifierModule` with its vocabulary, from a checkpoint alone."""
    from fodl.checkpoint import load_trained

    return load_trained(path, TextClassifierModule, "text classifier's (model=lstm_sentiment)")
