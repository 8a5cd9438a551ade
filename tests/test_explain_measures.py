"""What each faithfulness measure and figure quantity claims (issue 13, items 1-7 and 9), on the hand-built
model of test_explain.py and a tiny MortalityTransformer."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

import attribution
import explain_clinicalLF as ex
import explanation_sums
import faithfulness
import figures
import train
from test_explain import STATIC_GROUPS, HandBuiltModel, make_batch


def _by_stay(t, mask):
    return [t[b, :int(mask[b].sum())].double().numpy() for b in range(mask.shape[0])]


def test_random_floor_of_planted_auprc_is_the_average_precision_of_the_random_orders():
    model = HandBuiltModel(scale=0.0).eval()
    planted = {0: [2], 1: [4], 2: [0]}  # one planted event in stays of 5, 6 and 4 events
    events, mask, static = make_batch([5, 6, 4], planted=planted)
    exact = (events @ model.event_weights) * mask
    res = faithfulness.faithfulness_for_batch(model, events, mask, static, {"integrated_gradients": exact}, n_points=3,
                                    n_random=300, rng=np.random.default_rng(0))
    labels = [np.isin(np.arange(n), planted[b]).astype(int) for b, n in enumerate([5, 6, 4])]
    random_scores = [r["order_scores"] for r in res["random"]]
    auprc, floor, n = faithfulness.planted_recovery(_by_stay(exact, mask), labels, random_scores)
    # one planted event among n at a uniformly random rank r: AP = 1/r, expected H_n / n
    expected = np.mean([sum(1 / r for r in range(1, n + 1)) / n for n in (5, 6, 4)])
    assert n == 3 and auprc == pytest.approx(1.0)
    assert floor == pytest.approx(expected, abs=0.03)
    assert floor > faithfulness.planted_share(labels) + 0.2  # the old floor (share of planted events) was far too low


def test_layer_ig_attributes_its_own_logit_change_when_the_classifier_mixes_static_and_events():
    model = HandBuiltModel(scale=0.0, interaction=0.8).eval()
    events, mask, static = make_batch([4, 6, 3])
    lig, lig_change, lig_delta = attribution.layer_integrated_gradients(model, events, mask, static, n_steps=16)
    ig, _, ig_change, _ = attribution.integrated_gradients(model, events, mask, static, n_steps=16)
    linear = (events @ model.event_weights) * mask
    mix = (static @ model.static_mix).view(-1, 1)
    # static held at its value on LayerIG's path: w.x (1 + c s.v); IG moves static too: w.x (1 + c s.v / 2)
    torch.testing.assert_close(lig, linear * (1 + 0.8 * mix), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ig, linear * (1 + 0.4 * mix), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lig.sum(1), lig_change, atol=1e-4, rtol=1e-4)  # its own completeness
    torch.testing.assert_close(lig.sum(1) - lig_change, lig_delta, atol=1e-4, rtol=0)
    assert not torch.allclose(lig_change, ig_change, atol=1e-2)
    out = attribution.explain_batch(model, events, mask, static, STATIC_GROUPS, ex.ExplainSettings(n_steps=8))
    assert (out["lig_steps"] == 8).all() and (out["lig_delta"].abs() < 1e-3).all()


def _tiny_transformer(seed=0):
    torch.manual_seed(seed)
    config = train.ModelConfig(text_dim=6, n_static=5, d_model=16, n_layers=2, n_heads=2, d_ff=32, pool_heads=2)
    return train.MortalityTransformer(config).eval()


def test_pooling_scores_are_what_attention_pooling_takes_the_softmax_of():
    model = _tiny_transformer()
    events, mask, static = make_batch([5, 8, 3])
    _, attn = attribution.attention_outputs(model, events, mask, static)
    scores = attn["pooling_scores"]  # [B, heads, L]
    assert scores.shape == (3, 2, 8)
    expected = torch.softmax(scores.masked_fill(~mask[:, None, :], float("-inf")), -1)
    torch.testing.assert_close(expected, attn["pooling_attention"][:, :, 0, :], atol=1e-6, rtol=1e-5)
    assert attribution.pooling_scores(HandBuiltModel(), attn["transformer_output"]) is None  # no pool.key: not drawn


def test_cascading_randomisation_goes_from_the_top_and_reports_signed_and_absolute_correlation():
    model = _tiny_transformer()
    names = [name for name, _ in attribution.randomisation_groups(model)]
    assert names == ["classifier", "pool", "ln_f", "layers.1", "layers.0", "input_proj"]
    steps = attribution.cascading_randomisation(model, seed=1)
    original = dict(model.named_parameters())
    for k, (name, step_model) in enumerate(steps):
        for param_name, p in step_model.named_parameters():
            randomised = any(param_name.startswith(g + ".") for g in names[:k + 1])
            if p.numel() > 1:  # scalars are left alone
                assert torch.equal(p, original[param_name]) != randomised, (name, param_name)
    hand = HandBuiltModel(scale=5.0).eval()
    events, mask, static = make_batch([8, 9, 7])
    collected = explanation_sums.Collected(static_names=list(STATIC_GROUPS))
    out = attribution.explain_batch(hand, events, mask, static, STATIC_GROUPS, ex.ExplainSettings(n_steps=16))
    randomised = [(n, attribution.explain_batch(m, events, mask, static, STATIC_GROUPS, ex.ExplainSettings(n_steps=16))["event"])
                  for n, m in attribution.cascading_randomisation(hand, seed=3)]
    assert collected.cascade == {}
    meta = [pd.DataFrame({"event_index": range(n), "event_type": "lab", "event_text": "x",
                          "relative_time_to_final_event": np.arange(n, 0, -1) * 60.0}) for n in (8, 9, 7)]
    chunk = [train.Stay(i, i, None, torch.zeros(n), None, None, 0, None) for i, n in enumerate((8, 9, 7))]
    collected.add(chunk, meta, mask, out, pd.DataFrame(), pd.DataFrame(), {}, randomised, False)
    f = collected.faithfulness(ex.ExplainSettings(), False)
    cascade = f["randomisation_cascade"]
    assert [c["step"] for c in cascade] == [n for n, _ in attribution.randomisation_groups(hand)]
    for method in attribution.METHODS:
        last = cascade[-1]["methods"][method]
        assert last["n_stays"] == 3 and last["spearman"] < 0.9 and last["spearman_abs"] is not None, method


def test_sufficiency_is_reported_per_predicted_class_and_comprehensiveness_at_1_percent_is_flagged():
    model = HandBuiltModel(scale=0.0).eval()
    events, mask, static = make_batch([6, 8, 7, 5], planted={0: [2], 1: [1, 5]})
    static[2:] -= 4.0  # two stays predicted to survive
    exact = (events @ model.event_weights) * mask
    res = faithfulness.faithfulness_for_batch(model, events, mask, static, {"integrated_gradients": exact}, n_points=3)
    summary = faithfulness.summarise_faithfulness(res["integrated_gradients"])
    by_class = summary["sufficiency_by_predicted_class"]
    predicted_death = torch.sigmoid(model(events, mask, static)[0]) >= 0.5
    assert by_class["n_death"] == int(predicted_death.sum()) and by_class["n_survival"] == int((~predicted_death).sum())
    assert by_class["n_death"] > 0 and by_class["n_survival"] > 0
    assert set(by_class["death"]) == {"1%", "5%", "10%", "20%"}


def test_head_specialization_lift_is_one_for_uniform_pooling_whatever_each_stays_length():
    weighted, counts = {}, {}
    for n, kinds in ((2, ["lab", "lab"]), (10, ["procedure"] * 9 + ["lab"])):  # labs mostly in short stays
        uniform = np.full((3, n), 1.0 / n)  # 3 heads
        for j, kind in enumerate(kinds):
            weighted[kind] = weighted.get(kind, 0) + uniform[:, j] * n
            counts[kind] = counts.get(kind, 0) + 1
    lift = figures.head_specialization_lift(weighted, counts, ["lab", "procedure"])
    np.testing.assert_allclose(lift, 1.0)


def test_window_importance_weighs_every_stay_the_same():
    # stay 1's attributions are 100x larger; per-stay normalisation keeps it from deciding the curve
    rows = pd.DataFrame({"stay_id": [1, 1, 2, 2], "attribution": [100.0, -100.0, 3.0, 1.0],
                         "relative_time_to_final_event": [30.0, 600.0, 30.0, 600.0]})
    table = explanation_sums.window_importance(rows).set_index("window")
    assert table.loc["[0.0, 1.0)", "mean_weight"] == pytest.approx((1.0 + 1.5) / 2)
    assert table.loc["[8.0, 12.0)", "mean_weight"] == pytest.approx((1.0 + 0.5) / 2)


def test_rank_agreement_compares_attention_with_absolute_attributions():
    signed = [np.array([-5.0, -4.0, 0.1, 0.2, 3.0])]
    attention = [np.abs(signed[0])]  # attention follows how much an event matters, not its direction
    scores = {"integrated_gradients": signed, "layer_integrated_gradients": signed, "feature_ablation": signed,
              "attention_pooling": attention}
    agreement = faithfulness.rank_agreement(scores)
    assert agreement["integrated_gradients vs attention_pooling (absolute values)"] == pytest.approx(1.0)
    assert agreement["integrated_gradients vs feature_ablation"] == pytest.approx(1.0)


def test_layer_entropy_is_normalised_by_log_of_the_stays_events():
    B, L = 2, 8
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[0, :3], mask[1, :8] = True, True
    A = mask.float().view(1, B, 1, 1, L).expand(1, B, 1, L, L) / mask.sum(1).float().view(1, B, 1, 1, 1)
    patterns = explanation_sums.analyze_layer_attention_patterns(A, mask)
    assert patterns.entropy_normalised.iloc[0] == pytest.approx(1.0, abs=1e-5)  # uniform, stays of 3 and 8 events
    assert patterns.entropy.iloc[0] < math.log(8) - 0.1


def test_ig_figure_title_shows_the_steps_used_and_the_stays_that_missed_the_tolerance():
    assert figures.steps_used_label({"32": 90, "64": 8, "256": 2}) == "32-256 steps (median 32)"
    summary = faithfulness.convergence_summary([0.01, 0.02, 0.2], [32, 32, 256], ex.ExplainSettings())
    assert summary["n_missed_tolerance"] == 1 and summary["n_stays"] == 3
    title = figures.convergence_title(summary)
    assert "32-256 steps" in title and "1 of 3 stays above 5%" in title
    printed = ex.format_summary({"methods": {}, "random": {}, "integrated_gradients_convergence": summary})
    assert "integrated_gradients completeness: 2 of 3 stays within 5%" in printed


def test_mean_baseline_is_built_on_the_models_device():
    """A fake device: the model lives on 'meta' while train.prepare_stays returns CPU tensors; every tensor
    the model sees must be moved to the model's device (the --baseline mean --device cuda crash)."""
    model = _tiny_transformer().to("meta")
    seen = []
    event_features = model.event_features

    def checked_event_features(*args, **kwargs):  # every tensor the model is given, recorded
        seen.extend(a.device.type for a in (*args, *kwargs.values()) if torch.is_tensor(a))
        return event_features(*args, **kwargs)
    model.event_features = checked_event_features
    lengths = [3, 5]
    stays = [train.Stay(i, i, torch.arange(n), torch.zeros(n, dtype=torch.long), torch.rand(n),
                        torch.zeros(5), 0, torch.arange(n)) for i, n in enumerate(lengths)]
    matrix = torch.randn(8, 6).half()  # on the CPU, as prepare_stays returns it
    table = pd.DataFrame({"stay_id": [0, 1]})
    split = pd.Series(["train", "train"], index=[0, 1])
    event_mean, static_mean = ex.mean_training_baselines(model, table, split, lambda rows: (stays, matrix), batch_size=1)
    assert event_mean.device.type == "meta" and static_mean.device.type == "meta"
    assert seen and all(d == "meta" for d in seen)


