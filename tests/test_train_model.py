"""train.py: dataset, batching and the attention-pooling transformer."""

import math

import numpy as np
import pytest
import torch

import event_table
import train


def random_stays(n, dim=8, n_static=5, max_len=12, seed=0, n_texts=20):
    g = torch.Generator().manual_seed(seed)
    stays = []
    for i in range(n):
        L = int(torch.randint(0, max_len + 1, (1,), generator=g)) if i % 4 else (0 if i == 0 else max_len)
        stays.append(train.Stay(stay_id=i, subject_id=100 + i, text_rows=torch.randint(0, n_texts, (L,), generator=g),
                                 type_ids=torch.randint(0, 5, (L,), generator=g), log_hours=torch.randn(L, generator=g),
                                 static=torch.randn(n_static, generator=g), label=float(i % 2),
                                 event_row_index=torch.arange(L)))
    matrix = torch.randn(n_texts, dim, generator=g)
    return stays, matrix


def small_model(dim=8, n_static=5, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = train.ModelConfig(text_dim=dim, n_static=n_static, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                            pool_heads=4, **kw)
    return train.MortalityTransformer(cfg).eval()


def test_collate_pads_and_masks():
    stays, _ = random_stays(6)
    batch = train.collate_stays(stays)
    L = max(len(s.type_ids) for s in stays)
    assert batch["mask"].shape == (6, L) and batch["mask"].dtype == torch.bool
    assert batch["mask"].sum(1).tolist() == [len(s.type_ids) for s in stays]
    assert (batch["type_ids"][~batch["mask"]] == -1).all()
    empty = train.collate_stays([stays[0], stays[0]])
    assert empty["mask"].shape == (2, 1) and not empty["mask"].any()


def test_event_features_zero_on_padding():
    stays, matrix = random_stays(6)
    model = small_model()
    batch = train.collate_stays(stays)
    feats = model.event_features(matrix[batch["text_rows"]], batch["type_ids"], batch["log_hours"])
    assert feats.shape == (6, batch["mask"].shape[1], len(event_table.EVENT_TYPES) + 8 + 1)
    assert (feats[~batch["mask"]] == 0).all()
    real = feats[batch["mask"]]
    assert (real[:, :len(event_table.EVENT_TYPES)].sum(1) == 1).all()
    torch.testing.assert_close(real[:, -1], batch["log_hours"][batch["mask"]])


def test_padding_invariance():
    """A stay's logit alone equals its logit inside a padded batch (to 1e-5)."""
    stays, matrix = random_stays(10, max_len=30)
    model = small_model()
    with torch.no_grad():
        together = model(*train.batch_inputs(model, train.collate_stays(stays), matrix))[0]
        for i, s in enumerate(stays):
            alone = model(*train.batch_inputs(model, train.collate_stays([s]), matrix))[0]
            assert abs(float(alone[0]) - float(together[i])) < 1e-5


def test_attention_return_parity_and_shapes():
    stays, matrix = random_stays(7, max_len=15)
    model = small_model()
    batch = train.collate_stays(stays)
    with torch.no_grad():
        plain = model(*train.batch_inputs(model, batch, matrix))[0]
        logits, att = model(*train.batch_inputs(model, batch, matrix), return_attention=True)
    assert torch.equal(plain, logits)  # same computation, identical logits
    B, L = batch["mask"].shape
    assert att["layer_attention"].shape == (2, B, 4, L, L)
    assert att["pooling_attention"].shape == (B, 4, 1, L)
    assert att["transformer_output"].shape == (B, L, 32) and att["query"].shape == (32,)
    assert att["pooled"].shape == (B, 32)
    has = batch["mask"].any(1)
    # padded keys get zero weight, real rows sum to one
    pool = att["pooling_attention"][:, :, 0, :]
    assert (pool[~batch["mask"][:, None, :].expand_as(pool)] == 0).all()
    torch.testing.assert_close(pool[has].sum(-1), torch.ones(int(has.sum()), 4))
    layer = att["layer_attention"]
    key_pad = ~batch["mask"][has][None, :, None, None, :].expand_as(layer[:, has])
    assert (layer[:, has][key_pad] == 0).all()
    # the returned weights reproduce what SDPA computed: pooling output from weights
    for name in ("layer_attention", "pooling_attention", "transformer_output", "pooled"):
        assert torch.isfinite(att[name]).all()


def test_empty_stays_predicted_from_static_without_nan():
    stays, matrix = random_stays(4)
    empty = [train.Stay(i, i, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0),
                        torch.randn(5), 0.0, torch.zeros(0, dtype=torch.long)) for i in range(3)]
    model = small_model()
    model.train()  # dropout on: gradients must stay finite too
    logits, att = model(*train.batch_inputs(model, train.collate_stays(empty), matrix), return_attention=True)
    assert torch.isfinite(logits).all() and (att["pooled"] == 0).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        mixed = model(*train.batch_inputs(model, train.collate_stays(empty + stays), matrix))[0]
        static_only = model.classifier(torch.cat([torch.zeros(3, 32), torch.stack([s.static for s in empty])], 1))
    torch.testing.assert_close(mixed[:3], static_only.squeeze(-1), rtol=1e-5, atol=1e-5)


