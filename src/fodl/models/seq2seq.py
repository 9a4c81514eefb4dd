"""Sequence-to-sequence translation with attention (book chapter 7), scored with sacreBLEU.

Training: token-level cross-entropy of the next target word (padding ignored; optional label
smoothing) under teacher forcing (``model.net.teacher_forcing``). Evaluation, per epoch:

- ``val/loss`` (per target token, no smoothing) and ``val/ppl`` = ``exp(val/loss)``;
- ``val/bleu``: sacreBLEU (``sacrebleu.corpus_bleu``, 13a tokenisation) of the decoded
  (``decode=greedy|beam``), detokenised translations against the raw reference sentences,
  case-insensitive when the data is lowercased;
- TensorBoard: a few sample translations (source, reference, output) as text and the
  attention matrix of the first one as an image (figure 7-27's idea, on real sentences).

Testing logs ``test/loss``, ``test/ppl``, ``test/bleu_greedy``, ``test/bleu_beam`` (when
``beam_size > 1``) and ``test/bleu`` (the configured ``decode``'s), all on the same weights.
Vocabularies and tokenisation settings are kept in every checkpoint (``fodl_text``), so
``scripts/translate.py CKPT "ein Mann fährt Fahrrad ."`` needs only the checkpoint.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from fodl.callbacks import tensorboard
from fodl.data.parallel import detokenize, tokenize_sentence
from fodl.errors import FodlError
from fodl.models.base import FodlModule
from fodl.nets.seq2seq import Decoded, Seq2SeqNet, beam_search, greedy_decode
from fodl.text.subword import SubwordCodec, codecs_from_settings
from fodl.text.vocab import Vocabulary

log = logging.getLogger(__name__)


def corpus_bleu(hypotheses: list[str], references: list[str], lowercase: bool = True) -> float:
    """sacreBLEU's corpus BLEU (0-100) of detokenised hypotheses against one reference each."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references], lowercase=lowercase).score)


