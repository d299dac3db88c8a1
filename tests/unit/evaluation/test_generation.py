import torch

from mbdefense.data.formatting import render_prompt
from mbdefense.data.suite import generate
from mbdefense.evaluation.generation import generate_answers


def test_batched_left_padded_generation_matches_one_by_one(tokenizer, tiny_model):
    examples = generate(7, seed=0)
    prompts = [render_prompt(tokenizer, e) for e in examples]
    batched = generate_answers(tiny_model, tokenizer, prompts, max_new_tokens=6, batch_size=4)
    single = []
    for p in prompts:
        ids = torch.tensor([tokenizer(p, add_special_tokens=False)["input_ids"]])
        out = tiny_model.generate(input_ids=ids, max_new_tokens=6, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
        single.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    assert batched == single
