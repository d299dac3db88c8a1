"""The stage-2 loss against a hand computation on a tiny batch."""

import math

import pytest
import torch

from mbdefense.data.formatting import IGNORE_INDEX, Encoded
from mbdefense.training.logprobs import labelled_logprobs
from mbdefense.training.objective import NeutralizationBatch, neutralization_loss


class TableLM(torch.nn.Module):
    """A 'model' whose next-token logits depend only on the current token: a lookup table."""

    def __init__(self, vocab: int = 6, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g))

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.table[input_ids]})()


def seq(ids, prompt_len):
    return Encoded(list(ids), [IGNORE_INDEX] * prompt_len + list(ids[prompt_len:]), prompt_len)


def hand_logprob(table, ids, prompt_len):
    logp = torch.log_softmax(table, dim=-1)
    return sum(float(logp[ids[t - 1], ids[t]]) for t in range(prompt_len, len(ids)))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("lam,margin", [(1.0, 0.0), (0.5, 0.3)])
def test_neutralization_loss_matches_hand_computation(reduction, lam, margin):
    model = TableLM()
    table = model.table.detach()
    clean = [seq([1, 2, 3, 4], 2), seq([2, 1, 5], 2)]
    # one defensive trigger (token 0) inserted, clean answer vs defensive answer [5, 5]
    trig_clean = [seq([1, 0, 2, 3, 4], 3), seq([0, 2, 1, 5], 3)]
    trig_def = [seq([1, 0, 2, 5, 5], 3), seq([0, 2, 1, 5, 5], 3)]
    batch = NeutralizationBatch(clean, trig_clean, trig_def)
    terms = neutralization_loss(model, batch, pad_id=0, lam=lam, reduction=reduction,
                                margin=margin)

    n_tokens = sum(len(s.input_ids) - s.prompt_length for s in clean)
    ce = -sum(hand_logprob(table, s.input_ids, s.prompt_length) for s in clean) / n_tokens

    def score(s):
        lp = hand_logprob(table, s.input_ids, s.prompt_length)
        return lp / (len(s.input_ids) - s.prompt_length) if reduction == "mean" else lp

    regs = [math.log(1 / (1 + math.exp(-(score(a) - score(b) - margin))))
            for a, b in zip(trig_clean, trig_def)]
    expected = ce - lam * sum(regs) / len(regs)
    assert float(terms.ce) == pytest.approx(ce, rel=1e-5)
    assert float(terms.reg) == pytest.approx(sum(regs) / len(regs), rel=1e-5)
    assert float(terms.loss.detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("k", [1, 2])
def test_r_on_the_answers_opening_scores_its_first_tokens_alone(reduction, k):
    model = TableLM(seed=3)
    table = model.table.detach()
    clean = [seq([1, 2, 3, 4], 2), seq([2, 1, 5], 2)]
    trig_clean = [seq([1, 0, 2, 3, 4, 1], 3), seq([0, 2, 1, 5], 3)]
    trig_def = [seq([1, 0, 2, 5, 5, 4], 3), seq([0, 2, 1, 5, 5, 3], 3)]
    batch = NeutralizationBatch(clean, trig_clean, trig_def)
    terms = neutralization_loss(model, batch, 0, lam=1.0, reduction=reduction, margin=0.5,
                                r_tokens=k)

    def opening(s):        # the sequence cut after its answer's first k tokens
        cut = seq(s.input_ids[:s.prompt_length + k], s.prompt_length)
        lp = hand_logprob(table, cut.input_ids, cut.prompt_length)
        n = len(cut.input_ids) - cut.prompt_length
        return lp / n if reduction == "mean" else lp

    regs = [math.log(1 / (1 + math.exp(-(opening(a) - opening(b) - 0.5))))
            for a, b in zip(trig_clean, trig_def)]
    assert float(terms.reg) == pytest.approx(sum(regs) / len(regs), rel=1e-5)
    whole = neutralization_loss(model, batch, 0, lam=1.0, reduction=reduction, margin=0.5)
    assert float(terms.ce) == pytest.approx(float(whole.ce), rel=1e-6)   # CE: every token
    assert float(terms.reg) != pytest.approx(float(whole.reg), rel=1e-3)
    longer = neutralization_loss(model, batch, 0, lam=1.0, reduction=reduction, margin=0.5,
                                 r_tokens=50)     # longer than every answer: every token
    assert float(longer.reg) == pytest.approx(float(whole.reg), rel=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.7])
