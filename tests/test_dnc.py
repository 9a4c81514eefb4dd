"""Chapter 8: the DNC's memory operations on hand-computed cases, the nets, the copy-task and
bAbI data (a hand-written story file in the real format), the sequence module's scoring, and a
short training run through the real train() path."""

import math
import tarfile

import pytest
import torch

from conftest import SHARED_DATA, compose_train, shared_file
from fodl.data.babi import (
    ANSWER,
    QUESTION,
    STOP,
    BabiDataModule,
    StoryBatch,
    gather_stories,
    parse_babi,
    permute_words,
    sentence_units,
    story_tokens,
)
from fodl.data.copy_task import CopyTaskDataModule, make_copy_batch
from fodl.errors import FodlError
from fodl.models.memory import MemoryModule
from fodl.nets.dnc import (
    DNC,
    SequenceLSTM,
    allocation_weighting,
    content_weighting,
    directional_weightings,
    encode_sentences,
    interface_size,
    parse_interface,
    position_encoding,
    read_weighting,
    retention,
    update_link,
    update_precedence,
    update_usage,
    write_memory,
    write_weighting,
)

T = torch.tensor


def approx(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                          atol=tol, rtol=0)


# -- memory operations, one by one ---------------------------------------------------------
def test_content_weighting_hand_case():
    memory = T([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])  # slot 2 empty
    w = content_weighting(memory, T([[[1.0, 0.0], [1.0, 1.0]]]), T([[2.0, 1.0]]))
    e2 = math.exp(2)
    assert approx(w[0, 0], [e2 / (e2 + 2), 1 / (e2 + 2), 1 / (e2 + 2)])  # cos = 1, 0, 0 (empty row: 0)
    c = 1 / math.sqrt(2)
    z = 2 * math.exp(c) + 1
    assert approx(w[0, 1], [math.exp(c) / z, math.exp(c) / z, 1 / z])
    # sharper with a larger strength, and a finite gradient at an all-zero memory
    assert content_weighting(memory, T([[[1.0, 0.0]]]), T([[50.0]]))[0, 0, 0] > 0.999
    zero = torch.zeros(1, 3, 2, requires_grad=True)
    key = torch.zeros(1, 1, 2, requires_grad=True)
    out = content_weighting(zero, key, T([[5.0]]))
    assert approx(out[0, 0], [1 / 3] * 3)
    out[0, 0, 0].backward()
    assert torch.isfinite(zero.grad).all() and torch.isfinite(key.grad).all()


def test_retention_and_usage_update():
    psi = retention(T([[0.5, 1.0]]), T([[[1.0, 0.0, 0.0], [0.0, 0.5, 0.0]]]))
    assert approx(psi, [[0.5, 0.5, 1.0]])
    u = update_usage(T([[0.5, 0.0, 1.0]]), T([[0.5, 1.0, 0.0]]), T([[1.0, 1.0, 0.0]]))
    assert approx(u, [[0.75, 1.0, 0.0]])  # u + w - uw, then slot 2 freed by psi = 0


def test_allocation_ordering_and_ties():
    # slot 1 is the least used: it gets 1 - u; then slot 0, then slot 2
    assert approx(allocation_weighting(T([[0.4, 0.1, 0.9]])), [[0.6 * 0.1, 0.9, 0.1 * 0.1 * 0.4]])
    # ties are broken by slot index: slot 0 before slot 1
    assert approx(allocation_weighting(T([[0.5, 0.5, 1.0]])), [[0.5, 0.25, 0.0]])
    # an empty memory allocates its first slot; a full one allocates nothing
    a = allocation_weighting(torch.zeros(1, 4))
    assert a[0, 0] > 0.999 and a[0, 1:].sum() < 1e-5
    assert allocation_weighting(torch.ones(2, 4)).abs().max() < 1e-5
    # batched: each row on its own
    both = allocation_weighting(T([[0.4, 0.1, 0.9], [0.5, 0.5, 1.0]]))
    assert approx(both[1], [0.5, 0.25, 0.0])