def test_sinusoidal_positions_any_length():
    pe = train.sinusoidal_positions(5000, 32)
    assert pe.shape == (5000, 32) and torch.isfinite(pe).all()
    torch.testing.assert_close(pe[:100], train.sinusoidal_positions(100, 32))


def test_temporal_loss_prefers_recent_attention():
    mask = torch.tensor([[True, True, True, False]])
    hours = torch.tensor([[48.0, 12.0, 0.0, 0.0]])  # oldest first, last is padding
    recent = torch.tensor([[0.05, 0.15, 0.8, 0.0]]).view(1, 1, 1, 4).expand(1, 4, 1, 4)
    old = torch.tensor([[0.8, 0.15, 0.05, 0.0]]).view(1, 1, 1, 4).expand(1, 4, 1, 4)
    l_recent = train.temporal_aware_loss(recent, hours, mask, 12.0)
    l_old = train.temporal_aware_loss(old, hours, mask, 12.0)
    assert 0 <= float(l_recent) < float(l_old)
    prior = torch.tensor([2.0 ** -4, 2.0 ** -1, 1.0])
    prior = torch.cat([prior / prior.sum(), torch.zeros(1)]).view(1, 1, 1, 4).expand(1, 4, 1, 4)
    assert abs(float(train.temporal_aware_loss(prior, hours, mask, 12.0))) < 1e-6  # zero at the prior
    none = train.temporal_aware_loss(torch.zeros(2, 4, 1, 1), torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.bool), 12.0)
    assert float(none) == 0.0


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_length_bucket_sampler(replicas):
    lengths = np.random.default_rng(0).integers(0, 100, 103)
    per_rank = [train.LengthBucketSampler(lengths, 8, shuffle=True, seed=1, num_replicas=replicas, rank=r)
                for r in range(replicas)]
    for s in per_rank:
        s.set_epoch(3)
    batches = [b for s in per_rank for b in s.batches()]
    assert len({len(s) for s in per_rank}) == 1
    covered = [i for b in batches for i in b]
    assert set(covered) == set(range(103))
    if replicas == 1:
        assert sorted(covered) == list(range(103))  # each stay exactly once
    again = train.LengthBucketSampler(lengths, 8, shuffle=True, seed=1, num_replicas=replicas, rank=0)
    again.set_epoch(3)
    assert again.batches() == per_rank[0].batches()
    again.set_epoch(4)
    assert again.batches() != per_rank[0].batches()
    # bucketing: padding is far below a random batching
    pad = sum(max(lengths[b]) * len(b) - lengths[b].sum() for b in batches)
    rand = np.random.default_rng(0).permutation(103)
    rand_pad = sum(max(lengths[rand[i:i + 8]]) * len(rand[i:i + 8]) - lengths[rand[i:i + 8]].sum() for i in range(0, 103, 8))
    assert pad < rand_pad / 2
    evals = train.LengthBucketSampler(lengths, 8, shuffle=False).batches()
    assert [lengths[i] for b in evals for i in b] == sorted(lengths)


def test_build_stays_keeps_most_recent_and_reports_cut(caplog, tmp_path):
    from train_tables import make_event_table
    df = make_event_table(n_patients=10, seed=2, max_events=20)
    df.to_csv(tmp_path / "t.csv", index=False)
    table = event_table.read_event_table(tmp_path / "t.csv")
    pre = train.EventPreprocessor().fit(table)
    text_rows = np.arange(len(table))
    with caplog.at_level("WARNING", logger="train"):
        stays = train.build_stays(table, pre, text_rows, max_events=5)
    n_long = int((table.groupby("stay_id")["event_type"].count() > 5).sum())
    assert n_long > 0 and f"{n_long} of {len(stays)} stays have more than --max-events=5" in caplog.text
    assert [s.stay_id for s in stays] == list(table.stay_id.unique())
    for s in stays:
        rows = table.index[(table.stay_id == s.stay_id) & table.event_type.notna()].to_numpy()
        np.testing.assert_array_equal(s.event_row_index.numpy(), rows[-5:])  # the most recent events
        np.testing.assert_array_equal(s.text_rows.numpy(), rows[-5:])
        assert s.label == table.loc[table.stay_id == s.stay_id, "mortality"].iloc[0]