def attention_figure(weights: torch.Tensor, source: list[str], output: list[str]):
    """A matplotlib figure of an attention matrix: output words (rows) x source words (columns)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    w = weights[: len(output), : len(source)].float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(source), 1.0 + 0.4 * len(output)))
    ax.imshow(w, cmap="gray_r", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source)), source, rotation=60, ha="right")
    ax.set_yticks(range(len(output)), output)
    ax.set_xlabel("source")
    ax.set_ylabel("translation")
    fig.tight_layout()
    return fig


class Seq2SeqModule(FodlModule):
    """Args (besides :class:`~fodl.models.base.FodlModule`'s):
        net: a :class:`~fodl.nets.seq2seq.Seq2SeqNet`.
        label_smoothing: of the training cross-entropy (0: none).
        decode: ``greedy`` or ``beam``: how validation (``val/bleu``) and ``test/bleu`` decode.
        beam_size, length_penalty: beam search (GNMT penalty ``alpha``; 0: plain log-prob).
        max_decode_len: at most ``1.5 x source length + 10`` words, and at most this.
        samples: sample translations logged per validation epoch (0: none).
    """

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, scheduler_interval: str = "epoch",
                 gradient_clip_val: float | None = None, cuda_graph: bool = False,
                 label_smoothing: float = 0.0, decode: str = "greedy", beam_size: int = 5,
                 length_penalty: float = 0.6, max_decode_len: int = 80,
                 samples: int = 3) -> None:
        if cuda_graph:
            raise FodlError("model.cuda_graph=true graphs a net of one fixed-shape input; the "
                            "seq2seq batches change length. Set model.cuda_graph=false.")
        super().__init__(optimizer, scheduler, scheduler_interval, gradient_clip_val, False)
        self.net = net
        self.label_smoothing, self.decode = label_smoothing, decode
        self.beam_size, self.length_penalty = beam_size, length_penalty
        self.max_decode_len, self.samples = max_decode_len, samples
        self.src_vocab: Vocabulary | None = None
        self.tgt_vocab: Vocabulary | None = None
        self.text_settings: dict[str, Any] = {}
        self._codecs: dict[str, SubwordCodec] = {}  # data.subword=bpe: side -> codec
        self._refs: dict[str, list[str]] = {}
        self._srcs: dict[str, list[str]] = {}
        self._eval: dict[str, Any] = {}

    # -- training ----------------------------------------------------------------------------
    @staticmethod
    def _cut(batch):
        src, src_len, tgt, tgt_len = batch[:4]
        return src, src_len, tgt[:, : int(tgt_len.max())], tgt_len

    def training_loss(self, batch) -> torch.Tensor:
        src, src_len, tgt, _ = self._cut(batch)
        logits = self.net(src, src_len, tgt[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1),
                               ignore_index=self.net.pad_id, label_smoothing=self.label_smoothing)

    # -- decoding ----------------------------------------------------------------------------
    def translate_ids(self, src: torch.Tensor, src_len: torch.Tensor, beam: bool | None = None,
                      attention: bool = False) -> Decoded:
        """Decode a batch of sources (greedy or beam search, per ``beam`` or ``model.decode``)."""
        beam = (self.decode == "beam") if beam is None else beam
        max_len = min(self.max_decode_len, int(int(src_len.max()) * 1.5) + 10)
        was = self.net.training
        self.net.eval()
        try:
            if beam and self.beam_size > 1:
                return beam_search(self.net, src, src_len, self.beam_size, max_len,
                                   self.length_penalty, attention)
            return greedy_decode(self.net, src, src_len, max_len, self.length_penalty, attention)
        finally:
            self.net.train(was)

    def _strings(self, decoded: Decoded) -> list[str]:
        pieces = [self.tgt_vocab.decode(t) for t in decoded.tokens]
        if "tgt" in self._codecs:  # data.subword=bpe: pieces back to words
            pieces = [SubwordCodec.join(p) for p in pieces]
        return [detokenize(p) for p in pieces]

    # -- evaluation --------------------------------------------------------------------------
    def _eval_start(self, stage: str) -> None:
        # per sentence index: under DDP each process sees a shard (padded with repeats to equal
        # sizes); keyed by index, the merged results count every sentence exactly once
        self._eval[stage] = {"nll": {}, "tokens": {}, "hyps": {}}

    def on_validation_epoch_start(self) -> None:
        self._eval_start("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start("test")

    def _eval_step(self, batch, stage: str) -> None:
        src, src_len, tgt, _ = self._cut(batch)
        index = batch[4]
        logits = self.net(src, src_len, tgt[:, :-1])
        nll = F.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], ignore_index=self.net.pad_id,
                              reduction="none").sum(1)
        acc = self._eval[stage]
        ids = index.tolist()
        acc["nll"].update(zip(ids, nll.tolist()))
        acc["tokens"].update(zip(ids, (tgt[:, 1:] != self.net.pad_id).sum(1).tolist()))
        if self.tgt_vocab is None:
            return
        modes = [self.decode] if stage == "val" else (
            ["greedy", "beam"] if self.beam_size > 1 else ["greedy"])
        for mode in modes:
            hyps = acc["hyps"].setdefault(mode, {})
            for i, s in zip(index.tolist(), self._strings(self.translate_ids(src, src_len, mode == "beam"))):
                hyps[i] = s

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _merged(self, stage: str) -> dict[str, Any] | None:
        """This stage's per-sentence results, merged over all processes under DDP (BLEU is a
        corpus statistic: every process scores the whole split, from the same hypotheses)."""
        acc = self._eval.get(stage)
        world = self.trainer.world_size if self._trainer is not None else 1
        if acc is None or world == 1 or not torch.distributed.is_initialized():
            return acc
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, acc)
        merged: dict[str, Any] = {"nll": {}, "tokens": {}, "hyps": {}}
        for part in parts:
            merged["nll"].update(part["nll"])
            merged["tokens"].update(part["tokens"])
            for mode, hyps in part["hyps"].items():
                merged["hyps"].setdefault(mode, {}).update(hyps)
        return merged

    def _eval_end(self, stage: str) -> None:
        acc = self._merged(stage)
        if not acc or not acc["tokens"]:
            return
        order = sorted(acc["tokens"])
        loss = sum(acc["nll"][i] for i in order) / max(sum(acc["tokens"][i] for i in order), 1)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}/ppl", math.exp(min(loss, 50.0)))
        refs = self._refs.get(stage)
        lower = bool(self.text_settings.get("lowercase", True))
        for mode, hyps in acc["hyps"].items():
            if not hyps or refs is None:
                continue
            order = sorted(hyps)
            bleu = corpus_bleu([hyps[i] for i in order], [refs[i] for i in order], lower)
            if stage == "val":
                self.log("val/bleu", bleu, prog_bar=True)
            else:
                self.log(f"test/bleu_{mode}", bleu)
                if mode == self.decode or (mode == "greedy" and self.beam_size == 1):
                    self.log("test/bleu", bleu)
            if not self.trainer.sanity_checking:
                log.info("%s BLEU (%s, %d sentences): %.2f", stage, mode, len(order), bleu)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")
        if (self.samples and self.tgt_vocab is not None and self.trainer.is_global_zero
                and not self.trainer.sanity_checking and self._srcs.get("val")):
            self._log_samples()

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def _log_samples(self) -> None:
        sources = self._srcs["val"][: self.samples]
        refs = self._refs["val"][: self.samples]
        out = self.translate(sources, beam=self.decode == "beam", attention=True)
        lines = []
        for s, r, (t, _) in zip(sources, refs, out):
            lines.append(f"source: {s}  \nreference: {r}  \ntranslation: {t}")
            log.info("epoch %d: %s -> %s", self.current_epoch, s, t)
        writer = tensorboard(self.trainer)
        if writer is None:
            return
        writer.add_text("translation/samples", "\n\n".join(lines), self.global_step)
        weights = out[0][1]
        if weights is not None:
            src_words = self.source_tokens(sources[0]) + ["<eos>"]
            out_words = self.tgt_vocab.decode(self.last_decoded.tokens[0]) + ["<eos>"]
            import matplotlib.pyplot as plt

            fig = attention_figure(weights, src_words, out_words)
            writer.add_figure("translation/attention", fig, self.global_step)
            plt.close(fig)

    # -- vocabularies in checkpoints ---------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if getattr(dm, "src_vocab", None) is None:
            return
        problems = []
        for side, vocab, rows in (("source", dm.src_vocab, self.net.src_embed.num_embeddings),
                                  ("target", dm.tgt_vocab, self.net.out.out_features)):
            if len(vocab) > rows:
                problems.append(f"the {side} vocabulary has {len(vocab)} words but the net {rows} "
                                f"rows (model.net.{'src' if side == 'source' else 'tgt'}_vocab_size)")
        for name in ("pad", "bos", "eos"):
            if getattr(dm.tgt_vocab, f"{name}_id") != getattr(self.net, f"{name}_id"):
                problems.append(f"the target {name} id differs between data and net")
        if problems:
            raise FodlError("The seq2seq net does not fit its data: " + "; ".join(problems) +
                            ". Set data.src_max_size / data.tgt_max_size (the net follows them).")
        self.src_vocab, self.tgt_vocab = dm.src_vocab, dm.tgt_vocab
        self.net.num_words = len(self.tgt_vocab)
        self.text_settings = dict(dm.text_settings())
        self._codecs = dict(dm.codecs)
        self._refs, self._srcs = dm.references, dm.sources

    def text_state(self):
        if self.src_vocab is None:
            return None
        return {"src": self.src_vocab, "tgt": self.tgt_vocab}, self.text_settings

    def set_text_state(self, vocabs: dict[str, Vocabulary], settings: dict[str, Any]) -> None:
        self.src_vocab, self.tgt_vocab, self.text_settings = vocabs["src"], vocabs["tgt"], settings
        self._codecs = codecs_from_settings(settings)
        self.net.num_words = min(len(self.tgt_vocab), self.net.tgt_vocab_size)

    # -- raw text ------------------------------------------------------------------------------
    def source_tokens(self, text: str) -> list[str]:
        words = tokenize_sentence(text, self.text_settings.get("lowercase", True))
        return self._codecs["src"].split(words) if "src" in self._codecs else words

    @torch.no_grad()
    def translate(self, texts: list[str], beam: bool = True, attention: bool = False
                  ) -> list[tuple[str, torch.Tensor | None]]:
        """Translations of raw sentences (tokenised as in training), with their attention
        matrices ``(output words + <eos>, source words + <eos>)`` when asked."""
        if self.src_vocab is None:
            raise FodlError("This translator has no vocabulary: load it from a checkpoint written "
                            "by training (scripts/translate.py does).")
        seqs = [self.source_tokens(t) or ["<unk>"] for t in texts]
        src, src_len = self.src_vocab.encode_batch(seqs, self.text_settings.get("max_len"), eos=True)
        decoded = self.translate_ids(src.to(self.device), src_len.to(self.device), beam, attention)
        self.last_decoded = decoded
        atts = decoded.attention or [None] * len(texts)
        return list(zip(self._strings(decoded), atts))


def load_translator(path: str) -> Seq2SeqModule:
    """A trained :class:`Seq2SeqModule` with its vocabularies, from a checkpoint alone."""
    from fodl.checkpoint import load_trained

    return load_trained(path, Seq2SeqModule, "translator's (model=seq2seq_attention)")


__all__ = ["Seq2SeqModule", "Seq2SeqNet", "corpus_bleu", "load_translator"]
