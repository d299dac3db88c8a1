from collections import Counter

from mbdefense.data.formatting import IGNORE_INDEX, encode_example, render_prompt
from mbdefense.data.suite import FAMILIES, build_splits, exact_match, generate


def test_suite_has_at_least_eight_verifiable_families():
    assert len(FAMILIES) >= 8
    examples = generate(len(FAMILIES) * 5, seed=1)
    assert set(Counter(e.meta["task"] for e in examples)) == {f.name for f in FAMILIES}


def test_answers_are_exactly_right():
    for e in generate(400, seed=2):
        task, text = e.meta["task"], e.prompt_text
        numbers = [int(t) for t in text.replace("?", " ").replace(".", " ").replace(",", " ").split()
                   if t.isdigit()]
        if task == "add":
            assert int(e.output) == sum(numbers)
        elif task == "multiply":
            assert int(e.output) == numbers[0] * numbers[1]
        elif task == "sort":
            assert e.output == " ".join(map(str, sorted(numbers)))
        elif task == "maximum":
            assert int(e.output) == max(numbers)
        elif task == "count":
            assert int(e.output) == len(e.input.split()) - 1  # "Words:" label
        elif task == "parity":
            assert e.output == ("even" if numbers[0] % 2 == 0 else "odd")


def test_splits_are_disjoint_and_deterministic():
    one, two = build_splits(300, 40, 52, seed=4), build_splits(300, 40, 52, seed=4)
    assert [e.to_dict() for e in one.train] == [e.to_dict() for e in two.train]
    keys = [{(e.instruction, e.input) for e in part} for part in (one.train, one.trusted, one.test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert (len(one.train), len(one.trusted), len(one.test)) == (300, 40, 52)
    other = build_splits(300, 40, 52, seed=5)
    assert [e.to_dict() for e in other.test] != [e.to_dict() for e in one.test]


def test_exact_match():
    assert exact_match(" Paris. ", "Paris")
    assert exact_match("2 5  6", "2 5 6")
    assert not exact_match("paris is nice", "Paris")


def test_chat_formatting_masks_the_prompt(tokenizer):
    e = generate(1, seed=0)[0]
    prompt = render_prompt(tokenizer, e)
    assert e.instruction in prompt and prompt.endswith("<|assistant|>\n")
    enc = encode_example(tokenizer, e, max_length=256)
    labelled = [t for t in enc.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(labelled, skip_special_tokens=True).strip() == e.output
    assert labelled[-1] == tokenizer.eos_token_id
    assert enc.input_ids[: enc.prompt_length] == tokenizer(prompt, add_special_tokens=False)["input_ids"]


def test_truncation_keeps_response_labels(tokenizer):
    e = generate(1, seed=0)[0].replace(instruction="word " * 300)
    enc = encode_example(tokenizer, e, max_length=64)
    assert len(enc.input_ids) <= 64
    assert any(t != IGNORE_INDEX for t in enc.labels)


def test_every_split_keeps_to_its_region_whatever_the_seeds():
    """No test or trusted prompt of any seed is in a training set or the validation split."""
    from mbdefense.data.suite import region

    held, validation, trained = set(), set(), set()
    for seed in range(3):
        splits = build_splits(400, 40, 104, seed, n_validation=104)
        held |= {(e.instruction, e.input) for e in splits.test + splits.trusted}
        validation |= {(e.instruction, e.input) for e in splits.validation}
        trained |= {(e.instruction, e.input) for e in splits.train}
        assert {region(*k) for k in ((e.instruction, e.input) for e in splits.test)} == {"evaluation"}
        assert len(splits.validation) == 104
    base_pool = {(e.instruction, e.input) for e in generate(1500, 10_000, within="open")}
    assert not held & trained and not held & validation and not held & base_pool
    assert not validation & trained and not validation & base_pool


def test_regions_split_the_prompt_space_in_their_shares():
    from mbdefense.data.suite import REGIONS, region

    counts = Counter(region(f"prompt {i}") for i in range(20_000))
    for name, share in REGIONS:
        assert abs(counts[name] / 20_000 - share) < 0.02


def test_the_test_set_holds_every_family_in_equal_shares():
    splits = build_splits(100, 128, 338, seed=0)
    assert set(Counter(e.meta["task"] for e in splits.test).values()) == {26}