def test_returned_attention_weights_are_the_ones_used():
    """weights @ V reproduces each layer's SDPA output and the pooled vector."""
    stays, matrix = random_stays(6, max_len=14)
    model = small_model()
    batch = train.collate_stays(stays)
    captured = {}
    hook = model.layers[1].attn.register_forward_hook(lambda m, inp, out: captured.update(x=inp[0], out=out[0]))
    with torch.no_grad():
        _, att = model(*train.batch_inputs(model, batch, matrix), return_attention=True)
        hook.remove()
        attn = model.layers[1].attn
        B, L, D = captured["x"].shape
        v = attn.qkv(captured["x"]).split(D, dim=2)[2].view(B, L, 4, D // 4).transpose(1, 2)
        rebuilt = attn.proj((att["layer_attention"][1] @ v).transpose(1, 2).reshape(B, L, D))
        has = batch["mask"].any(1)
        torch.testing.assert_close(rebuilt[batch["mask"]], captured["out"][batch["mask"]], atol=1e-5, rtol=1e-5)
        pool = model.pool
        pv = pool.value(att["transformer_output"]).view(B, L, 4, D // 4).transpose(1, 2)
        pooled = pool.proj((att["pooling_attention"] @ pv).reshape(B, D))
        torch.testing.assert_close(pooled[has], att["pooled"][has], atol=1e-5, rtol=1e-5)


def test_text_normalization_counts_each_event_without_copying_them():
    """Mean/std over events (a text used by 3 events counts 3 times), from a float16 matrix, in blocks."""
    g = torch.Generator().manual_seed(0)
    matrix = (torch.randn(50, 8, generator=g) * 3 + 1).half()
    event_rows = torch.randint(0, 50, (400,), generator=g)
    model = train.MortalityTransformer(train.ModelConfig(text_dim=8, n_static=2, d_model=16, n_layers=1, n_heads=2,
                                                         d_ff=32, pool_heads=2))
    model.set_text_normalization(matrix, event_rows, block_rows=7)
    events = matrix[event_rows].double()
    torch.testing.assert_close(model.text_mean, events.mean(0).float())
    torch.testing.assert_close(model.text_scale, events.std(0).float())


def test_item_values_give_each_item_its_own_value_direction():
    """--item-values: the same standardised number moves two items' event vectors in different directions (the
    shared value input alone moves both alike), and the per-item vectors are trained."""
    model = small_model(n_items=2, item_dim=4, value_channel=True, trajectory_channel=True, item_values=True)
    text = torch.zeros(1, 4, 8)
    type_ids, log_hours = torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4)
    item_ids = torch.tensor([[1, 1, 2, 2]])
    values = torch.tensor([[0.0, 2.0, 0.0, 2.0]])
    changes = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    feats = model.event_features(text, type_ids, log_hours, item_ids, values, changes)
    n_base = len(event_table.EVENT_TYPES) + 8 + 1 + 2 + 4
    assert feats.shape[-1] == n_base + 4 + 4
    item1_step, item2_step = feats[0, 1] - feats[0, 0], feats[0, 3] - feats[0, 2]
    assert not torch.allclose(item1_step, item2_step)
    torch.testing.assert_close(feats[0, 1, n_base:n_base + 4], 2.0 * model.item_value_embedding.weight[1])
    torch.testing.assert_close(feats[0, 3, n_base + 4:], 1.0 * model.item_change_embedding.weight[2])
    feats.sum().backward()
    assert model.item_value_embedding.weight.grad[1].abs().sum() > 0
    # off by default, and without the value channel there is no number to scale
    assert small_model(n_items=2, item_dim=4, value_channel=True).item_value_embedding is None
    assert small_model(n_items=2, item_dim=4, item_values=True).item_value_embedding is None


def test_time_periods_encode_the_hours_before_prediction_and_their_differences():
    """--time-periods K: each event carries sin, cos of 2 pi hours / period (periods 1, 2, 4 ... h), hours recovered
    from the preprocessor's log-hours scaling, so a dot product of two events' features is a function of how many
    hours apart they are; padding rows stay zero; the scaling is saved with the model; off by default."""
    model = small_model(time_periods=4)
    time_mean, time_std = 1.7, 0.9
    model.set_time_scaling(time_mean, time_std)
    hours = torch.tensor([[0.0, 0.5, 3.0, 30.0, 0.0]])
    log_hours = (torch.log1p(hours) - time_mean) / time_std
    type_ids = torch.tensor([[0, 1, 2, 3, -1]])  # the last is padding
    feats = model.event_features(torch.zeros(1, 5, 8), type_ids, log_hours)
    time_part = feats[0, :, -8:]
    angles = 2 * math.pi * hours[0, :4, None] / torch.tensor([1.0, 2.0, 4.0, 8.0])
    torch.testing.assert_close(time_part[:4], torch.cat([angles.sin(), angles.cos()], -1), atol=1e-4, rtol=0)
    assert (feats[0, 4] == 0).all()
    # the same gap gives the same dot product wherever it lies in the stay: 0 -> 3 h and 27 -> 30 h
    shifted = model.time_features((torch.log1p(torch.tensor([27.0, 30.0])) - time_mean) / time_std)
    torch.testing.assert_close(time_part[0] @ time_part[2], shifted[0] @ shifted[1], atol=1e-4, rtol=0)
    restored = small_model(time_periods=4)
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored.time_scaling, torch.tensor([time_mean, time_std]))
    assert small_model().config.time_periods == 0 and not hasattr(small_model(), "time_scaling")
    assert small_model(time_periods=4).input_proj.in_features == small_model().input_proj.in_features + 8