class SharpStepModel(torch.nn.Module):
    """The logit steps up sharply (width ~1/300 of the path) when the stay's mean text dimension 0 passes 0.47:
    the shape of IG's integrand on long stays, flat near the baseline and steep in a narrow stretch."""

    def __init__(self, sharpness=300.0, threshold=0.47):
        super().__init__()
        from test_explain import F, N_TYPES
        self.sharpness, self.threshold = sharpness, threshold
        self.input_proj = torch.nn.Linear(F, 1, bias=False)
        with torch.no_grad():
            self.input_proj.weight.zero_()
            self.input_proj.weight[0, N_TYPES] = 1.0

    def forward(self, events, mask, static, return_attention=False):
        z = (self.input_proj(events)[..., 0] * mask).sum(1) / mask.sum(1).clamp_min(1)
        return 3.0 * torch.sigmoid(self.sharpness * (z - self.threshold)) + 0.1 * static.sum(-1), {}


def test_piecewise_ig_is_complete_where_one_rule_over_the_whole_path_is_not():
    from test_explain import N_TYPES
    model = SharpStepModel()
    events, mask, static = make_batch([12, 30, 7])
    events[..., N_TYPES] = torch.tensor([1.0, 1.1, 0.9]).view(3, 1) * mask
    _, _, change, delta = attribution.integrated_gradients(model, events, mask, static, n_steps=128)
    assert (delta.abs() > 0.05 * change.abs()).any()  # one Gauss-Legendre rule of 128 steps misses the step
    ev, st, change, delta, steps = attribution.refined_integrated_gradients(model, events, mask, static, n_steps=32,
                                                                   max_n_steps=64)
    assert (delta.abs() <= 0.05 * change.abs()).all() and (steps <= 64).all()
    torch.testing.assert_close(ev.sum(1) + st.sum(1) - change, delta, atol=1e-4, rtol=0)
    reference, _, _, _ = attribution.integrated_gradients(model, events, mask, static, n_steps=1024)
    assert (ev - reference).abs().sum(1).max() < 0.05 * change.abs().min()
    lig, lig_change, lig_delta, lig_steps = attribution.refined_layer_integrated_gradients(model, events, mask, static,
                                                                                  n_steps=32, max_n_steps=64)
    assert (lig_delta.abs() <= 0.05 * lig_change.abs()).all()


