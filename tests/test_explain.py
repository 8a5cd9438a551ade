"""Attribution correctness on a hand-built model whose logit is a known function of chosen events.

HandBuiltModel follows MortalityTransformer's interface (event_features, forward(events, mask, static,
return_attention), input_proj) and has positional encoding and attention, so masking, padding and
re-packing are exercised; its logit is
    bias + static @ u + sum over real events of (w . event) + scale * head(attention-pooled events)
so with scale = 0 every method's exact answer is known: event l contributes w . x_l.
"""
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

import attribution
import explain_clinicalLF as ex
import explanation_sums
import faithfulness

TEXT_DIM, N_STATIC, N_TYPES = 6, 5, attribution.N_TYPE_COLUMNS
F = N_TYPES + TEXT_DIM + 1
STATIC_GROUPS = {"gender": [0, 1], "race": [2, 3], "patient_age": [4]}


class HandBuiltModel(nn.Module):
    def __init__(self, scale=1.0, d_model=16, n_heads=2, pool_heads=2, seed=0, interaction=0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.d_model, self.n_heads, self.pool_heads, self.scale = d_model, n_heads, pool_heads, scale
        # interaction != 0: the logit mixes static and event features, additive x (1 + interaction x static . mix)
        self.interaction = interaction
        self.register_buffer("static_mix", torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0]))
        self.input_proj = nn.Linear(F, d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.pool_key = nn.Linear(d_model, d_model)
        self.query = nn.Parameter(torch.randn(d_model))
        self.head = nn.Sequential(nn.Linear(d_model, 16), nn.Tanh(), nn.Linear(16, 1))
        self.static_weights = nn.Parameter(torch.tensor([0.5, -0.5, 0.3, -0.2, 0.8]))
        # the known additive part, read from unit 0 of the input projection (so LayerIG sees it too):
        # text dimension 0 carries risk, types and time carry none
        with torch.no_grad():
            self.input_proj.weight[0] = 0.0
            self.input_proj.weight[0, N_TYPES + 0] = 2.0

    @property
    def event_weights(self):
        return self.input_proj.weight[0].detach()

    def event_features(self, text_vectors, type_ids, times):
        return torch.cat([nn.functional.one_hot(type_ids, N_TYPES).float(), text_vectors, times.unsqueeze(-1)], -1)

    def positions(self, L):
        pos = torch.arange(L).float().unsqueeze(1)
        freq = torch.exp(torch.arange(0, self.d_model, 2).float() * (-math.log(1000.0) / self.d_model))
        pe = torch.zeros(L, self.d_model)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
        return pe

    def forward(self, events, mask, static, return_attention=False):
        B, L, _ = events.shape
        projected = self.input_proj(events)
        additive = ((projected[..., 0] - self.input_proj.bias[0]) * mask).sum(-1)
        h = projected + self.positions(L)
        q, k, v = self.qkv(h).view(B, L, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~mask.view(B, 1, 1, L), float("-inf"))
        attn = torch.softmax(scores, -1).nan_to_num(0.0)
        out = h + (attn @ v).transpose(1, 2).reshape(B, L, self.d_model)
        keys = self.pool_key(out).view(B, L, self.pool_heads, -1).transpose(1, 2)
        pool_scores = keys @ self.query.view(self.pool_heads, -1, 1) / math.sqrt(keys.shape[-1])
        pool_scores = pool_scores.transpose(-1, -2).masked_fill(~mask.view(B, 1, 1, L), float("-inf"))
        pool = torch.softmax(pool_scores, -1).nan_to_num(0.0)  # [B, pool_heads, 1, L]
        pooled = (pool @ out.unsqueeze(1)).squeeze(2).mean(1)  # [B, d]; 0 for a stay without events
        logits = (0.1 + static @ self.static_weights + additive * (1 + self.interaction * (static @ self.static_mix))
                  + self.scale * self.head(pooled).squeeze(-1))
        attention = dict(pooling_attention=pool)
        if return_attention:
            attention.update(layer_attention=attn.unsqueeze(0), transformer_output=out, query=self.query.detach(),
                             pooled=pooled)
        return logits, attention


def make_batch(lengths, planted=None, seed=1):
    """Stays with the given numbers of events (right-padded). planted: {stay: [positions]} get text dim 0
    = +2 (raises the logit by 4 each); every other event has text dim 0 in [-0.1, 0.1]."""
    g = torch.Generator().manual_seed(seed)
    B, L = len(lengths), max(max(lengths), 1)
    mask = torch.arange(L).view(1, L) < torch.tensor(lengths).view(B, 1)
    text = torch.randn(B, L, TEXT_DIM, generator=g)
    text[..., 0] = (torch.rand(B, L, generator=g) - 0.5) * 0.2
    for b, positions in (planted or {}).items():
        text[b, positions, 0] = 2.0
    type_ids = torch.randint(0, N_TYPES, (B, L), generator=g)
    times = torch.rand(B, L, generator=g)
    static = torch.tensor([[1, 0, 0, 1, 0.3]] * B, dtype=torch.float32)
    model = HandBuiltModel()
    events = model.event_features(text, type_ids, times) * mask.unsqueeze(-1)
    return events, mask, static


SETTINGS = ex.ExplainSettings(n_steps=64, internal_batch_size=None)


def test_type_columns_are_the_event_type_block_of_a_real_model():
    """N_TYPE_COLUMNS (the block whose all-zero marks a removed event) is the width of a real
    MortalityTransformer's event-type one-hot: each event type is one 1 there, and the text vector follows."""
    import train
    torch.manual_seed(0)
    model = train.MortalityTransformer(train.ModelConfig(text_dim=TEXT_DIM, n_static=N_STATIC, d_model=16,
                                                         n_layers=1, n_heads=2, d_ff=32, pool_heads=2)).eval()
    n_types = model.config.n_event_types
    type_ids = torch.arange(-1, n_types).unsqueeze(0)  # a padding row, then one event of each type
    text = torch.randn(1, n_types + 1, TEXT_DIM)
    feats = model.event_features(text, type_ids, torch.zeros(1, n_types + 1))[0, 1:]
    torch.testing.assert_close(feats[:, :attribution.N_TYPE_COLUMNS], torch.eye(n_types))
    torch.testing.assert_close(feats[:, attribution.N_TYPE_COLUMNS:attribution.N_TYPE_COLUMNS + TEXT_DIM],
                               (text[0, 1:] - model.text_mean) / model.text_scale)


def test_linear_model_every_method_gives_the_exact_contributions():
    model = HandBuiltModel(scale=0.0).eval()
    events, mask, static = make_batch([4, 7, 2], planted={1: [3]})
    out = attribution.explain_batch(model, events, mask, static, STATIC_GROUPS, SETTINGS)
    exact = (events @ model.event_weights) * mask  # w . (x - 0), zero baseline
    for method in attribution.SIGNED_METHODS:
        torch.testing.assert_close(out["event"][method], exact, atol=1e-4, rtol=1e-4, msg=method)
    exact_static = attribution.group_static(static * model.static_weights, STATIC_GROUPS)
    for method in ("integrated_gradients", "feature_ablation"):
        torch.testing.assert_close(out["static"][method], exact_static, atol=1e-4, rtol=1e-4, msg=method)
    # signs: the planted event raises the logit by 4 -> attribution +4, towards death
    assert all(out["event"][m][1, 3] > 3.9 for m in attribution.SIGNED_METHODS)
    neg = events[..., N_TYPES] < 0
    assert (out["event"]["integrated_gradients"][neg & mask] < 0).all()


def test_ig_completeness_within_reported_delta_and_planted_events_ranked_first():
    model = HandBuiltModel(scale=1.0).eval()
    planted = {0: [1, 4], 1: [0], 2: [5, 6, 2]}
    events, mask, static = make_batch([6, 3, 9, 0], planted=planted)
    ev, st, change, delta = attribution.integrated_gradients(model, events, mask, static, n_steps=64)
    total = ev.sum(1) + st.sum(1)
    # Captum's delta is exactly sum(attributions) - (f(x) - f(baseline)); it is small relative to the change
    torch.testing.assert_close(total - change, delta, atol=1e-4, rtol=0)
    assert (delta.abs() <= 0.01 * change.abs() + 1e-4).all(), (delta, change)
    fa_events, _ = attribution.feature_ablation(model, events, mask, static, STATIC_GROUPS)
    for attr in (ev, fa_events):
        for b, positions in planted.items():
            n = int(mask[b].sum())
            top = set(torch.argsort(attr[b, :n], descending=True)[:len(positions)].tolist())
            assert top == set(positions), (b, attr[b, :n])


def test_ablating_an_event_equals_rerunning_the_model_without_it():
    model = HandBuiltModel(scale=3.0).eval()  # attention and positions matter here
    events, mask, static = make_batch([5, 8, 3])
    fa_events, fa_static = attribution.feature_ablation(model, events, mask, static, STATIC_GROUPS, perturbations_per_eval=3)
    full, _ = model(events, mask, static)
    for b, l in [(0, 0), (0, 4), (1, 3), (1, 7), (2, 1)]:
        n = int(mask[b].sum())
        keep = [i for i in range(n) if i != l]  # physically remove the event: later events shift left
        without, _ = model(events[b:b + 1, keep], torch.ones(1, n - 1, dtype=torch.bool), static[b:b + 1])
        torch.testing.assert_close(fa_events[b, l], (full[b] - without[0]).detach(), atol=1e-5, rtol=0)
    # a static column: all its one-hot columns ablated together (baseline zero)
    ablated = static.clone()
    ablated[:, STATIC_GROUPS["race"]] = 0
    expected = full - model(events, mask, ablated)[0]
    torch.testing.assert_close(fa_static[:, 1], expected.detach(), atol=1e-5, rtol=0)


def test_padding_gets_exactly_zero_and_does_not_change_a_stays_attributions():
    model = HandBuiltModel(scale=1.0).eval()
    events, mask, static = make_batch([3, 10, 0])
    out = attribution.explain_batch(model, events, mask, static, STATIC_GROUPS, SETTINGS)
    for method, attr in out["event"].items():
        assert (attr[~mask] == 0).all(), method
    alone = attribution.explain_batch(model, events[:1, :3], mask[:1, :3], static[:1], STATIC_GROUPS, SETTINGS)
    for method in attribution.METHODS:
        torch.testing.assert_close(alone["event"][method][0], out["event"][method][0, :3], atol=2e-4, rtol=1e-3,
                                   msg=method)


def test_rows_have_no_padding_and_an_empty_stay_gets_only_static_rows():
    model = HandBuiltModel(scale=1.0).eval()
    lengths = [2, 5, 0]
    events, mask, static = make_batch(lengths)
    out = attribution.explain_batch(model, events, mask, static, STATIC_GROUPS, SETTINGS)
    meta = [pd.DataFrame({"event_index": range(n), "event_time": pd.Timestamp("2150-01-01"), "event_type": "lab",
                          "event_text": [f"e{i}" for i in range(n)],
                          "relative_time_to_final_event": np.arange(n, 0, -1) * 60.0}) for n in lengths]
    rows, static_rows = ex.attribution_rows([11, 12, 13], meta, out["event"], out["static"], list(STATIC_GROUPS),
                                            mask)
    assert list(rows.columns) == ["stay_id", *ex.ATTRIBUTION_EVENT_COLUMNS, "method", "attribution"]
    counts = rows.groupby(["stay_id", "method"]).size()
    assert counts.loc[11].eq(2).all() and counts.loc[12].eq(5).all() and len(counts) == 2 * len(attribution.METHODS)
    assert 13 not in set(rows.stay_id)
    assert set(static_rows[static_rows.stay_id == 13].feature) == set(STATIC_GROUPS)
    assert static_rows.groupby("stay_id").size().eq(len(STATIC_GROUPS) * 2).all()
    # the empty stay is predicted from static features alone, and its static IG sums to its logit change
    assert torch.isfinite(out["logits"]).all()
    assert abs(float(out["static"]["integrated_gradients"][2].sum() - out["ig_change"][2])) < 1e-3


def test_attention_pooling_weights_are_a_distribution_over_real_events():
    model = HandBuiltModel().eval()
    events, mask, static = make_batch([4, 6, 0])
    out = attribution.explain_batch(model, events, mask, static, STATIC_GROUPS, SETTINGS)
    w = out["event"]["attention_pooling"]
    torch.testing.assert_close(w.sum(1), torch.tensor([1.0, 1.0, 0.0]))
    assert (w >= 0).all()


def test_faithfulness_metrics_reward_the_right_ranking():
    model = HandBuiltModel(scale=0.0).eval()
    planted = {0: [2], 1: [1, 5], 2: [0, 3]}
    events, mask, static = make_batch([6, 8, 7], planted=planted)
    static = static - 3.0  # a low baseline risk: removing the planted events moves the probability a lot
    exact = (events @ model.event_weights) * mask
    scores = {"integrated_gradients": exact, "reversed": -exact}
    res = faithfulness.faithfulness_for_batch(model, events, mask, static, scores, n_points=11, n_random=5)
    good, bad, rnd = (faithfulness.summarise_faithfulness(res[k]) for k in ("integrated_gradients", "reversed", "random"))
    # for a stay predicted to die, removing the events ranked first must lower P(death) fastest
    assert good["deletion_auc"] < rnd["deletion_auc"] < bad["deletion_auc"]
    assert good["insertion_auc"] > rnd["insertion_auc"] > bad["insertion_auc"]
    assert good["comprehensiveness"]["20%"] > rnd["comprehensiveness"]["20%"]
    assert good["sufficiency"]["20%"] < rnd["sufficiency"]["20%"]
    planted_labels = [np.isin(np.arange(int(mask[b].sum())), planted[b]).astype(int) for b in range(3)]
    exact_by_stay = [exact[b, :int(mask[b].sum())].numpy() for b in range(3)]
    auprc, floor, n = faithfulness.planted_recovery(exact_by_stay, planted_labels)
    assert auprc == pytest.approx(1.0) and n == 3
    assert floor is None  # no random orders given, so no random floor
    assert faithfulness.planted_share(planted_labels) == pytest.approx(np.mean([1 / 6, 2 / 8, 2 / 7]))
    rev_auprc, _, _ = faithfulness.planted_recovery([-s for s in exact_by_stay], planted_labels)
    assert rev_auprc < 0.5


def test_model_randomisation_changes_the_attributions():
    model = HandBuiltModel(scale=5.0).eval()
    events, mask, static = make_batch([8, 9, 7])
    random_model = attribution.reinitialised_copy(model, seed=3)
    assert not torch.equal(random_model.query, model.query)
    a = attribution.explain_batch(model, events, mask, static, STATIC_GROUPS, SETTINGS)
    r = attribution.explain_batch(random_model, events, mask, static, STATIC_GROUPS, SETTINGS)
    for method in attribution.METHODS:
        by_stay = [[t["event"][method][b, :int(mask[b].sum())].numpy() for b in range(3)] for t in (a, r)]
        rho, n = faithfulness.mean_rank_correlation(*by_stay)
        assert n == 3 and rho < 0.9, (method, rho)


def test_attention_analyses_on_model_outputs():
    model = HandBuiltModel().eval()
    events, mask, static = make_batch([4, 6, 0])
    _, attn = attribution.attention_outputs(model, events, mask, static)
    hours = torch.arange(6).flip(0).float().expand(3, 6)
    patterns = explanation_sums.analyze_layer_attention_patterns(attn["layer_attention"], mask, hours)
    assert len(patterns) == 2  # 1 layer x 2 heads
    assert (patterns.entropy >= 0).all() and (patterns.entropy <= math.log(6) + 1e-6).all()
    assert ((patterns.max_weight > 0) & (patterns.max_weight <= 1)).all()
    periods = explanation_sums.analyze_critical_time_periods(attribution.pooling_weights(attn), hours, mask)
    assert periods.n_events.sum() == 10
    assert periods.share_of_weight.sum() == pytest.approx(1.0)
    rows = pd.DataFrame({"method": "integrated_gradients", "event_type": ["lab", "lab", "procedure"],
                         "relative_time_to_final_event": [30.0, 600.0, 30.0], "attribution": [1.0, 3.0, -2.0]})
    table = explanation_sums.analyze_feature_importance_over_time(rows)
    assert table.loc["lab", "[0.0, 1.0)"] == 1.0 and table.loc["procedure", "[0.0, 1.0)"] == -2.0


def test_mean_baseline_keeps_padding_at_zero_and_completeness():
    model = HandBuiltModel(scale=1.0).eval()
    events, mask, static = make_batch([3, 7])
    event_mean, static_mean = events[mask].mean(0), static.mean(0) * 0.5
    ev, st, change, delta = attribution.integrated_gradients(model, events, mask, static, event_mean, static_mean, n_steps=64)
    assert (ev[~mask] == 0).all()
    torch.testing.assert_close(ev.sum(1) + st.sum(1) - change, delta, atol=1e-4, rtol=0)
    assert (delta.abs() <= 0.01 * change.abs() + 1e-4).all()
    # the linear part is exact: w . (x - mean)
    linear = HandBuiltModel(scale=0.0).eval()
    ev, _, _, _ = attribution.integrated_gradients(linear, events, mask, static, event_mean, static_mean, n_steps=8)
    torch.testing.assert_close(ev, ((events - event_mean) @ linear.event_weights) * mask, atol=1e-5, rtol=1e-4)


def test_probabilities_with_masks_equal_running_the_stay_without_the_removed_events():
    model = HandBuiltModel(scale=3.0).eval()
    events, mask, static = make_batch([6, 9])
    keep_sets = [[0, 2, 5], [1], [0, 1, 2, 3, 4, 5], [8, 3, 4]]
    masks = torch.zeros(2, 2, 9, dtype=torch.bool)
    masks[0, 0, keep_sets[0]] = masks[0, 1, keep_sets[1]] = masks[1, 0, keep_sets[2]] = masks[1, 1, keep_sets[3]] = True
    p = faithfulness.probabilities_with_masks(model, events, static, masks, max_rows=3)
    for (b, k), keep in zip([(0, 0), (0, 1), (1, 0), (1, 1)], keep_sets):
        keep = sorted(keep)
        with torch.no_grad():
            only_kept = torch.ones(1, len(keep), dtype=torch.bool)
            direct = torch.sigmoid(model(events[b:b + 1, keep], only_kept, static[b:b + 1])[0])
        assert float(p[b, k]) == pytest.approx(float(direct), abs=1e-6)


def test_ig_re_integrates_stays_whose_completeness_error_is_too_large():
    model = HandBuiltModel(scale=8.0).eval()
    with torch.no_grad():  # sharp attention and head: a path along which few steps integrate badly
        model.qkv.weight.mul_(6.0), model.pool_key.weight.mul_(6.0), model.head[0].weight.mul_(6.0)
    events, mask, static = make_batch([5, 9, 4, 0])
    _, _, change, delta = attribution.integrated_gradients(model, events, mask, static, n_steps=2)
    assert (delta.abs() > 0.002 * change.abs() + 1e-4).any()  # 2 steps are not enough for some stay
    ev, st, change, delta, steps = attribution.refined_integrated_gradients(model, events, mask, static, n_steps=2,
                                                                   tolerance=0.002, max_n_steps=256)
    assert steps.max() > 2 and steps.max() <= 256
    assert (delta.abs() <= 0.002 * change.abs() + 1e-4).all()
    torch.testing.assert_close(ev.sum(1) + st.sum(1) - change, delta, atol=1e-4, rtol=0)
    # completeness does not pin each event's share; those are close to a 512-step integral all the same
    exact, _, _, _ = attribution.integrated_gradients(model, events, mask, static, n_steps=512)
    assert (ev - exact).abs().max() < 0.1 * change.abs().max()