def test_soft_counts_count_real_events_and_an_empty_stay_is_still_its_statics():
    """--count-pool: with gates forced to 1 each soft count is log(1 + the stay's real events), padding excluded;
    a stay without events gets zero counts, so it is still predicted from its static features alone."""
    stays, matrix = random_stays(8, max_len=15)
    model = small_model(count_pool=3)
    with torch.no_grad():
        model.count_gate.weight.zero_()
        model.count_gate.bias.fill_(50.0)
        batch = train.collate_stays(stays)
        logits, att = model(*train.batch_inputs(model, batch, matrix), return_attention=True)
    n_events = batch["mask"].sum(1).float()
    assert 0 in n_events.tolist() and len(set(n_events.tolist())) > 2  # empty and padded stays
    torch.testing.assert_close(att["soft_counts"], torch.log1p(n_events)[:, None].expand(-1, 3))
    empty = n_events == 0
    torch.testing.assert_close(logits[empty], att["no_events_logits"][empty])


def test_debiased_moving_average_weighs_each_step_as_written():
    """--ema-decay's average after t updates is sum_i (1 - d) d^(t-i) theta_i / (1 - d^t) over the weights after
    each step, computed directly here (torch's plain get_ema_multi_avg_fn fails this: the first step keeps d^(t-1))."""
    from torch.optim.swa_utils import AveragedModel
    decay, steps = 0.9, 25
    model = small_model()
    average = AveragedModel(model, multi_avg_fn=train.debiased_ema_update(decay), use_buffers=True)
    history = []
    for _ in range(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        history.append([p.detach().clone().double() for p in model.parameters()])
        average.update_parameters(model)
    w = torch.tensor([(1 - decay) * decay ** (steps - 1 - i) for i in range(steps)], dtype=torch.float64)
    w /= w.sum()
    for k, p in enumerate(average.module.parameters()):
        direct = sum(w[i] * history[i][k] for i in range(steps))
        torch.testing.assert_close(p.double(), direct, atol=1e-5, rtol=1e-5)


def test_event_dropout_hides_real_events_only_and_never_empties_a_stay():
    """--event-dropout: each real event is hidden with probability p; padding stays hidden, a stay with events
    keeps at least one, and p = 0 changes nothing."""
    lengths = [0, 1, 2, 5, 200] * 40
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    g = torch.Generator().manual_seed(0)
    dropped = train.drop_events(mask, 0.5, generator=g)
    assert not (dropped & ~mask).any()                       # padding never becomes an event
    assert torch.equal(dropped.any(1), mask.any(1))          # no stay is emptied, the empty ones stay empty
    long = torch.tensor(lengths) == 200
    hidden = 1 - dropped[long].sum() / mask[long].sum()
    assert 0.47 < float(hidden) < 0.53
    assert dropped[torch.tensor(lengths) == 1, 0].all()      # a one-event stay would be emptied: it keeps its event
    assert torch.equal(train.drop_events(mask, 0.0), mask)
    assert not torch.equal(train.drop_events(mask, 0.5, generator=g), dropped)  # drawn afresh each call


def test_attention_dropout_is_its_own_option_and_reaches_every_layers_attention():
    """--attention-dropout drops out the attention weights only: with every other dropout at 0, a training-mode
    forward is the eval-mode one at 0 and differs from it above 0."""
    stays, matrix = random_stays(6, seed=3)
    batch = train.collate_stays(stays)
    for attention_dropout, same in ((0.0, True), (0.5, False)):
        model = small_model(dropout=0.0, attention_dropout=attention_dropout)
        inputs = train.batch_inputs(model, batch, matrix)
        with torch.no_grad():
            eval_logits, _ = model.eval()(*inputs)
            torch.manual_seed(1)
            train_logits, _ = model.train()(*inputs)
        assert torch.allclose(eval_logits, train_logits, atol=1e-6) == same, attention_dropout
        assert all(layer.attn.attention_dropout == attention_dropout for layer in model.layers)


def forward_with_key_dropout(**key_dropout_options):
    """A small model with DropKey (`key_dropout_options`) as its only dropout, on 8 random stays: training's logits
    are finite and differ from eval's (nothing dropped there); returns the event mask and training's layer attention."""
    stays, matrix = random_stays(8, seed=5)
    model = small_model(dropout=0.0, attention_dropout=0.0, **key_dropout_options)
    inputs = train.batch_inputs(model, train.collate_stays(stays), matrix)
    with torch.no_grad():
        eval_logits, _ = model.eval()(*inputs)
        torch.manual_seed(0)
        train_logits, attention = model.train()(*inputs, return_attention=True)
    assert torch.isfinite(train_logits).all() and not torch.allclose(eval_logits, train_logits, atol=1e-6)
    return inputs[1], attention["layer_attention"]


def test_attention_key_dropout_hides_events_from_a_head_never_all_of_them_and_never_padding():
    """--attention-key-dropout: in training each head ignores random events of the stay (weights exactly 0 for
    them, for every query), keeps at least one, and never attends to padding; in eval nothing is dropped."""
    mask, attention = forward_with_key_dropout(attention_key_dropout=0.9)
    real = mask.any(1)                                          # stays with events
    weights = attention[:, real]                                # layers, stays, heads, L (queries), L (keys)
    events = mask[real][None, :, None, None, :]                 # which keys are real events
    assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5)
    assert (weights[~events.expand_as(weights)] == 0).all()     # padding is never attended
    unseen = (weights == 0) & events                            # real events a query of a head does not see
    assert (unseen == unseen[..., :1, :]).all()                 # the same events for every query of a head
    share_hidden = unseen[..., 0, :].sum() / events.expand_as(weights)[..., 0, :].sum()
    assert 0.5 < share_hidden < 0.95                            # ~0.9 asked; a head never loses all its events