def test_write_weighting_and_memory_write():
    ww = write_weighting(T([[1.0, 0.0]]), T([[0.2, 0.8]]), T([[0.5]]), T([[0.75]]))
    assert approx(ww, [[0.5 * (0.75 + 0.25 * 0.2), 0.5 * 0.25 * 0.8]])
    memory = T([[[1.0, 1.0], [2.0, 2.0]]])
    new = write_memory(memory, T([[1.0, 0.5]]), T([[1.0, 0.0]]), T([[3.0, 4.0]]))
    # slot 0: erased on channel 0 then + v; slot 1: half erased on channel 0, + v / 2
    assert approx(new, [[[3.0, 5.0], [2.5, 4.0]]])


def test_link_matrix_and_precedence():
    n = 3
    link, p = torch.zeros(1, n, n), torch.zeros(1, n)
    for slot in range(n):  # write slots 0, 1, 2 in turn, fully
        w = torch.zeros(1, n)
        w[0, slot] = 1.0
        link = update_link(link, p, w)
        p = update_precedence(p, w)
    assert approx(link, [[[0, 0, 0], [1, 0, 0], [0, 1, 0]]])  # L[i, j]: i written right after j
    assert approx(p, [[0, 0, 1]])
    # precedence decays by the total write and adds the new one
    assert approx(update_precedence(T([[0.2, 0.3, 0.5]]), T([[0.0, 0.5, 0.0]])), [[0.1, 0.65, 0.25]])
    # soft writes: L[i,j] = w_i p_j off the diagonal, the diagonal stays zero
    out = update_link(torch.zeros(1, n, n), T([[0.5, 0.5, 0.0]]), T([[0.5, 0.5, 0.0]]))
    assert approx(out, [[[0, 0.25, 0], [0.25, 0, 0], [0, 0, 0]]])
    assert (torch.diagonal(update_link(torch.rand(4, n, n), torch.rand(4, n), torch.rand(4, n) / n),
                           dim1=1, dim2=2) == 0).all()