def test_streaming_csv_writes_the_header_once_and_every_part(tmp_path):
    writer = ex.StreamingCsv(tmp_path / "rows.csv")
    writer.write(pd.DataFrame({"stay_id": [1, 1], "attribution": [0.5, -0.25]}))
    writer.write(pd.DataFrame({"stay_id": [2], "attribution": [1.0]}))
    writer.close()
    back = pd.read_csv(tmp_path / "rows.csv")
    assert back.stay_id.tolist() == [1, 1, 2] and back.attribution.tolist() == [0.5, -0.25, 1.0]


def test_no_forward_gets_more_rows_than_the_internal_batch_size():
    model = HandBuiltModel(scale=1.0).eval()
    events, mask, static = make_batch([6, 9, 4, 7, 5])
    rows_seen = []
    model.register_forward_pre_hook(lambda m, args: rows_seen.append(args[0].shape[0]))
    settings = ex.ExplainSettings(n_steps=32, internal_batch_size=3, perturbations_per_eval=8)
    out = attribution.explain_batch(model, events, mask, static, STATIC_GROUPS, settings)  # 5 stays x 4 pieces, 5 x 8 ablations
    assert max(rows_seen) <= 5  # 3 rows per IG pass; ablation: one group x 5 stays per forward
    unbounded = attribution.explain_batch(model, events, mask, static, STATIC_GROUPS, ex.ExplainSettings(n_steps=32,
                                                                                               internal_batch_size=512))
    for method in attribution.SIGNED_METHODS:
        torch.testing.assert_close(out["event"][method], unbounded["event"][method], atol=1e-4, rtol=1e-4)


