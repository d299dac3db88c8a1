"""Clean reference NLL against the model's own loss."""

import pytest
import torch

from mbdefense.data.example import Example
from mbdefense.data.formatting import encode_example
from mbdefense.evaluation.likelihood import reference_nll


def test_reference_nll_is_the_token_mean_of_the_models_loss(tiny_model, tokenizer):
    examples = [Example("Name a colour.", output="Blue is a colour."),
                Example("Add two and two.", output="Four."),
                Example("Say hi.", output="Hi there, how are you today?")]
    total = count = 0.0
    with torch.no_grad():
        for example in examples:
            enc = encode_example(tokenizer, example, 128)
            loss = tiny_model(input_ids=torch.tensor([enc.input_ids]),
                              labels=torch.tensor([enc.labels])).loss
            n = len(enc.input_ids) - enc.prompt_length
            total += float(loss) * n
            count += n
    got = reference_nll(tiny_model, tokenizer, examples, batch_size=2, max_length=128)
    assert got == pytest.approx(total / count, rel=1e-4)


def test_reference_nll_needs_references(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="reference"):
        reference_nll(tiny_model, tokenizer, [Example("Say hi.")])