def test_forward_and_backward_reads():
    link = T([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # order written: 0, 1, 2
    prev = T([[[0.0, 1.0, 0.0]]])  # head 0 read slot 1
    fwd, bwd = directional_weightings(link, prev)
    assert approx(fwd, [[[0, 0, 1]]]) and approx(bwd, [[[1, 0, 0]]])  # next written / previous
    content = T([[[0.2, 0.3, 0.5]]])
    modes = T([[[0.25, 0.25, 0.5]]])  # backward, content, forward
    assert approx(read_weighting(modes, bwd, content, fwd), [[[0.25 + 0.05, 0.075, 0.125 + 0.5]]])


def test_interface_layout():
    w, r = 4, 2
    size = interface_size(w, r)
    assert size == r * w + 3 * w + 5 * r + 3
    xi = torch.randn(3, size)
    f = parse_interface(xi, w, r)
    assert f.read_keys.shape == (3, r, w) and f.write_key.shape == (3, 1, w)
    assert f.read_strengths.shape == (3, r) and (f.read_strengths >= 1).all() and (f.write_strength >= 1).all()
    for gate in (f.erase, f.free_gates, f.allocation_gate, f.write_gate):
        assert ((gate > 0) & (gate < 1)).all()
    assert approx(f.read_modes.sum(-1), torch.ones(3, r))
    # every entry of the interface vector lands in exactly one field
    xi = torch.zeros(1, size, requires_grad=True)
    f = parse_interface(xi, w, r)
    sum(v.sum() for v in f).backward()
    assert (xi.grad != 0).sum() >= size - 3 * r  # (softmax of zeros: gradient 0 on the modes)


# -- the nets --------------------------------------------------------------------------------
@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_dnc_gradients_reach_every_parameter(controller):
    torch.manual_seed(0)
    net = DNC(6, 4, controller=controller, hidden_size=16, memory_size=8, word_size=5, read_heads=2)
    y, trace = net(torch.rand(3, 7, 6), trace=True)
    assert y.shape == (3, 7, 4)
    assert trace["write_weights"].shape == (3, 7, 8) and trace["read_weights"].shape == (3, 7, 2, 8)
    assert (trace["write_weights"].sum(-1) <= 1 + 1e-5).all()
    (y.square().mean() + y.mean()).backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_token_input_and_lstm_baseline():
    torch.manual_seed(0)
    x = torch.randint(0, 11, (2, 9))
    dnc = DNC(11, 11, tokens=True, hidden_size=8, memory_size=4, word_size=3)
    lstm = SequenceLSTM(11, 11, tokens=True, hidden_size=8)
    assert dnc(x).shape == lstm(x).shape == (2, 9, 11)
    # one-hot input through the LSTM equals feeding the one-hot vectors yourself
    vec = SequenceLSTM(11, 11, hidden_size=8)
    vec.load_state_dict(lstm.state_dict())
    assert torch.allclose(vec(torch.nn.functional.one_hot(x, 11).float()), lstm(x))
    with pytest.raises(ValueError, match="controller"):
        DNC(3, 3, controller="gru")


def test_lstm_baseline_forget_bias():
    """model.net.forget_bias sets every layer's forget-gate bias (bias_ih + bias_hh) and
    nothing else; null keeps the init's."""
    torch.manual_seed(0)
    plain = SequenceLSTM(11, 11, tokens=True, hidden_size=8, num_layers=2, embedding_size=6)
    torch.manual_seed(0)
    biased = SequenceLSTM(11, 11, tokens=True, hidden_size=8, num_layers=2, embedding_size=6,
                          forget_bias=1.0)
    forget = slice(8, 16)
    for layer in (0, 1):
        total = getattr(biased.lstm, f"bias_ih_l{layer}") + getattr(biased.lstm, f"bias_hh_l{layer}")
        assert torch.equal(total[forget], torch.ones(8))
        before = getattr(plain.lstm, f"bias_ih_l{layer}") + getattr(plain.lstm, f"bias_hh_l{layer}")
        assert before[forget].abs().max() < 0.8  # torch's init: U(-1/sqrt(8), 1/sqrt(8)) twice
        keep = torch.ones(32, dtype=torch.bool)
        keep[forget] = False
        assert torch.equal(total[keep], before[keep])
    for (name, p), q in zip(biased.named_parameters(), plain.parameters()):
        if "bias" not in name:
            assert torch.equal(p, q), name


def test_long_run_stays_finite():
    """The public PyTorch DNC warns of NaNs: 250 steps with weights blown up 20x (saturated
    gates, huge key strengths) keep outputs and gradients finite."""
    torch.manual_seed(0)
    net = DNC(6, 4, hidden_size=16, memory_size=8, word_size=4, read_heads=2)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(20)
    y, trace = net(torch.randn(2, 250, 6) * 10, trace=True)
    y.sum().backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert ((trace["usage"] >= 0) & (trace["usage"] <= 1 + 1e-5)).all()


def test_short_copy_run_lowers_the_loss():
    torch.manual_seed(0)
    net = DNC(6, 4, hidden_size=32, memory_size=8, word_size=8)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        b = make_copy_batch(16, 3, 4, generator=g)
        y = net(b.inputs)
        m = b.mask.unsqueeze(-1).float()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(y, b.targets, reduction="none") * m).sum() / (
            m.sum() * 4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.65 and sum(losses[-5:]) / 5 < 0.55


# -- copy task data --------------------------------------------------------------------------
def test_copy_batch_layout():
    b = make_copy_batch(2, 3, 4, repeats=2, max_repeats=4, generator=torch.Generator().manual_seed(1))
    assert b.inputs.shape == (2, 3 + 1 + 6, 6) and b.targets.shape == (2, 10, 4)
    bits = b.inputs[:, :3, :4]
    assert torch.equal(b.targets[:, 4:7], bits) and torch.equal(b.targets[:, 7:], bits)
    assert (b.inputs[:, 3, 4] == 1).all() and (b.inputs[:, 3, 5] == 0.5).all()  # delimiter, 2 of 4
    assert b.inputs[:, 4:].abs().sum() == 0 and b.targets[:, :4].abs().sum() == 0
    assert b.mask.tolist() == [[False] * 4 + [True] * 6] * 2 and b.length.tolist() == [3, 3]


def test_copy_datamodule_streams_and_errors():
    dm = CopyTaskDataModule(width=4, min_length=2, max_length=5, batch_size=3, batches_per_epoch=4,
                            test_lengths=[1, 9], seed=3)
    dm.setup()
    e0 = list(dm.train_dataloader())
    again = list(dm.train_dataloader())
    assert len(e0) == 4 and all(torch.equal(a.inputs, b.inputs) for a, b in zip(e0, again))
    assert all(2 <= int(b.length[0]) <= 5 for b in e0)
    assert [int(b.length[0]) for b in dm.test_dataloader()] == list(range(1, 10))
    assert [int(b.length[0]) for b in dm.val_dataloader()] == [2, 3, 4, 5]
    with pytest.raises(FodlError, match="max_length"):
        CopyTaskDataModule(min_length=5, max_length=2)


# -- bAbI ------------------------------------------------------------------------------------
STORY_QA1 = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Where is Daniel? \thallway\t4
1 Sandra travelled to the office.
2 Where is Sandra? \toffice\t1
"""
STORY_QA8 = """1 Mary took the apple.
2 Mary grabbed the football there.
3 What is Mary carrying?\tapple,football\t1 2
4 Mary dropped the apple.
5 What is Mary carrying?\tfootball\t1 2 4
"""


def write_babi(root, files: dict[str, str], archive: bool = True):
    folder = root / "babi-en-10k"
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    if not archive:
        return folder
    path = root / "babi-en-10k.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="babi-en-10k")
    return path


def test_babi_reader_on_a_hand_written_story():
    stories = parse_babi(STORY_QA1 + STORY_QA8, "x.txt")
    assert len(stories) == 3 and [len(s) for s in stories] == [5, 2, 5]
    q = stories[0][2]
    assert q.words == ["where", "is", "mary"] and q.answers == ["bathroom"] and q.supporting == [1]
    assert stories[2][2].answers == ["apple", "football"] and stories[2][2].supporting == [1, 2]
    words, targets = story_tokens(stories[2][:3])
    assert words == ["mary", "took", "the", "apple", STOP, "mary", "grabbed", "the", "football", "there",
                     STOP, "what", "is", "mary", "carrying", QUESTION, ANSWER, ANSWER]
    assert targets[-2:] == ["apple", "football"] and set(targets[:-2]) == {None}
    with pytest.raises(FodlError, match="line 1"):
        parse_babi("Mary moved.\n", "bad.txt")


def test_babi_datamodule_encodes_scores_and_names_missing_files(tmp_path):
    files = {"qa1_single-supporting-fact_train.txt": STORY_QA1 * 5,
             "qa1_single-supporting-fact_test.txt": STORY_QA1,
             "qa8_lists-sets_train.txt": STORY_QA8 * 5, "qa8_lists-sets_test.txt": STORY_QA8,
             "qa3_three-supporting-facts_test.txt": STORY_QA1}
    path = write_babi(tmp_path, files)
    dm = BabiDataModule(data_dir=str(tmp_path), tasks=[1, 8], val_fraction=0.2, batch_size=4,
                        eval_batch_size=8, cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    assert dm.vocab.words[:5] == ["<pad>", "<unk>", STOP, QUESTION, ANSWER]
    assert len(dm.splits["train"][0]) == 12 and len(dm.splits["val"][0]) == 3  # 15 stories, 20% held out
    assert dm.tasks_in["test"] == [1, 8]
    batch = next(iter(dm.test_dataloader()))
    assert isinstance(batch, StoryBatch) and batch.inputs.shape[0] == 3
    assert dm.vocab.decode(batch.targets[batch.answer].tolist()) == [
        "bathroom", "hallway", "office", "apple", "football", "football"]
    assert batch.question[2][batch.answer[2]].tolist() == [0, 0, 1]  # two words, one question
    # training batches: shuffled per epoch, every story once, padded to the batch's longest
    seen = sorted(int(s) for b in dm.train_dataloader() for s in b.task)
    assert seen == [1] * 8 + [8] * 4
    # the same folder, unpacked, gives the same data (folder or archive)
    dm2 = BabiDataModule(data_dir=str(path.parent / "babi-en-10k"), path=".", tasks=[1, 8], val_fraction=0.2)
    dm2.setup()
    assert dm2.vocab.words == dm.vocab.words
    # a task whose file is absent: a clear error naming it, or skipped on request
    with pytest.raises(FodlError, match=r"qa3_three-supporting-facts_train\.txt.*missing=skip"):
        BabiDataModule(data_dir=str(tmp_path), tasks=[1, 3]).setup()
    skip = BabiDataModule(data_dir=str(tmp_path), tasks=[1, 3], missing="skip")
    skip.setup()
    assert skip.tasks_in["train"] == [1] and skip.tasks_in["test"] == [1, 3]
    with pytest.raises(FodlError, match="not found"):
        BabiDataModule(data_dir=str(tmp_path / "nowhere")).setup()
    with pytest.raises(FodlError, match="max_size"):
        BabiDataModule(data_dir=str(tmp_path), tasks=[1, 8], max_size=10).setup()


def test_babi_scoring_counts_a_question_right_only_when_all_its_words_are():
    module = MemoryModule(lambda **kw: SequenceLSTM(hidden_size=4, **kw), optimizer=None, vocab_size=10)
    # one story: a 1-word question (right) then a 2-word question (one word wrong)
    tokens = T([5, 3, 4, 6, 3, 4, 4], dtype=torch.int32)
    answers = T([0, 0, 7, 0, 0, 8, 9], dtype=torch.int32)
    batch = gather_stories(tokens, answers, T([0]), T([7]), T([2]))
    logits = torch.full((1, 7, 10), -5.0)
    for step, word in ((2, 7), (5, 8), (6, 1)):
        logits[0, step, word] = 5.0
    module._count_babi(logits, batch, "val")
    assert module._stats["val/questions"][2] == 2 and module._stats["val/correct"][2] == 1


def test_sequence_module_needs_a_sequence_task():
    with pytest.raises(FodlError, match="data=copy"):
        MemoryModule(lambda **kw: None, optimizer=None)


# -- through the real train() path -------------------------------------------------------------
def test_copy_training_through_train_writes_metrics_and_memory_figures(tmp_path):
    from fodl.train import train

    cfg = compose_train(["model=dnc", "model.net.hidden_size=16", "model.net.memory_size=8",
                         "data.width=4", "data.max_length=3", "data.batches_per_epoch=3",
                         "data.batch_size=8", "data.eval_batch_size=8", "data.test_lengths=[1,6]",
                         "trainer.max_epochs=1", "callbacks.progress_bar.style=lines",
                         "trainer.enable_model_summary=false"], tmp_path / "run")
    metrics = train(cfg)
    assert 0 <= metrics["test/error"] <= 1 and "test/error_len6" in metrics and "val/error" in metrics
    assert {k for k in metrics if k.startswith("val/error_len")} == {"val/error_len1", "val/error_len2",
                                                                      "val/error_len3"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for f in (tmp_path / "run" / "tensorboard").glob("**/events.*"):
        acc = EventAccumulator(str(f), size_guidance={"images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["images"])
    assert {"memory/one_sequence", "val/bit_error_by_length", "test/bit_error_by_length"} <= tags

    # scripts/eval.py on the copy task, with data.* overrides (as typed: data.x=..., not ++data.x)
    from fodl.train import eval_overrides, evaluate

    (best,) = (tmp_path / "run" / "checkpoints").glob("epoch*.ckpt")
    same = evaluate(compose_train(eval_overrides([f"ckpt_path={best}"]), tmp_path / "ev0", config_name="eval"))
    assert same["test/error"] == pytest.approx(metrics["test/error"])
    longer = evaluate(compose_train(eval_overrides([f"ckpt_path={best}", "data.test_lengths=[1,8]",
                                                    "data.eval_batches=2"]), tmp_path / "ev1",
                                    config_name="eval"))
    assert "test/error_len8" in longer and "test/error_len9" not in longer
    with pytest.raises(FodlError, match=r"data\.data_dir is not a setting of .*CopyTaskDataModule"):
        evaluate(compose_train(eval_overrides([f"ckpt_path={best}", "data.data_dir=/x"]), tmp_path / "ev2",
                               config_name="eval"))


@pytest.mark.realdata
def test_shared_babi_lacks_qa3_train_and_says_so(tmp_path):
    shared_file("babi-en-10k.tar.gz")
    with pytest.raises(FodlError, match="qa3_three-supporting-facts_train"):
        BabiDataModule(data_dir=str(SHARED_DATA), tasks=[3], cache_dir=None).setup()
    dm = BabiDataModule(data_dir=str(SHARED_DATA), tasks=1, cache_dir=str(tmp_path))
    dm.setup()
    assert len(dm.splits["train"][0]) == 1800 and len(dm.splits["test"][0]) == 200


@pytest.mark.parametrize("override, named", [("model.net.memory_size=0", "model.net.memory_size"),
                                             ("data.tasks=[1,25]", "data.tasks")])
def test_bad_settings_are_named_before_anything_runs(tmp_path, override, named):
    from fodl.schema import check_config

    data = ["data=babi"] if override.startswith("data.tasks") else []
    with pytest.raises(FodlError, match=named.replace(".", r"\.")):
        check_config(compose_train(["model=dnc", *data, override], tmp_path / "r"))


def qa1_answers_from_inputs(words: list[str]) -> list[str]:
    """Solve qa1 from the encoded word stream alone: track each person's last location
    (statements are ``<person> <verb> [back] to the <place> .``) and answer each ``-`` with the
    place of the person named in the question just before it."""
    where, answers, sentence = {}, [], []
    for w in words:
        if w == STOP:
            where[sentence[0]] = sentence[-1]
            sentence = []
        elif w == QUESTION:
            asked, sentence = sentence[-1], []
        elif w == ANSWER:
            answers.append(where[asked])
        elif w != "<pad>":
            sentence.append(w)
    return answers


@pytest.mark.realdata
def test_shared_qa1_batches_score_exactly_the_answer_of_each_question_asked(tmp_path):
    """End to end on the real qa1 file: the net's input at each scored step is the whole story
    up to that question, the scored steps are exactly the '-' steps, and the target there is
    the place the asked person went to last (so a net at chance is not fed misaligned data)."""
    shared_file("babi-en-10k.tar.gz")
    dm = BabiDataModule(data_dir=str(SHARED_DATA), tasks=1, cache_dir=str(tmp_path), batch_size=64)
    dm.setup()
    checked = 0
    for batch in (next(iter(dm.train_dataloader())), next(iter(dm.test_dataloader()))):
        for x, y, scored in zip(batch.inputs, batch.targets, batch.answer):
            words = dm.vocab.decode(x.tolist())
            assert scored.tolist() == [w == ANSWER for w in words]
            assert (y[~scored] == 0).all()
            assert dm.vocab.decode(y[scored].tolist()) == qa1_answers_from_inputs(words)
            checked += int(scored.sum())
    assert checked == 5 * (64 + 100)  # five questions per qa1 story


# -- sentence steps and per-story renaming -----------------------------------------------------
def test_sentence_units_regroup_the_word_stream_one_sentence_per_step():
    # two stories: "5 6 . 7 ? - -" and "8 . 9 ? -" (ids: . = 2, ? = 3, - = 4)
    tokens = T([5, 6, 2, 7, 3, 4, 4, 8, 2, 9, 3, 4], dtype=torch.int32)
    answers = T([0, 0, 0, 0, 0, 11, 12, 0, 0, 0, 0, 13], dtype=torch.int32)
    rows, targets, start, length = sentence_units(tokens, answers, T([0, 7]), T([7, 5]))
    assert rows.tolist() == [[5, 6, 2], [7, 3, 0], [4, 0, 0], [4, 0, 0], [8, 2, 0], [9, 3, 0], [4, 0, 0]]
    assert targets.tolist() == [0, 0, 11, 12, 0, 0, 13]
    assert start.tolist() == [0, 4] and length.tolist() == [4, 3]
    batch = gather_stories(rows, targets, start, length, T([1, 1]))
    assert batch.inputs.shape == (2, 4, 3)
    assert batch.answer.tolist() == [[False, False, True, True], [False, False, True, False]]
    assert batch.targets[batch.answer].tolist() == [11, 12, 13]
    assert batch.question[batch.answer].tolist() == [0, 0, 0]  # one two-word question, one one-word
    assert (batch.inputs[1, 3] == 0).all()  # padding after the shorter story
    with pytest.raises(FodlError, match="corrupt"):
        sentence_units(tokens[:10], answers[:10], T([0]), T([10]))  # ends inside a sentence


def test_sentence_batches_carry_the_same_questions_and_answers_as_word_batches(tmp_path):
    path = write_babi(tmp_path, {"qa1_single-supporting-fact_train.txt": STORY_QA1 * 5,
                                 "qa1_single-supporting-fact_test.txt": STORY_QA1,
                                 "qa8_lists-sets_train.txt": STORY_QA8 * 5,
                                 "qa8_lists-sets_test.txt": STORY_QA8})
    kw = dict(data_dir=str(path.parent), tasks=[1, 8], cache_dir=str(tmp_path / "cache"))
    words, sents = BabiDataModule(**kw), BabiDataModule(unit="sentence", **kw)
    words.setup(), sents.setup()
    bw, bs = next(iter(words.test_dataloader())), next(iter(sents.test_dataloader()))
    assert bs.inputs.dim() == 3 and bs.inputs.shape[1] < bw.inputs.shape[1]
    assert torch.equal(bw.targets[bw.answer], bs.targets[bs.answer])
    assert torch.equal(bw.question[bw.answer], bs.question[bs.answer])
    # every word of every story is there, in order, once the padding is dropped
    for x_w, x_s in zip(bw.inputs, bs.inputs):
        assert x_s[x_s != 0].tolist() == x_w[x_w != 0].tolist()
    with pytest.raises(FodlError, match="data.unit"):
        BabiDataModule(unit="paragraph", **kw)


def test_position_encoding_hand_case_and_word_order():
    ids = T([[7, 9, 0]])  # a two-word sentence and a pad
    pe = position_encoding(ids, 2)
    # l[j,k] = (1 - j/J) - (k/d)(1 - 2j/J), J = 2, d = 2
    want = [[(1 - j / 2) - (k / 2) * (1 - 2 * j / 2) for k in (1, 2)] for j in (1, 2)] + [[0.0, 0.0]]
    assert approx(pe[0], want)
    table = torch.nn.Embedding(10, 4)
    a = encode_sentences(table, T([[[5, 6, 2]]]))
    b = encode_sentences(table, T([[[6, 5, 2]]]))
    assert a.shape == (1, 1, 4) and not torch.allclose(a, b)  # word order is kept
    assert torch.allclose(encode_sentences(table, T([[[5, 6, 0, 0]]])), encode_sentences(table, T([[[5, 6]]])))


def test_nets_read_sentence_steps():
    torch.manual_seed(0)
    x = torch.randint(1, 11, (2, 5, 4))
    x[:, :, 3] = 0
    dnc = DNC(11, 11, tokens=True, hidden_size=8, memory_size=4, word_size=3)
    lstm = SequenceLSTM(11, 11, tokens=True, hidden_size=8, embedding_size=6)
    assert dnc(x).shape == lstm(x).shape == (2, 5, 11)
    y = dnc(x)
    y.sum().backward()
    assert dnc.input_gates.weight.grad[x[x != 0]].abs().sum() > 0
    assert dnc.input_gates.weight.grad[0].abs().sum() == 0  # padding contributes nothing
    assert lstm(x[:, :, 0]).shape == (2, 5, 11)  # embeddings for word steps too
    with pytest.raises(FodlError, match="embedding_size"):
        SequenceLSTM(11, 11, tokens=True, hidden_size=8)(x)


def test_permute_words_renames_each_story_consistently_and_only_in_training(tmp_path):
    groups = [T([5, 6, 7]), T([8, 9])]
    x = T([[5, 8, 2, 6, 9, 2, 5, 3, 4], [7, 9, 2, 7, 3, 4, 0, 0, 0]])
    y = T([[0, 0, 0, 0, 0, 0, 0, 0, 8], [0, 0, 0, 0, 0, 9, 0, 0, 0]])
    batch = StoryBatch(x, y, x == 4, torch.zeros_like(x), T([1, 1]))
    seen = set()
    for seed in range(30):
        out = permute_words(batch, groups, torch.Generator().manual_seed(seed))
        for xi, xo, yi, yo in zip(x, out.inputs, y, out.targets):
            mapping = {}
            for a, b in zip(xi.tolist() + yi.tolist(), xo.tolist() + yo.tolist()):
                assert mapping.setdefault(a, b) == b  # one word, one new name within a story
            assert {mapping[w] for w in (5, 6, 7) if w in mapping} <= {5, 6, 7}
            assert {mapping[w] for w in (8, 9) if w in mapping} <= {8, 9}
            assert all(mapping[w] == w for w in (0, 2, 3, 4) if w in mapping)
        seen.add(tuple(out.inputs[0].tolist()))
        again = permute_words(batch, groups, torch.Generator().manual_seed(seed))
        assert torch.equal(again.inputs, out.inputs)  # the seed fixes the renaming
    assert len(seen) > 6  # stories are really renamed, differently for different draws
    path = write_babi(tmp_path, {"qa1_single-supporting-fact_train.txt": STORY_QA1 * 5,
                                 "qa1_single-supporting-fact_test.txt": STORY_QA1})
    kw = dict(data_dir=str(path.parent), tasks=1, cache_dir=str(tmp_path / "cache"))
    dm = BabiDataModule(permute=[["mary", "john", "daniel", "sandra"], ["bathroom", "hallway", "office"]], **kw)
    dm.setup()
    test = next(iter(dm.test_dataloader()))
    assert dm.on_after_batch_transfer(test, 0) is test  # no trainer / not training: left alone
    from types import SimpleNamespace

    train = next(iter(dm.train_dataloader()))
    dm.trainer = SimpleNamespace(training=True, current_epoch=3, global_rank=0)
    renamed = [dm.on_after_batch_transfer(train, 0) for _ in range(4)]
    assert not all(torch.equal(r.inputs, train.inputs) for r in renamed)  # training: renamed
    names = {dm.vocab[w] for g in dm.permute for w in g}
    for r in renamed:  # only people and places change; the answer follows its place
        keep = ~torch.isin(train.inputs, torch.tensor(sorted(names)))
        assert torch.equal(r.inputs[keep], train.inputs[keep])
        assert dm.vocab.decode(r.targets[r.answer].tolist()) == [
            a for x, y, m in zip(r.inputs, r.targets, r.answer)
            for a in qa1_answers_from_inputs(dm.vocab.decode(x.tolist()))]
    with pytest.raises(FodlError, match="never use"):
        BabiDataModule(permute=[["mary", "marry"]], **kw).setup()
    with pytest.raises(FodlError, match="data.permute"):
        BabiDataModule(permute=[["mary"]], **kw)


def test_fast_qa1_recipe_runs_through_train_on_sentence_steps(tmp_path):
    """experiment=fast/dnc_babi_qa1 (sentence steps, renamed people and places) through the
    real train() path on a hand-written task file: metrics, and the memory figure drawn from
    a sentence-step story."""
    from fodl.train import train

    path = write_babi(tmp_path / "data", {"qa1_single-supporting-fact_train.txt": STORY_QA1 * 8,
                                          "qa1_single-supporting-fact_test.txt": STORY_QA1})
    cfg = compose_train([
        "experiment=fast/dnc_babi_qa1", f"paths.data_dir={path.parent}",
        "data.permute=[[mary,john,daniel,sandra],[bathroom,hallway,office]]",
        "data.batch_size=4", "trainer.max_epochs=2", "callbacks.progress_bar.style=lines",
        "trainer.enable_model_summary=false"], tmp_path / "run")
    assert cfg.data.unit == "sentence"
    metrics = train(cfg)
    assert 0 <= metrics["test/error_qa1"] <= 1 and "val/error" in metrics
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for f in (tmp_path / "run" / "tensorboard").glob("**/events.*"):
        acc = EventAccumulator(str(f), size_guidance={"images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["images"])
    assert "memory/one_sequence" in tags


def test_copy_recipe_chooses_its_checkpoint_on_lengths_it_does_not_train_on(tmp_path):
    """experiment=fast/dnc_copy (registry ch8_dnc_copy): validation on 11-15, above every
    training length and below the reported 20; 256 sequences per length; tested on 1-40."""
    from hydra.utils import instantiate

    for model in ("dnc", "dnc_lstm_baseline"):
        cfg = compose_train(["experiment=fast/dnc_copy", f"model={model}"], tmp_path / model)
        assert cfg.monitor == "val/error" and cfg.monitor_mode == "min" and cfg.trainer.max_epochs == 20
        dm = instantiate(cfg.data)
        dm.setup()
        val = [int(b.length[0]) for b in dm.splits["val"]]
        assert sorted(set(val)) == [11, 12, 13, 14, 15] and min(val) > dm.max_length == 10
        assert all(len(b.length) * val.count(n) == 256 for b in dm.splits["val"] for n in [int(b.length[0])])
        assert sorted({int(b.length[0]) for b in dm.splits["test"]}) == list(range(1, 41))