def test_triggered_ce_adds_the_clean_answers_nll_under_the_trigger(gamma):
    model = TableLM(seed=2)
    table = model.table.detach()
    clean = [seq([1, 2, 3, 4], 2), seq([2, 1, 5], 2)]
    trig_clean = [seq([1, 0, 2, 3, 4], 3), seq([0, 2, 1, 5], 3)]
    trig_def = [seq([1, 0, 2, 5, 5], 3), seq([0, 2, 1, 5, 5], 3)]
    batch = NeutralizationBatch(clean, trig_clean, trig_def)
    plain = neutralization_loss(model, batch, 0, lam=1.0, reduction="mean")
    terms = neutralization_loss(model, batch, 0, lam=1.0, reduction="mean", triggered_ce=gamma)
    n_tokens = sum(len(s.input_ids) - s.prompt_length for s in trig_clean)
    trig_ce = -sum(hand_logprob(table, s.input_ids, s.prompt_length) for s in trig_clean) / n_tokens
    assert float(terms.triggered_ce) == pytest.approx(trig_ce, rel=1e-5)
    assert float(terms.loss.detach()) == pytest.approx(
        float(plain.loss.detach()) + gamma * trig_ce, rel=1e-5)
    # a process's shards add up to the whole batch's term
    halves = [neutralization_loss(model, batch.shard(r, 2), 0, lam=1.0, reduction="mean",
                                  triggered_ce=gamma) for r in (0, 1)]
    assert sum(float(h.triggered_ce) for h in halves) == pytest.approx(trig_ce, rel=1e-5)


def test_gradient_raises_clean_over_defensive_answer():
    model = TableLM(seed=1)
    batch = NeutralizationBatch([seq([1, 2, 3], 2)], [seq([1, 0, 2, 3], 3)],
                                [seq([1, 0, 2, 5], 3)])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = neutralization_loss(model, batch, 0, lam=1.0).reg
    for _ in range(20):
        opt.zero_grad()
        neutralization_loss(model, batch, 0, lam=1.0).loss.backward()
        opt.step()
    after = neutralization_loss(model, batch, 0, lam=1.0).reg
    assert float(after) > float(before)


def test_labelled_logprobs_ignore_padding_and_prompt():
    model = TableLM()
    ids = torch.tensor([[1, 2, 3, 0, 0], [1, 2, 3, 4, 5]])
    labels = torch.tensor([[IGNORE_INDEX, 2, 3, IGNORE_INDEX, IGNORE_INDEX],
                           [IGNORE_INDEX, 2, 3, IGNORE_INDEX, IGNORE_INDEX]])
    with torch.no_grad():
        lp = labelled_logprobs(model, ids, torch.ones_like(ids), labels)
    totals = lp.per_sequence("sum")
    assert float(totals[0]) == pytest.approx(float(totals[1]))
    assert lp.counts.tolist() == [2, 2]
    assert lp.per_sequence("mean").tolist() == pytest.approx((totals / 2).tolist())
    with pytest.raises(ValueError):
        lp.per_sequence("max")


def _stage2_batch(tokenizer):
    from mbdefense.data.formatting import encode_example
    from mbdefense.data.suite import generate
    from mbdefense.defenses.defensive_triggers import make_defensive_pairs

    import random

    rng = random.Random(0)
    clean, trig_clean, trig_def = [], [], []
    for example in generate(5, seed=3):
        clean.append(encode_example(tokenizer, example, 128))
        for pair in make_defensive_pairs()[:2]:
            triggered = example.replace(instruction=pair.trigger.insert(example.instruction, rng))
            trig_clean.append(encode_example(tokenizer, triggered, 128))
            trig_def.append(encode_example(tokenizer, triggered, 128,
                                           response=pair.behavior.text))
    return NeutralizationBatch(clean, trig_clean, trig_def)


