"""longformer_fast must return exactly what LongformerModel returns (float32, <= 1e-4), faster paths included."""
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, LongformerConfig, LongformerModel

import longformer_fast
from longformer_fast import is_longformer, longformer_last_hidden_state

TOL = 1e-4
SHORT_TEXTS = ["Lab: Lactate 4.2", "Procedure: Arterial Line", "x", "Prescription: Heparin 5000 UNIT SC",
               "Microbiology: URINE - NO GROWTH", ""]


@pytest.fixture(scope="module")
def tiny(tiny_longformer_dir):
    model = AutoModel.from_pretrained(tiny_longformer_dir, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_longformer_dir, local_files_only=True)
    return model, tokenizer


def reference(model, input_ids, attention_mask, global_attention_mask=None):
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask,
                     global_attention_mask=global_attention_mask).last_hidden_state


def fast(model, input_ids, attention_mask, global_attention_mask=None):
    with torch.no_grad():
        return longformer_last_hidden_state(model, input_ids, attention_mask, global_attention_mask)


def forbid_model_call(monkeypatch, model):
    def refuse(*args, **kwargs):
        raise AssertionError("LongformerModel.forward was called although the batch fits the fast path")
    monkeypatch.setattr(model, "forward", refuse)


def cls_global(input_ids):
    mask = torch.zeros_like(input_ids)
    mask[:, 0] = 1
    return mask


def test_is_longformer(tiny, tiny_bert_dir):
    model, _ = tiny
    assert is_longformer(model)
    assert not is_longformer(AutoModel.from_pretrained(tiny_bert_dir, local_files_only=True))


@pytest.mark.parametrize("global_kind", ["none", "cls", "several"])
def test_fast_path_equals_longformer_mixed_lengths(tiny, monkeypatch, global_kind):
    model, tokenizer = tiny
    window = longformer_fast.one_sided_window(model)
    assert window == 8  # attention_window 16 in the fixture
    batch = tokenizer(SHORT_TEXTS, padding=True, truncation=True, max_length=window, return_tensors="pt")
    lengths = batch.attention_mask.sum(1)
    assert lengths.max() == window and lengths.min() <= 3  # mixed lengths, real padding in the batch
    global_mask = None
    if global_kind == "cls":
        global_mask = cls_global(batch.input_ids)
    elif global_kind == "several":  # 0, 1 or 2 global tokens per row, not only at CLS
        global_mask = torch.zeros_like(batch.input_ids)
        global_mask[0, [0, 3]] = 1
        global_mask[1, 5] = 1
        global_mask[3, [1, 7]] = 1
    expected = reference(model, batch.input_ids, batch.attention_mask, global_mask)
    forbid_model_call(monkeypatch, model)
    got = fast(model, batch.input_ids, batch.attention_mask, global_mask)
    assert got.shape == expected.shape
    # every position, padding rows included, matches
    assert (got - expected).abs().max().item() <= TOL


def test_left_padding_and_no_attention_mask(tiny, monkeypatch):
    model, tokenizer = tiny
    batch = tokenizer(SHORT_TEXTS[:4], padding=True, truncation=True, max_length=8, return_tensors="pt")
    left_ids = torch.full_like(batch.input_ids, tokenizer.pad_token_id)
    left_mask = torch.zeros_like(batch.attention_mask)
    for row, n in enumerate(batch.attention_mask.sum(1).tolist()):
        left_ids[row, -n:] = batch.input_ids[row, :n]
        left_mask[row, -n:] = 1
    expected = reference(model, left_ids, left_mask)
    single = batch.input_ids[:1]
    expected_single = reference(model, single, None)
    forbid_model_call(monkeypatch, model)
    assert (fast(model, left_ids, left_mask) - expected).abs().max().item() <= TOL
    assert (fast(model, single, None) - expected_single).abs().max().item() <= TOL


def test_longer_texts_fall_back(tiny):
    model, tokenizer = tiny
    texts = ["Lab: White Blood Cells 14.5 K/uL (ref 4.0-11.0) abnormal, Creatinine 1.1 mg/dL", "x"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch.attention_mask.sum(1).max() > 8
    assert not longformer_fast.fits_fast_path(model, batch.attention_mask)
    calls = []
    original = model.forward
    def counting_forward(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)
    global_mask = cls_global(batch.input_ids)
    expected = reference(model, batch.input_ids, batch.attention_mask, global_mask)
    model.forward = counting_forward
    try:
        got = fast(model, batch.input_ids, batch.attention_mask, global_mask)
    finally:
        del model.forward
    assert calls == [1]
    assert (got - expected).abs().max().item() <= TOL
    # full attention on such a batch would NOT be exact: the fallback is needed, not a formality
    with torch.no_grad():
        wrong = longformer_fast.full_attention_last_hidden_state(model, batch.input_ids, batch.attention_mask)
    assert (wrong - reference(model, batch.input_ids, batch.attention_mask)).abs().max().item() > 1e-3


def test_larger_and_per_layer_windows(tiny, monkeypatch):
    """Windows 128/64 per layer (HF needs multiples): texts up to 32 tokens (span) take the fast path; 40-token texts fall back."""
    _, tokenizer = tiny
    torch.manual_seed(1)
    config = LongformerConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, attention_window=[128, 64], max_position_embeddings=258,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2, sep_token_id=2, type_vocab_size=1)
    model = LongformerModel(config).eval()
    assert longformer_fast.one_sided_window(model) == 32
    long_text = " ".join(["Lab: Lactate 4.2 mmol/L (ref 0.5-2.0) abnormal"] * 6)
    batch = tokenizer([long_text, "Procedure: Arterial Line", long_text[:40]], padding=True, truncation=True,
                      max_length=32, return_tensors="pt")
    assert batch.attention_mask.sum(1).max() == 32
    global_mask = cls_global(batch.input_ids)
    expected = reference(model, batch.input_ids, batch.attention_mask, global_mask)
    expected_local = reference(model, batch.input_ids, batch.attention_mask)
    with monkeypatch.context() as patch:
        forbid_model_call(patch, model)
        assert (fast(model, batch.input_ids, batch.attention_mask, global_mask) - expected).abs().max() <= TOL
        assert (fast(model, batch.input_ids, batch.attention_mask) - expected_local).abs().max() <= TOL
    longer = tokenizer([long_text], truncation=True, max_length=40, return_tensors="pt")
    assert not longformer_fast.fits_fast_path(model, longer.attention_mask)
    expected = reference(model, longer.input_ids, longer.attention_mask, cls_global(longer.input_ids))
    got = fast(model, longer.input_ids, longer.attention_mask, cls_global(longer.input_ids))
    assert (got - expected).abs().max().item() <= TOL


def test_bfloat16_weights_stay_close(tiny):
    model, tokenizer = tiny
    batch = tokenizer(SHORT_TEXTS, padding=True, truncation=True, max_length=8, return_tensors="pt")
    expected = fast(model, batch.input_ids, batch.attention_mask, cls_global(batch.input_ids))[:, 0]
    bf16 = AutoModel.from_config(model.config).eval()
    bf16.load_state_dict(model.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    got = fast(bf16, batch.input_ids, batch.attention_mask, cls_global(batch.input_ids))[:, 0]
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    cosine = torch.nn.functional.cosine_similarity(got.float(), expected, dim=-1)
    assert cosine.min().item() > 0.99