def test_faithfulness_runs_each_distinct_subset_once_with_the_same_probabilities(monkeypatch):
    # Curves start and end at the whole stay or at no event, ERASER points fall on curve points and rankings
    # that agree give the same subsets: each distinct subset is scored once, and the whole stay not again.
    model = HandBuiltModel(scale=1.0).eval()
    events, mask, static = make_batch([6, 9, 5])
    exact = (events @ model.event_weights) * mask
    scores = {"integrated_gradients": exact, "layer_integrated_gradients": exact.clone(), "reversed": -exact}
    seen = []
    scored = faithfulness.probabilities_with_masks

    def counting(model_, events_, static_, masks, max_rows=256):
        seen.append(masks.shape[0] * masks.shape[1])
        return scored(model_, events_, static_, masks, max_rows)

    monkeypatch.setattr(faithfulness, "probabilities_with_masks", counting)
    res = faithfulness.faithfulness_for_batch(model, events, mask, static, scores, n_points=11, n_random=2,
                                    rng=np.random.default_rng(0))
    per_order = 2 * 11 + 2 * len(faithfulness.ERASER_FRACTIONS)
    assert seen[0] == 3  # the whole stays, once
    assert sum(seen[1:]) < 0.6 * 3 * 5 * per_order  # 5 orders per stay, each with per_order masks
    # the probabilities are those of the model run on each subset by itself
    with torch.no_grad():
        for b, n in enumerate([6, 9, 5]):
            rec = res["integrated_gradients"][b]
            p_full = float(torch.sigmoid(model(events[b:b + 1], mask[b:b + 1], static[b:b + 1])[0]))
            predicted_death = p_full >= 0.5
            # deletion removes first the events that support the predicted class most
            toward_prediction = exact[b, :n] if predicted_death else -exact[b, :n]
            order = torch.argsort(-toward_prediction, stable=True)
            for j, f in enumerate(np.linspace(0, 1, 11)):
                keep = torch.zeros(1, events.shape[1], dtype=torch.bool)
                keep[0, order[int(round(f * n)):]] = True
                p = float(torch.sigmoid(model(*attribution.without_absent_events(events[b:b + 1], keep), static[b:b + 1])[0]))
                assert rec["deletion_curve"][j] == pytest.approx(p if predicted_death else 1 - p, abs=1e-5)
        assert [r["deletion_auc"] for r in res["integrated_gradients"]] == \
            [r["deletion_auc"] for r in res["layer_integrated_gradients"]]


