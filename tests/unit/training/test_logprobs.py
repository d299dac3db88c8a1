"""The response-only projection gives the full forward pass's numbers and gradients."""

import pytest
import torch

from mbdefense.data.formatting import IGNORE_INDEX
from mbdefense.training import logprobs as lp_module
from mbdefense.training.logprobs import labelled_logprobs


def tiny_llama(seed=0, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, **extra)
    return LlamaForCausalLM(config)


def batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 97, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0                         # right padding
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX            # the prompt
    labels[2, 9:] = IGNORE_INDEX
    labels[1, 7:9] = IGNORE_INDEX           # a hole in the middle
    return ids, mask, labels


def test_matches_the_models_own_loss_and_gradients(monkeypatch):
    monkeypatch.setattr(lp_module, "CHUNK_ROWS", 4)   # several recomputed chunks
    ids, mask, labels = batch()
    model = tiny_llama()
    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    reference.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    ours = labelled_logprobs(model, ids, mask, labels).mean_nll()
    ours.backward()
    assert float(ours.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, want[name], rtol=1e-4, atol=1e-6,
                                   msg=f"gradient of {name}")


def test_counts_and_per_sequence_sums_match_full_logits():
    ids, mask, labels = batch()
    model = tiny_llama(seed=1)
    with torch.no_grad():
        got = labelled_logprobs(model, ids, mask, labels)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits, -1)
    want = []
    for row in range(ids.shape[0]):
        total = 0.0
        for t in range(1, ids.shape[1]):
            if labels[row, t] != IGNORE_INDEX:
                total += float(logp[row, t - 1, labels[row, t]])
        want.append(total)
    assert got.per_sequence("sum").tolist() == pytest.approx(want, rel=1e-5)
    assert got.counts.tolist() == [7, 5, 4]


def test_soft_capped_models_fall_back_to_the_full_forward():
    model = tiny_llama()
    model.config.final_logit_softcapping = 30.0
    calls = []
    original = model.forward
    model.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    ids, mask, labels = batch()
    with torch.no_grad():
        labelled_logprobs(model, ids, mask, labels)
    assert calls, "soft-capped logits must come from the model's own forward"


def test_first_keeps_each_sequences_opening_in_any_row_order():
    values = torch.tensor([1., 2., 3., 4., 5., 6., 7.])
    rows = torch.tensor([1, 0, 1, 0, 2, 1, 0])         # sequences interleaved, as packed rows
    tokens = lp_module.TokenLogprobs(values, rows, torch.tensor([3, 3, 1]))
    cut = tokens.first(2)
    assert cut.per_sequence("sum").tolist() == [2. + 4., 1. + 3., 5.]
    assert cut.counts.tolist() == [2, 2, 1]
    assert cut.per_sequence("mean").tolist() == [3., 2., 5.]
    assert tokens.first(9).per_sequence("sum").tolist() == tokens.per_sequence("sum").tolist()
    with pytest.raises(ValueError):
        tokens.first(0)