def test_attention_key_dropout_per_query_draws_each_querys_keys_keeps_its_own_and_never_padding():
    """--attention-key-dropout-per query: each query of each head ignores its own random events (weights exactly
    0), always sees its own event, never attends to padding, and nothing is dropped in eval."""
    mask, attention = forward_with_key_dropout(attention_key_dropout=0.5, attention_key_dropout_per="query")
    real = mask.any(1)
    weights = attention[:, real]                                # layers, stays, heads, L (queries), L (keys)
    events = mask[real][None, :, None, None, :].expand_as(weights)
    queries = mask[real][None, :, None, :, None].expand_as(weights)
    assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5)
    assert (weights[~events & queries] == 0).all()              # padding is never attended by a real query
    own = torch.diagonal(weights, dim1=-2, dim2=-1)[torch.diagonal(queries & events, dim1=-2, dim2=-1)]
    assert (own > 0).all()                                      # a real query always sees its own event
    unseen = (weights == 0) & events & queries
    differs = (unseen != unseen[..., :1, :]) & queries          # queries of one head that drop different events
    assert differs.any()
    share_hidden = unseen.sum() / (events & queries).sum()
    assert 0.35 < share_hidden < 0.55                           # ~0.5 asked, less the events kept as their own


def test_per_query_key_mask_drops_at_the_asked_rate():
    """The 16-bit draw behind the per-query mask keeps each real key with probability 1 - p."""
    attend = torch.ones(4, 64, dtype=torch.bool)
    attend[1, 10:] = False
    generator = torch.Generator().manual_seed(0)
    for p in (0.1, 0.5):
        keep = train.drop_keys_per_query(attend, 8, p, generator=generator)
        off_diagonal = ~torch.eye(64, dtype=torch.bool)
        real = attend[:, None, :, None] & attend[:, None, None, :] & off_diagonal
        assert abs(float(keep[real.expand_as(keep)].float().mean()) - (1 - p)) < 0.01, p
        assert keep[1, :, 10:, :].all()                         # padded queries attend to everything
        assert not keep[1, :, :10, 10:].any()                   # real queries never to padding