def test_doubled_ig_is_each_stays_pieces_halved_and_only_for_the_stays_asked_for():
    """with_doubled: the same path layout with every piece cut in two (twice each stay's steps). Without
    refinement that is the refined IG at twice the starting steps; on a sharp model where stays are refined, its
    per-event change from the reported IG is small; stays not asked for get 0."""
    from test_explain import N_TYPES
    model = HandBuiltModel(scale=1.0)
    events, mask, static = make_batch([5, 9, 3])
    ev, _, _, _, steps, doubled = attribution.refined_integrated_gradients(model, events, mask, static, n_steps=16,
                                                                          tolerance=0.0, with_doubled=True)
    assert (steps == 16).all()
    at_32 = attribution.refined_integrated_gradients(model, events, mask, static, n_steps=32, tolerance=0.0)[0]
    torch.testing.assert_close(doubled, at_32, rtol=1e-5, atol=1e-6)
    only = torch.tensor([False, True, False])
    *_, partial = attribution.refined_integrated_gradients(model, events, mask, static, n_steps=16, tolerance=0.0,
                                                           with_doubled=only)
    torch.testing.assert_close(partial[1], at_32[1], rtol=1e-5, atol=1e-6)
    assert (partial[[0, 2]] == 0).all()
    sharp = SharpStepModel()
    events, mask, static = make_batch([12, 30, 7])
    events[..., N_TYPES] = torch.tensor([1.0, 1.1, 0.9]).view(3, 1) * mask
    ev, _, _, _, steps, doubled = attribution.refined_integrated_gradients(sharp, events, mask, static, n_steps=32,
                                                                          max_n_steps=64, with_doubled=True)
    for b in range(3):
        n = int(mask[b].sum())
        change = faithfulness.per_event_change(ev[b, :n].numpy(), doubled[b, :n].numpy())
        largest = float(ev[b, :n].abs().max())
        assert change == pytest.approx(float((doubled[b, :n] - ev[b, :n]).abs().max()) / largest)
        assert change < 0.05
    summary = faithfulness.per_event_convergence_summary([0.01, 0.2, 0.03], tolerance=0.05)
    assert summary["largest_change_max"] == 0.2 and summary["share_within_tolerance"] == pytest.approx(2 / 3)


