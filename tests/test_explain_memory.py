"""What an explanation run keeps (issue 13, "Scale to real stays"): a few bytes per event, running sums that
give what the whole table gives, a bounded sample."""
import gc
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import attribution
import explain_clinicalLF as ex
import explanation_sums
import faithfulness
import event_table

STATIC_NAMES = ["gender", "race", "patient_age"]
TEXTS = pd.Index([f"Lab: item {i} {i * 0.37:.3g} mg/dL" for i in range(500)])  # the table's distinct texts


def fake_batch(first_stay_id, rng, n_stays=16, n_events=60, pool_heads=4, layers=2, heads=2):
    """One batch as run_explainability_analysis hands it to Collected.add: the stays' event rows (categorical
    texts and types, as event_table.read_event_table gives them), the methods' outputs, the faithfulness records."""
    L = n_events
    mask = torch.ones(n_stays, L, dtype=torch.bool)
    stay_ids = list(range(first_stay_id, first_stay_id + n_stays))
    meta = [pd.DataFrame({
        "event_index": np.arange(L), "event_time": pd.Timestamp("2150-01-01") + pd.to_timedelta(np.arange(L), "min"),
        "event_type": pd.Categorical(rng.choice(event_table.EVENT_TYPES, L), categories=event_table.EVENT_TYPES),
        "event_text": pd.Categorical.from_codes(rng.integers(0, len(TEXTS), L), categories=TEXTS),
        "relative_time_to_final_event": np.sort(rng.uniform(0, 48 * 60, L))[::-1],
        "planted_risk": rng.integers(0, 2, L)}) for _ in stay_ids]
    out = dict(event={m: torch.randn(n_stays, L) for m in attribution.METHODS},
               static={m: torch.randn(n_stays, len(STATIC_NAMES)) for m in ("integrated_gradients", "feature_ablation")},
               logits=torch.randn(n_stays), ig_change=torch.ones(n_stays), ig_delta=torch.full((n_stays,), 0.01),
               ig_steps=torch.full((n_stays,), 32), lig_change=torch.ones(n_stays), lig_delta=torch.zeros(n_stays),
               lig_steps=torch.full((n_stays,), 32),
               attention=dict(layer_attention=torch.softmax(torch.randn(layers, n_stays, heads, L, L), -1),
                              pooling_attention=torch.softmax(torch.randn(n_stays, pool_heads, 1, L), -1),
                              pooling_scores=torch.randn(n_stays, pool_heads, L)))
    event_rows, static_rows = ex.attribution_rows(stay_ids, meta, out["event"], out["static"], STATIC_NAMES, mask)

    def record(b):
        return dict(deletion_auc=0.5, insertion_auc=0.5, comprehensiveness=np.zeros(4, np.float32),
                    sufficiency=np.zeros(4, np.float32), deletion_curve=np.zeros(11, np.float32),
                    insertion_curve=np.zeros(11, np.float32), stay_position=b, predicted_death=bool(b % 2))
    faith = {m: [record(b) for b in range(n_stays)] for m in attribution.METHODS}
    faith["random"] = [dict(record(b), order_scores=[np.arange(L, 0, -1, dtype=np.float64)] * 3)
                       for b in range(n_stays)]
    chunk = [SimpleNamespace(stay_id=s, label=s % 2) for s in stay_ids]
    return chunk, meta, mask, out, event_rows, static_rows, faith


@pytest.mark.slow
def test_a_run_keeps_a_few_bytes_per_event():
    rng = np.random.default_rng(0)
    collected = explanation_sums.Collected(STATIC_NAMES, sample_size=1000)
    n_events = 20 * 16 * 200
    tracemalloc.start()
    try:
        for i in range(4):  # what is made once (the text sums, the sample) is made here
            collected.add(*fake_batch(16 * i, rng, n_events=200, layers=1), randomised=None, has_planted=True)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(4, 24):  # each batch made here and dropped, as in a run
            collected.add(*fake_batch(16 * i, rng, n_events=200, layers=1), randomised=None, has_planted=True)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # per event: 4 float32 scores, an int8 planted flag, 3 one-byte ranks (21 bytes); per stay ~2 KB of arrays'
    # headers and numbers (measured: 32 bytes per event at 200 events per stay, 31 at 360)
    assert grown / n_events < 48, f"{grown / n_events:.0f} bytes per event"
    assert len(collected.event_sample()) == 1000
    assert collected.sample_note() == f" (a random 1,000 of {24 * 16 * 200:,} events)"
    assert all(a.dtype == np.float32 for a in collected.scores["integrated_gradients"])
    assert collected.random_order_scores[0][0].dtype == np.uint8  # ranks 1..200