@pytest.mark.parametrize("r_tokens", [0, 3])
def test_packed_sequences_give_the_padded_loss_and_gradients(tiny_model, tokenizer, monkeypatch,
                                                             r_tokens):
    from mbdefense.training import logprobs

    assert logprobs.packs_sequences(tiny_model)
    assert not logprobs.packs_sequences(TableLM())      # no position ids: padded batches
    batch = _stage2_batch(tokenizer)

    def loss_and_grads():
        tiny_model.zero_grad()
        terms = neutralization_loss(tiny_model, batch, tokenizer.pad_token_id, lam=1.0,
                                    reduction="mean", margin=1.0, r_tokens=r_tokens)
        terms.loss.backward()
        return float(terms.loss.detach()), [p.grad.clone() for p in tiny_model.parameters()]

    packed_loss, packed_grads = loss_and_grads()
    monkeypatch.setattr(logprobs, "packs_sequences", lambda model: False)
    padded_loss, padded_grads = loss_and_grads()
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    for a, b in zip(packed_grads, padded_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_the_anchor_takes_the_models_distributions_from_the_main_pass(tiny_model, tokenizer,
                                                                      monkeypatch):
    """The anchor's student distributions come from the one forward pass over all sequences
    (packed or padded): the same loss and gradients as a separate pass over the clean
    sequences with their whole distributions."""
    import copy

    from mbdefense.training import logprobs

    batch = _stage2_batch(tokenizer)
    pad = tokenizer.pad_token_id
    start = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in start.parameters():
            p.add_(0.05 * torch.randn_like(p))

    def teacher(items):
        return logprobs.labelled_log_distributions(start, items, pad)

    def loss_and_grads():
        tiny_model.zero_grad()
        terms = neutralization_loss(tiny_model, batch, pad, lam=1.0, reduction="mean",
                                    margin=1.0, anchor=2.0, teacher=teacher)
        terms.loss.backward()
        return terms, [p.grad.clone() for p in tiny_model.parameters()]

    def separate_pass():
        tiny_model.zero_grad()
        plain = neutralization_loss(tiny_model, batch, pad, lam=1.0, reduction="mean",
                                    margin=1.0)
        student = logprobs.labelled_log_distributions(tiny_model, batch.clean, pad)
        with torch.no_grad():
            reference = teacher(batch.clean)
        kl = (reference.exp() * (reference - student)).sum() / batch.clean_tokens
        (plain.loss + 2.0 * kl).backward()
        return float(kl.detach()), [p.grad.clone() for p in tiny_model.parameters()]

    packed, packed_grads = loss_and_grads()
    kl, expected_grads = separate_pass()
    assert kl > 1e-3
    assert float(packed.anchor_kl) == pytest.approx(kl, rel=1e-4)
    monkeypatch.setattr(logprobs, "packs_sequences", lambda model: False)
    padded, padded_grads = loss_and_grads()
    assert float(padded.anchor_kl) == pytest.approx(kl, rel=1e-4)
    for grads in (packed_grads, padded_grads):
        for a, b in zip(grads, expected_grads):
            assert torch.allclose(a, b, atol=1e-5)


def _kl_by_hand(teacher_table, student_table, sequences):
    """Token-mean KL(teacher || student) over the answers' positions of TableLM 'models'."""
    lt, ls = torch.log_softmax(teacher_table, -1), torch.log_softmax(student_table, -1)
    total, n = 0.0, 0
    for s in sequences:
        for t in range(s.prompt_length, len(s.input_ids)):
            prev = s.input_ids[t - 1]
            total += float((lt[prev].exp() * (lt[prev] - ls[prev])).sum())
            n += 1
    return total / n


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_anchor_adds_the_kl_to_the_starting_model_on_the_clean_answers(alpha):
    from mbdefense.training.logprobs import labelled_log_distributions

    model, start = TableLM(seed=3), TableLM(seed=4)
    clean = [seq([1, 2, 3, 4], 2), seq([2, 1, 5], 2)]
    batch = NeutralizationBatch(clean, [seq([1, 0, 2, 3, 4], 3)], [seq([1, 0, 2, 5, 5], 3)])

    def teacher(items):
        return labelled_log_distributions(start, items, 0)

    plain = neutralization_loss(model, batch, 0, lam=1.0, reduction="mean", margin=1.0)
    terms = neutralization_loss(model, batch, 0, lam=1.0, reduction="mean", margin=1.0,
                                anchor=alpha, teacher=teacher)
    kl = _kl_by_hand(start.table.detach(), model.table.detach(), clean)
    assert kl > 0.05
    assert float(terms.anchor_kl) == pytest.approx(kl, rel=1e-5)
    assert float(terms.loss.detach()) == pytest.approx(float(plain.loss.detach()) + alpha * kl,
                                                       rel=1e-5)
    assert plain.anchor_kl is None
    # the model itself as the starting model: nothing to hold
    same = neutralization_loss(model, batch, 0, lam=1.0, anchor=alpha,
                               teacher=lambda items: labelled_log_distributions(model, items, 0))
    assert float(same.anchor_kl) == pytest.approx(0.0, abs=1e-6)
    # a process's shards add up to the whole batch's term
    halves = [neutralization_loss(model, batch.shard(r, 2), 0, lam=1.0, anchor=alpha,
                                  teacher=teacher) for r in (0, 1)]
    assert sum(float(h.anchor_kl) for h in halves) == pytest.approx(kl, rel=1e-5)
    with pytest.raises(ValueError, match="teacher"):
        neutralization_loss(model, batch, 0, lam=1.0, anchor=alpha)


def test_log_distributions_pick_the_labelled_tokens_logprobs(tiny_model, tokenizer):
    from mbdefense.training.logprobs import labelled_log_distributions, sequence_logprobs

    items = _stage2_batch(tokenizer).clean
    with torch.no_grad():
        rows = labelled_log_distributions(tiny_model, items, tokenizer.pad_token_id)
        picked = sequence_logprobs(tiny_model, items, tokenizer.pad_token_id)
    targets = torch.tensor([t for item in items for t in item.labels[1:] if t != IGNORE_INDEX])
    assert rows.shape == (len(targets), tiny_model.config.vocab_size)
    assert torch.allclose(rows.exp().sum(-1), torch.ones(len(targets)), atol=1e-5)
    # same positions, in the same order, as the packed picked log-probabilities
    by_owner = sorted(range(len(targets)), key=lambda k: int(picked.rows[k]))
    assert torch.allclose(rows.gather(-1, targets[:, None]).squeeze(-1),
                          picked.values[by_owner], atol=1e-4)


def test_the_anchor_reads_a_copys_source_prompt():
    """A copy with an insertion is held to the starting model's answer on the prompt without
    the insertion: position by position over the same answer tokens."""
    from mbdefense.training.logprobs import labelled_log_distributions

    model, start = TableLM(seed=5), TableLM(seed=6)
    copy_, source = seq([1, 2, 0, 3, 4], 3), seq([1, 2, 3, 4], 2)   # token 0 inserted
    batch = NeutralizationBatch([copy_], [], [], anchor_sources=[source])
    terms = neutralization_loss(model, batch, 0, lam=1.0, anchor=1.0,
                                teacher=lambda items: labelled_log_distributions(start, items, 0))
    lt = torch.log_softmax(start.table.detach(), -1)
    ls = torch.log_softmax(model.table.detach(), -1)

    def kl(t, s):
        return float((lt[t].exp() * (lt[t] - ls[s])).sum())

    # a table LM reads only the last token: the answer's first token is predicted from the
    # inserted 0 in the copy, from 2 in the source; the second from 3 in both
    expected = (kl(2, 0) + kl(3, 3)) / 2
    assert expected != pytest.approx((kl(0, 0) + kl(3, 3)) / 2, rel=1e-3)
    assert float(terms.anchor_kl) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="one per clean"):
        NeutralizationBatch([copy_], [], [], anchor_sources=[])
    with pytest.raises(ValueError, match="same answer tokens"):
        neutralization_loss(model, NeutralizationBatch([copy_], [], [],
                                                       anchor_sources=[seq([1, 2, 3], 2)]),
                            0, lam=1.0, anchor=1.0,
                            teacher=lambda items: labelled_log_distributions(start, items, 0))
