"""The POS tagger (book chapter 7): a classifier of token windows, plus what tagging needs.

Training is :class:`~fodl.models.classifier.ClassifierModule`'s (softmax cross-entropy of the
window net's logits against the tag, one example per token); a tagger is that classifier with

- its vocabularies and window settings stored in every checkpoint (plain lists under
  ``fodl_text``), so ``scripts/tag.py CKPT "a sentence"`` needs only the checkpoint;
- pretrained word vectors (``data.vectors``, word2vec text/binary) copied into the embedding
  when training starts;
- ``val/acc_unknown`` / ``test/acc_unknown``: accuracy on word forms absent from training;
- after every validation epoch, the tagging of the book's sentence ("The woman, after grabbing
  her umbrella, went to the bank to deposit her cash.") in the log and in TensorBoard (text);
- after testing, the per-tag accuracy table (log and TensorBoard text).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from fodl.callbacks import tensorboard
from fodl.data.conll import BOOK_SENTENCE
from fodl.errors import FodlError
from fodl.metrics.tagging import per_tag_table, tagging_scores
from fodl.models.classifier import ClassifierModule
from fodl.text.tokenize import treebank_tokenize
from fodl.text.vocab import Vocabulary
from fodl.text.window import SHAPES, WindowFeaturizer

log = logging.getLogger(__name__)


class TaggerModule(ClassifierModule):
    """Args: those of :class:`ClassifierModule` (``num_classes``: the number of tags), and
    ``example``: the sentence tagged after every validation epoch (None: none)."""

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, scheduler_interval: str = "epoch",
                 num_classes: int = 44, gradient_clip_val: float | None = None,
                 cuda_graph: bool = False, example: str | None = BOOK_SENTENCE) -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval, num_classes,
                         gradient_clip_val, cuda_graph)
        self.example = example
        self.featurizer: WindowFeaturizer | None = None
        self.tags: Vocabulary | None = None
        self.val_acc_unknown = MeanMetric()
        self.test_acc_unknown = MeanMetric()
        self._test_out: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # -- vocabularies ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        feat = getattr(dm, "featurizer", None)
        if feat is None:
            return
        self.featurizer, self.tags = feat, dm.tags
        net = self.net
        problems = []
        if len(feat.words) > net.embed.num_embeddings:
            problems.append(f"the word vocabulary has {len(feat.words)} entries but the net "
                            f"{net.embed.num_embeddings} rows (model.net.vocab_size; data.max_words)")
        if feat.suffixes is not None and net.suffix is not None and len(feat.suffixes) > net.suffix.num_embeddings:
            problems.append(f"{len(feat.suffixes)} suffixes but {net.suffix.num_embeddings} suffix "
                            "rows (model.net.suffix_vocab_size; data.max_suffixes)")
        if net.shape is not None and len(SHAPES) > net.shape.num_embeddings:
            problems.append(f"{len(SHAPES)} word shapes but {net.shape.num_embeddings} shape rows "
                            "(model.net.num_shapes)")
        if len(self.tags) != self.val_acc.num_classes:
            problems.append(f"the data has {len(self.tags)} tags but model.num_classes="
                            f"{self.val_acc.num_classes}")
        if net.window != feat.width:
            problems.append(f"the data's windows have {feat.width} words but the net "
                            f"{net.window} (model.net.window; data.left + 1 + data.right)")
        if problems:
            raise FodlError("The tagger does not fit its data: " + "; ".join(problems) + ". The "
                            "model config interpolates these from data.*; keep them in step.")
        pretrained = getattr(dm, "pretrained", None)
        if stage == "fit" and pretrained is not None:
            n = net.load_vectors(*pretrained)
            log.info("word embeddings: %d of %d rows initialised from %s", n,
                     len(feat.words), dm.vectors)

    def text_state(self):
        if self.featurizer is None:
            return None
        return ({**self.featurizer.vocabularies(), "tags": self.tags},
                {**self.featurizer.settings(), "tokenizer": "treebank"})

    def set_text_state(self, vocabs: dict[str, Vocabulary], settings: dict[str, Any]) -> None:
        vocabs = dict(vocabs)
        self.tags = vocabs.pop("tags")
        self.featurizer = WindowFeaturizer.from_state(vocabs, settings)

    # -- tagging ---------------------------------------------------------------------------
    @torch.no_grad()
    def tag(self, tokens: list[str]) -> list[str]:
        """The predicted tag of every token of one sentence."""
        if self.featurizer is None:
            raise FodlError("This tagger has no vocabulary: load it from a checkpoint written by "
                            "training (scripts/tag.py does).")
        if not tokens:
            return []
        was_training = self.net.training
        self.net.eval()
        x = self.featurizer.windows([tokens]).to(self.device)
        pred = self.net(x).argmax(-1)
        self.net.train(was_training)
        return self.tags.decode(pred)

    def tag_text(self, text: str) -> list[tuple[str, str]]:
        tokens = treebank_tokenize(text)
        return list(zip(tokens, self.tag(tokens)))

    # -- evaluation ------------------------------------------------------------------------
    def _eval_step(self, batch, stage: str, metric) -> None:
        x, y = batch[0], batch[1]
        logits = self.net(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True,
                 batch_size=len(y), prog_bar=stage == "val")
        metric.update(logits, y)
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=stage == "val")
        if len(batch) > 2:
            unknown = batch[2]
            correct = (logits.argmax(-1) == y).float()
            unk = self.val_acc_unknown if stage == "val" else self.test_acc_unknown
            if unknown.any():
                unk.update(correct[unknown])
            if stage == "test":
                self._test_out.append((logits.argmax(-1).cpu(), y.cpu(), unknown.cpu()))

    def _log_unknown(self, stage: str) -> None:
        """``<stage>/acc_unknown`` when the split had unknown words (else nothing: no NaN)."""
        unk = self.val_acc_unknown if stage == "val" else self.test_acc_unknown
        if unk.update_count:
            self.log(f"{stage}/acc_unknown", unk.compute())
        unk.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_unknown("val")
        if (self.example and self.featurizer is not None and self.trainer.is_global_zero
                and not self.trainer.sanity_checking):
            pairs = self.tag_text(self.example)
            line = " ".join(f"{w}/{t}" for w, t in pairs)
            log.info("epoch %d: %s", self.current_epoch, line)
            writer = tensorboard(self.trainer)
            if writer is not None:
                writer.add_text("tagging/book_sentence", line, self.global_step)

    def on_test_epoch_start(self) -> None:
        self._test_out.clear()

    def on_test_epoch_end(self) -> None:
        self._log_unknown("test")
        if not self._test_out or self.tags is None or not self.trainer.is_global_zero:
            return
        pred, gold, unknown = (torch.cat(t) for t in zip(*self._test_out))
        self._test_out.clear()
        scores = tagging_scores(pred, gold, unknown, self.tags.words)
        self.test_scores = scores
        table = per_tag_table(scores["per_tag"])
        log.info("test: accuracy %.4f, on unknown words %.4f (%d of %d tokens); per tag:\n%s",
                 scores["acc"], scores["acc_unknown"], scores["unknown_tokens"], scores["tokens"], table)
        writer = tensorboard(self.trainer)
        if writer is not None:
            writer.add_text("test/per_tag_accuracy", table, self.global_step)


def load_tagger(path: str) -> TaggerModule:
    """A trained :class:`TaggerModule` with its vocabularies, from a checkpoint alone."""
    from fodl.checkpoint import load_trained

    return load_trained(path, TaggerModule, "POS tagger's (model=pos_tagger)")


def evaluate_checkpoint(path: str, data_dir: str | None = None) -> dict:
    """Test scores (:func:`~fodl.metrics.tagging.tagging_scores`) of a tagger checkpoint on
    its data's test split, featurised with the checkpoint's own vocabularies."""
    from fodl.checkpoint import load_module

    module = load_tagger(path)
    _, data_cfg, _ = load_module(path, {"data_dir": data_dir} if data_dir else None)
    from hydra.utils import instantiate

    dm = instantiate(data_cfg)
    sents = dm.sentences()
    known = {w for s in sents["train"] for w in s.words}
    test = sents["test"]
    x = module.featurizer.windows([s.words for s in test])
    y = module.tags.encode([t for s in test for t in s.tags]).clamp_min(0)
    unknown = torch.tensor([w not in known for s in test for w in s.words])
    with torch.no_grad():
        pred = torch.cat([module.net(c).argmax(-1) for c in x.split(4096)])
    return tagging_scores(pred, y, unknown, module.tags.words)