def test_no_frame_grows_with_the_stays_but_the_stays_figures_draw_are_kept_whole():
    def frames(collected):
        """Every DataFrame Collected holds (directly, in a list or dict, in its EventSums): name -> rows."""
        found = {}
        for owner, attributes in (("", vars(collected)), ("events.", vars(collected.events))):
            for name, value in attributes.items():
                values = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) \
                    else [("", value)]
                for key, v in values:
                    if isinstance(v, pd.DataFrame):
                        found[f"{owner}{name}[{key}]"] = len(v)
        return found

    rng = np.random.default_rng(1)
    collected = explanation_sums.Collected(STATIC_NAMES, detail_stay_ids=[17])
    # a first batch large enough to hold every (event type, time window) pair, whose sums then only change value
    collected.add(*fake_batch(0, rng, n_stays=64), randomised=None, has_planted=False)
    after_one = frames(collected)
    for i in range(3):
        collected.add(*fake_batch(64 + 16 * i, rng), randomised=None, has_planted=False)
    assert frames(collected) == after_one  # sums per (feature, method), (layer, head), (type, window); top rows
    assert set(collected.details) == {17} and collected.example is not None
    assert len(collected.details[17]["meta"]) == 60 and set(collected.details[17]["attributions"]) == set(attribution.METHODS)
    assert collected.planted == [] and collected.random_order_scores == []  # nothing planted: not kept
    assert len(collected.predictions) == 112 and len(collected.scores["feature_ablation"]) == 112  # 64 + 3 x 16


def test_the_example_stay_is_the_highest_risk_among_stays_with_three_events():
    rng = np.random.default_rng(2)
    collected = explanation_sums.Collected(STATIC_NAMES)
    chunk, meta, mask, out, event_rows, static_rows, faith = fake_batch(0, rng, n_stays=4, n_events=5)
    meta[1], mask[1, 2:] = meta[1].iloc[:2], False  # stay 1: two events and the highest risk
    out["logits"] = torch.tensor([0.5, 9.0, 2.0, 2.0])
    event_rows, static_rows = ex.attribution_rows([0, 1, 2, 3], meta, out["event"], out["static"], STATIC_NAMES, mask)
    collected.add(chunk, meta, mask, out, event_rows, static_rows, faith, None, False)
    assert collected.example["stay_id"] == 2  # the first of the two at 2.0; stay 1 has too few events


def test_window_sums_added_in_parts_give_analyze_critical_time_periods():
    hours = np.array([0.5, 0.2, 3.0, 30.0, 100.0])
    weights = np.array([1.0, -3.0, 2.0, 4.0, 0.0])
    whole = explanation_sums.analyze_critical_time_periods(weights[None], hours[None], np.ones((1, 5), bool))
    parts = explanation_sums.WindowSums()
    parts.add(np.abs(weights[:2]), hours[:2])
    parts.add(np.abs(weights[2:]), hours[2:])
    pd.testing.assert_frame_equal(parts.table(), whole)
    table = whole.set_index("window")
    assert table.loc["[0.0, 1.0)", "n_events"] == 2 and table.loc["[0.0, 1.0)", "mean_weight"] == 2.0
    assert table.loc["[0.0, 1.0)", "share_of_weight"] == pytest.approx(4 / 10)
    assert table.loc["[48.0, inf)", "mean_weight"] == 0.0 and table.loc["[1.0, 2.0)", "n_events"] == 0
    assert np.isnan(table.loc["[1.0, 2.0)", "mean_weight"])  # no event: no mean
    assert list(table.index) == list(pd.cut(hours, bins=list(explanation_sums.HOUR_WINDOW_EDGES), right=False).categories.astype(str))


def test_event_sample_holds_everything_up_to_its_size_then_a_uniform_sample_the_same_for_a_seed():
    def sampled(size, seed=0):
        sample = explanation_sums.EventSample(size, seed)
        for start in range(0, 10_000, 500):
            sample.add(pd.DataFrame({"value": np.arange(start, start + 500)}))
        return sample.frame()["value"].to_numpy()

    everything = sampled(20_000)
    np.testing.assert_array_equal(everything, np.arange(10_000))  # every row, in the order added
    some = sampled(1000)
    assert len(some) == 1000 and len(np.unique(some)) == 1000 and (np.diff(some) > 0).all()
    np.testing.assert_array_equal(some, sampled(1000))  # the same seed, the same sample
    assert not np.array_equal(some, sampled(1000, seed=1))
    # uniform: each tenth of the rows holds about a tenth of the sample
    counts = np.bincount(some // 1000, minlength=10)
    assert counts.min() > 60 and counts.max() < 140, counts


def test_records_stacked_into_arrays_summarise_as_the_list_of_records():
    rng = np.random.default_rng(3)
    records = [dict(deletion_auc=float(rng.random()), insertion_auc=float(rng.random()),
                    comprehensiveness=rng.random(4).astype(np.float32), sufficiency=rng.random(4).astype(np.float32),
                    deletion_curve=rng.random(11).astype(np.float32), insertion_curve=rng.random(11).astype(np.float32),
                    predicted_death=bool(i % 3), stay_position=i) for i in range(10)]
    stacked = faithfulness.concatenate_records([faithfulness.stack_records(records[:4]), faithfulness.stack_records(records[4:])])
    assert faithfulness.summarise_faithfulness(stacked) == faithfulness.summarise_faithfulness(records)
    by_class = faithfulness.summarise_faithfulness(records)["sufficiency_by_predicted_class"]
    assert by_class["n_death"] == 6 and by_class["n_survival"] == 4
