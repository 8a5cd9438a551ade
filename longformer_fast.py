"""Exact fast path for Hugging Face LongformerModel on short texts.

LongformerModel pads every input to a multiple of its attention window (512 for Clinical-Longformer)
and runs banded ("sliding chunks") attention, so a 30-token event text costs a 512-token pass.
When every text in a batch spans no more than half the window (the one-sided window w), each token's
window already covers the whole text: sliding-window attention over it IS full attention with the
padding keys masked. This module runs the same weights that way, through
torch.nn.functional.scaled_dot_product_attention, and reproduces Longformer's global attention
exactly:

- a local (non-global) query attends to every real key with query/key/value (global keys included,
  once, with the local projections: HF removes them from the window and adds them back as extra keys);
- a global query attends to every real key with query_global/key_global/value_global;
- a padding query gets a zero attention output (HF sets its probabilities to 0), so even the padded
  rows of last_hidden_state match.

Longer texts fall back to LongformerModel itself. `longformer_last_hidden_state` returns what
`model(input_ids=..., attention_mask=..., global_attention_mask=...).last_hidden_state` returns
(tests/test_longformer_fast.py checks <= 1e-4 in float32).
"""
import torch
import torch.nn.functional as F


def is_longformer(model) -> bool:
    """True for a LongformerModel-like module (config.model_type 'longformer' with embeddings + encoder)."""
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) == "longformer"
            and hasattr(model, "embeddings") and hasattr(model, "encoder"))


def one_sided_window(model) -> int:
    """The smallest one-sided attention window over all layers (texts spanning <= this take the fast path)."""
    window = model.config.attention_window
    windows = [window] if isinstance(window, int) else list(window)
    return min(windows) // 2


def real_token_span(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per row, last real position - first real position + 1 (0 for a row without real tokens)."""
    real = attention_mask != 0
    positions = torch.arange(real.shape[1], device=real.device)
    last = torch.where(real, positions, -1).amax(dim=1)
    first = torch.where(real, positions, real.shape[1]).amin(dim=1)
    return (last - first + 1).clamp(min=0)


def fits_fast_path(model, attention_mask: torch.Tensor) -> bool:
    """True when every row's real tokens lie within one attention window, so full attention is exact."""
    if attention_mask.numel() == 0:
        return True
    return int(real_token_span(attention_mask).max()) <= one_sided_window(model)


def _heads(x, n_heads):
    """[B, T, H] -> [B, n_heads, T, H / n_heads]"""
    b, t, h = x.shape
    return x.view(b, t, n_heads, h // n_heads).transpose(1, 2)


def _unheads(x):
    """[B, n_heads, T, d] -> [B, T, n_heads * d]"""
    b, n, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, n * d)


def _self_attention(attn, hidden, key_bias, is_masked, global_index):
    """One LongformerSelfAttention as full attention. key_bias: [B,1,1,T] additive (0 / finfo.min)."""
    n_heads = attn.num_heads
    dropout = attn.dropout if attn.training else 0.0
    q = _heads(attn.query(hidden), n_heads)
    k = _heads(attn.key(hidden), n_heads)
    v = _heads(attn.value(hidden), n_heads)
    out = _unheads(F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias, dropout_p=dropout))

    if global_index is not None:
        # Global queries, packed as [B, max_globals] like HF, attend to every real key with the *_global weights.
        token_index, slot_index, max_globals = global_index
        global_hidden = hidden.new_zeros(hidden.shape[0], max_globals, hidden.shape[2])
        global_hidden[slot_index] = hidden[token_index]
        q_g = _heads(attn.query_global(global_hidden), n_heads)
        k_g = _heads(attn.key_global(hidden), n_heads)
        v_g = _heads(attn.value_global(hidden), n_heads)
        out_g = _unheads(F.scaled_dot_product_attention(q_g, k_g, v_g, attn_mask=key_bias, dropout_p=dropout))
        out = out.index_put(token_index, out_g[slot_index])

    # HF gives padding queries zero attention probabilities, hence a zero attention output.
    return out.masked_fill(is_masked[:, :, None], 0.0)


def _global_index(global_mask):
    """(token positions, packed slots, max globals per row) of global tokens, or None without any."""
    if global_mask is None or not bool(global_mask.any()):
        return None
    counts = global_mask.sum(dim=1)
    max_globals = int(counts.max())
    slots = torch.arange(max_globals, device=global_mask.device) < counts[:, None]
    # nonzero() is row-major in both, so the k-th global token of a row lands in slot k of that row.
    return global_mask.nonzero(as_tuple=True), slots.nonzero(as_tuple=True), max_globals


def full_attention_last_hidden_state(model, input_ids, attention_mask, global_attention_mask=None):
    """LongformerModel's forward as full attention; exact only when fits_fast_path(model, attention_mask)."""
    hidden = model.embeddings(input_ids=input_ids)  # RoBERTa-style position ids from input_ids, as in HF
    is_masked = attention_mask == 0
    global_mask = None
    if global_attention_mask is not None:
        global_mask = (global_attention_mask != 0) & ~is_masked
    key_bias = torch.zeros(is_masked.shape, dtype=hidden.dtype, device=hidden.device)
    key_bias = key_bias.masked_fill(is_masked, torch.finfo(hidden.dtype).min)[:, None, None, :]
    global_index = _global_index(global_mask)

    for layer in model.encoder.layer:
        attention = layer.attention
        context = _self_attention(attention.self, hidden, key_bias, is_masked, global_index)
        attended = attention.output(context, hidden)  # dense + dropout + LayerNorm(residual)
        hidden = layer.ff_chunk(attended)  # intermediate + output (HF's feed-forward chunking is math-neutral)
    return hidden


def longformer_last_hidden_state(model, input_ids, attention_mask=None, global_attention_mask=None):
    """Exactly `model(input_ids, attention_mask, global_attention_mask).last_hidden_state`, [B, T, H].

    Uses full attention (scaled_dot_product_attention) when every text spans at most half the smallest
    attention window, otherwise LongformerModel itself.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if input_ids.shape[1] > 0 and fits_fast_path(model, attention_mask):
        return full_attention_last_hidden_state(model, input_ids, attention_mask, global_attention_mask)
    return model(input_ids=input_ids, attention_mask=attention_mask,
                 global_attention_mask=global_attention_mask).last_hidden_state