def test_explain_batch_runs_the_methods_asked_for_and_ig_with_attention_always():
    model = _tiny_transformer()
    events, mask, static = make_batch([5, 8, 3])
    settings = ex.ExplainSettings(n_steps=8)
    full = attribution.explain_batch(model, events, mask, static, STATIC_GROUPS, settings)
    cohort = attribution.explain_batch(model, events, mask, static, STATIC_GROUPS, settings,
                                       methods=ex.COHORT_METHODS, layer_attention=False)
    assert set(cohort["event"]) == {"integrated_gradients", "attention_pooling"} and set(cohort["static"]) == {
        "integrated_gradients"}
    assert "lig_steps" not in cohort and "layer_attention" not in cohort["attention"]
    for method in ("integrated_gradients", "attention_pooling"):  # the same numbers either way
        torch.testing.assert_close(cohort["event"][method], full["event"][method])
    torch.testing.assert_close(cohort["logits"], full["logits"])
    # the faster path still gives the pooling scores (the transformer output read from ln_f)
    torch.testing.assert_close(cohort["attention"]["pooling_scores"], full["attention"]["pooling_scores"])
    assert attribution.input_projection_is_linear(model)
    assert ex.audit_methods(model, settings, cohort=True) == ("integrated_gradients", "feature_ablation",
                                                              "attention_pooling")
    assert ex.audit_methods(model, settings, cohort=False) == attribution.METHODS
    on = ex.ExplainSettings(layer_ig="on")
    assert ex.audit_methods(model, on, cohort=True) == attribution.METHODS


def test_interval_of_the_mean_over_stays():
    from scipy.stats import t as student_t
    values = np.array([0.2, 0.4, 0.9, 0.5])
    low, high = faithfulness.mean_ci95(values)
    half = student_t.ppf(0.975, 3) * values.std(ddof=1) / 2
    assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half))
    assert faithfulness.mean_ci95(np.array([1.0])) is None
    columns = faithfulness.mean_ci95(np.stack([values, 2 * values], 1))
    assert columns[1] == pytest.approx([2 * low, 2 * high])


def test_batches_every_method_as_before_and_in_cohort_mode_audited_apart_and_of_similar_length():
    from types import SimpleNamespace
    stays = [SimpleNamespace(stay_id=i, type_ids=[0] * n) for i, n in enumerate([1, 2, 3, 10, 11, 12, 13, 40, 300, 320])]
    run = SimpleNamespace(batch_size=4)
    every = ex.plan_batches(SimpleNamespace(stays=stays, cohort=False, audited=frozenset()), run, seed=0)
    assert [[s.stay_id for s in chunk] for chunk, _, _ in every] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [(audit, n) for _, audit, n in every] == [(True, 0), (True, 1), (True, 2)]
    audited = frozenset({1, 4, 8, 9})
    cohort = ex.plan_batches(SimpleNamespace(stays=stays, cohort=True, audited=audited), run, seed=0)
    assert sorted(s.stay_id for chunk, audit, _ in cohort if audit for s in chunk) == sorted(audited)
    assert sorted(s.stay_id for chunk, audit, _ in cohort if not audit for s in chunk) == [0, 2, 3, 5, 6, 7]
    for chunk, _, _ in cohort:  # no batch runs a short stay at a much longer one's length
        lengths = [len(s.type_ids) for s in chunk]
        assert len(chunk) <= 4 and max(lengths) <= 1.25 * min(lengths) + 16
    assert sorted(n for _, audit, n in cohort if audit) == list(range(sum(audit for _, audit, _ in cohort)))
    assert cohort == ex.plan_batches(SimpleNamespace(stays=stays, cohort=True, audited=audited), run, seed=0)


def test_a_batch_of_real_length_stays_holds_a_few_of_them_and_the_samples_batches_are_as_before():
    """At most MAX_BATCH_EVENTS padded events a batch (so the per-stay progress moves on real-length stays); 16
    stays of the sample's longest length (145 events) still make one batch."""
    from types import SimpleNamespace
    run = SimpleNamespace(batch_size=16)
    short = [SimpleNamespace(stay_id=i, type_ids=[0] * 145) for i in range(32)]
    every = ex.plan_batches(SimpleNamespace(stays=short, cohort=False, audited=frozenset()), run, seed=0)
    assert [len(chunk) for chunk, _, _ in every] == [16, 16]
    long = [SimpleNamespace(stay_id=i, type_ids=[0] * n) for i, n in enumerate([300, 340, 350, 360, 400, 500,
                                                                                 700, 768, 768, 900])]
    every = ex.plan_batches(SimpleNamespace(stays=long, cohort=False, audited=frozenset()), run, seed=0)
    assert [[s.stay_id for s in chunk] for chunk, _, _ in every] == [[0, 1, 2, 3, 4], [5, 6, 7], [8, 9]]
    for chunk, _, _ in every:
        assert len(chunk) == 1 or len(chunk) * max(len(s.type_ids) for s in chunk) <= ex.MAX_BATCH_EVENTS
