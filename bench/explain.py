"""Explanation cost per stay: cohort mode and every-method mode of explain_clinicalLF on a trained model's own
test stays (default), or, with --lengths, explain_clinicalLF's way against the straightforward use of Captum on
stays cut to fixed lengths.

    python bench/explain.py --checkpoint RUN/checkpoints/best_model.pth --data cohort.parquet
                                                     # cohort mode on 40 test stays (8 of them audited), every
                                                     # method on 8: what users run, at the stays' real length
    python bench/explain.py --checkpoint ... --data ... --cohort-stays 200 --audit-stays 20 --every-method-stays 20

Cohort mode (the default run of more stays than --audit-stays): run_explainability_analysis itself, on the first
--cohort-stays test stays with --audit-stays of them audited, without figures or the HTML report, in its own
process (peak = VmHWM); its result's timing gives the seconds of the batches with IG and attention only (per
stay: `cohort_part`) and of the audited batches (every method, faithfulness curves, per-event convergence; per
audited stay: `audit_part`). The cascading randomisation check is timed apart, on one stay (`cascade_per_stay`).
`seconds_per_stay_cohort` is what a cohort-mode run of a full-size test split costs per stay with the default
audit: cohort_part + (200 x audit_part + 5 x cascade_per_stay) / --split-size (default 7,517: the test split of a
full-size MIMIC-IV run), loading and figures not counted. `share_within_tolerance` is the share of the cohort
run's stays whose IG is complete within --ig-tolerance. Every-method mode: the same on the first
--every-method-stays stays with --every-method (`seconds_per_stay_every_method` with the default 5 cascade stays
amortised over 100, the default run). The last line holds name=value pairs, `seconds_per_stay_cohort=` and
`share_within_tolerance=` last; CPU seconds beside each (on a shared machine the fairer figure).

With --lengths (the earlier comparison):

    python bench/explain.py --lengths 64 128 256 512                 # random weights, 4 stays per length
    python bench/explain.py --checkpoint ... --data ... --lengths 256 --stays 8 --straightforward-stays 2
                                                     # a trained model on its own test stays (their most recent
                                                     # 256 events)

What is timed per stay, both ways, on the same model and the same stays:
  every method        IG and LayerIG (to within --ig-tolerance of completeness, at most --max-n-steps steps),
                      FeatureAblation of every event and static column, the attention outputs;
  every measure       deletion/insertion curves and ERASER masks for the four methods and the random orders;
  the sanity check    the cascading randomisation, once per cascade step on `randomisation_stays` of 100 stays
                      (amortised per stay: one stay's cascade cost x randomisation_stays / 100).
The project's way: explain_batch + faithfulness_for_batch on batches of --batch-size stays (piece-wise IG,
ablation and curve forwards batched, each curve forward cut to the events it keeps, rows bounded by the free
memory). The straightforward way: one stay per Captum call: IntegratedGradients and LayerIntegratedGradients
with one Gauss-Legendre rule over the whole path, doubling its steps until complete within the same tolerance
(the project's earlier method), FeatureAblation with perturbations_per_eval=1, one forward per curve or ERASER
point at the stay's full length.

The model is the one `python train.py` builds by default (train.ModelConfig's defaults: d_model 128, 2 layers,
8 heads; a learned 32-d embedding for each of N_ITEMS frequent items and the value channel) with 768-d text vectors; its weights are random, scaled so that its logits move by a few units over a stay as a
trained model's do (a random model's tiny logit changes make IG converge at once, which would flatter both
ways). Each (length, way) runs in its own process, so peak memory is its own. The last line holds name=value
pairs: seconds_per_stay_<L>, cpu_seconds_per_stay_<L> (process CPU time: on a shared machine the fairer
figure; on an idle 2-core machine the wall time is about half of it), straightforward_seconds_per_stay_<L>,
speedup_<L> (wall), cpu_speedup_<L>, peak_MiB_<L>.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root first on sys.path)

N_STATIC = 40
N_ITEMS = 400  # frequent items with their own embedding (a realistic cohort's training split has a few hundred)
STATIC_GROUPS = {f"static_{i}": [2 * i, 2 * i + 1] for i in range(N_STATIC // 2)}


def build(length, n_stays, text_dim, seed):
    """A default-sized MortalityTransformer and n_stays stays of `length` events (features as the model builds
    them: type one-hot, standardised text vector, standardised log-hours, value, item embedding)."""
    import torch
    import train
    torch.manual_seed(seed)
    defaults = train.build_arg_parser().parse_args([])
    config = train.ModelConfig(text_dim=text_dim, n_static=N_STATIC, n_items=N_ITEMS, item_dim=defaults.item_dim,
                               value_channel=defaults.value_channel == "on")
    model = train.MortalityTransformer(config).eval()
    with torch.no_grad():  # sharper than the initialisation, as after training (see the module docstring)
        for layer in model.layers:
            layer.attn.qkv.weight.mul_(3.0)
        model.pool.key.weight.mul_(3.0)
        for module in model.classifier:
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(3.0)
    g = torch.Generator().manual_seed(seed + 1)
    text = torch.randn(n_stays, length, text_dim, generator=g)
    types = torch.randint(0, model.config.n_event_types, (n_stays, length), generator=g)
    times = torch.sort(torch.rand(n_stays, length, generator=g) * 4, dim=1, descending=True).values
    items = torch.randint(0, N_ITEMS + 1, (n_stays, length), generator=g)
    values = torch.randn(n_stays, length, generator=g)
    with torch.no_grad():
        events = model.event_features(text, types, times, items, values)
    mask = torch.ones(n_stays, length, dtype=torch.bool)
    static = torch.zeros(n_stays, N_STATIC)
    static[torch.arange(n_stays).unsqueeze(1), 2 * torch.arange(N_STATIC // 2) + torch.randint(0, 2, (n_stays, N_STATIC // 2), generator=g)] = 1.0
    return model, events, mask, static


def trained_stays(checkpoint, data, cache_dir, length, n_stays):
    """A trained checkpoint and n_stays of its test stays with at least `length` events, each cut to its most
    recent `length` events (as --max-events does): the model and the stays users explain."""
    import torch
    import event_table
    import explain_clinicalLF as ex
    import train
    model, preprocessor, ckpt, table = ex.load_for_explanation(checkpoint, data)
    split_of_stay = event_table.split_stays_by_patient(table, seed=ckpt["args"].get("seed", 0))
    n_events = table[table["event_type"].notna()].groupby("stay_id").size()
    long_enough = sorted(s for s, n in n_events.items() if n >= length and split_of_stay.get(s) == "test")[:n_stays]
    if len(long_enough) < n_stays:
        raise SystemExit(f"{data}: only {len(long_enough)} test stays have {length} events or more")
    rows = table[table["stay_id"].isin(long_enough)].reset_index(drop=True)
    stays, embedding_matrix = train.prepare_stays_of_checkpoint(rows, ckpt, cache_dir or train.cache_dir_of_checkpoint(ckpt["args"]),
                                                                "cpu", max_events=length)
    with torch.no_grad():
        events, mask, static = train.batch_inputs(model, train.collate_stays(stays), embedding_matrix)
    return model, events, mask, static, preprocessor.static_feature_groups


def project_way(model, events, mask, static, static_groups, args):
    import numpy as np
    import attribution
    import explain_clinicalLF as ex
    import faithfulness
    settings = ex.ExplainSettings(n_steps=args.n_steps, ig_tolerance=args.ig_tolerance, max_n_steps=args.max_n_steps)
    rng = np.random.default_rng(0)
    steps, deltas = [], []
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(0, len(events), args.batch_size):
        sl = slice(i, i + args.batch_size)
        out = attribution.explain_batch(model, events[sl], mask[sl], static[sl], static_groups, settings)
        faithfulness.faithfulness_for_batch(model, events[sl], mask[sl], static[sl],
                                            {m: out["event"][m] for m in attribution.METHODS},
                                            settings.curve_points, settings.random_orders, rng)
        steps += out["ig_steps"].tolist()
        deltas += (out["ig_delta"].abs() / out["ig_change"].abs()).tolist()
    explain_seconds, explain_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # the cascade: one stay explained by every randomised model (the IG start steps, no re-integration)
    import dataclasses
    cascade = attribution.cascading_randomisation(model, seed=1)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _, step_model in cascade:
        attribution.explain_batch(step_model, events[:1], mask[:1], static[:1], static_groups,
                                  dataclasses.replace(settings, ig_tolerance=0.0))
    cascade_seconds, cascade_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return dict(explain_seconds_per_stay=explain_seconds / len(events), cascade_seconds_per_stay=cascade_seconds,
                explain_cpu_per_stay=explain_cpu / len(events), cascade_cpu_per_stay=cascade_cpu,
                ig_steps=steps, ig_relative_delta=deltas)


def whole_path_ig(explainer, forward, x, s, m, with_static, n_steps, tolerance, max_n_steps):
    """(Layer)IG with one Gauss-Legendre rule over the whole path from zeros, doubling the steps until complete
    within `tolerance` (or at max_n_steps). Returns (event attributions [L], steps)."""
    import torch
    x0, s0 = torch.zeros_like(x), (torch.zeros_like(s) if with_static else s)
    with torch.no_grad():
        change = float(forward(x, s, m) - forward(x0, s0, m))
    n = n_steps
    while True:
        attr, delta = explainer.attribute((x, s), baselines=(x0, s0), additional_forward_args=(m,), n_steps=n,
                                          internal_batch_size=n, return_convergence_delta=True)
        if abs(float(delta)) <= tolerance * abs(change) + 1e-4 or n * 2 > max_n_steps:
            event_attr = attr[0] if isinstance(attr, tuple) else attr
            return event_attr[0].sum(-1).detach(), n
        n *= 2


def explain_one_stay(model, x, s, m, static_groups, n_steps, tolerance, max_n_steps):
    """Every method on one stay, one Captum call each; FeatureAblation one ablation per forward."""
    import torch
    from captum.attr import FeatureAblation, IntegratedGradients, LayerIntegratedGradients
    import attribution
    forward = attribution.LogitForward(model)
    L, F = x.shape[1:]
    with torch.no_grad():
        model(x, m, s, return_attention=True)
    ig, n_ig = whole_path_ig(IntegratedGradients(forward), forward, x, s, m, True, n_steps, tolerance, max_n_steps)
    lig, _ = whole_path_ig(LayerIntegratedGradients(forward, attribution.find_input_projection(model)), forward, x, s, m, False,
                           n_steps, tolerance, max_n_steps)
    event_ids = torch.arange(L).view(1, L, 1).expand(1, L, F)
    static_ids = attribution.static_group_mask(s.shape[-1], static_groups, first_id=L)
    with torch.no_grad():
        fa, _ = FeatureAblation(attribution.EventRemovalForward(model)).attribute(
            (x, s), baselines=(0.0, 0.0), additional_forward_args=(m,), feature_mask=(event_ids, static_ids),
            perturbations_per_eval=1)
    return dict(ig=ig, lig=lig, fa=fa[0, :, 0]), n_ig


def straightforward_way(model, events, mask, static, static_groups, args):
    """One stay per Captum call; one ablation per forward; one forward per curve point at the stay's length."""
    import numpy as np
    import torch
    import attribution
    import faithfulness
    forward = attribution.LogitForward(model)
    rng = np.random.default_rng(0)
    L = events.shape[1]
    steps = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for b in range(len(events)):
        x, s, m = events[b:b + 1], static[b:b + 1], mask[b:b + 1]
        scores, n_ig = explain_one_stay(model, x, s, m, static_groups, args.n_steps, args.ig_tolerance,
                                        args.max_n_steps)
        steps.append(n_ig)
        # the measures: 4 methods + 3 random orders, 11 + 11 curve points and 4 + 4 ERASER sizes, one forward each
        orders = [torch.argsort(-v) for v in scores.values()] + [torch.argsort(-scores["ig"].abs())] + \
                 [torch.as_tensor(rng.permutation(L)) for _ in range(3)]
        with torch.no_grad():
            for order in orders:
                d, i = faithfulness.curve_masks(order, L, L, 11)
                w, o = faithfulness.eraser_masks(order, L, L)
                for keep in torch.cat([d, i, w, o]):
                    kept_events, kept = attribution.without_absent_events(x, keep.view(1, L))
                    forward(kept_events, s, kept)
    explain_seconds, explain_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    start, cpu_start = time.perf_counter(), time.process_time()
    for _, step_model in attribution.cascading_randomisation(model, seed=1):
        explain_one_stay(step_model, events[:1], static[:1], mask[:1], static_groups, args.n_steps, float("inf"),
                         args.n_steps)
    cascade_seconds, cascade_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return dict(explain_seconds_per_stay=explain_seconds / len(events), cascade_seconds_per_stay=cascade_seconds,
                explain_cpu_per_stay=explain_cpu / len(events), cascade_cpu_per_stay=cascade_cpu, ig_steps=steps)


def worker(args):
    import torch
    torch.set_num_threads(args.threads)
    n = args.stays if args.way == "project" else args.straightforward_stays
    if args.checkpoint:
        model, events, mask, static, static_groups = trained_stays(args.checkpoint, args.data, args.cache_dir,
                                                                   args.worker_length, n)
    else:
        (model, events, mask, static), static_groups = build(args.worker_length, n, args.text_dim, args.seed), STATIC_GROUPS
    way = project_way if args.way == "project" else straightforward_way
    result = way(model, events, mask, static, static_groups, args)
    share = args.randomisation_stays / 100
    result["seconds_per_stay"] = result["explain_seconds_per_stay"] + result["cascade_seconds_per_stay"] * share
    result["cpu_seconds_per_stay"] = result["explain_cpu_per_stay"] + result["cascade_cpu_per_stay"] * share
    result["peak_MiB"] = _common.peak_rss_mib()
    print(json.dumps(result))


# ----------------------------------------------------------------------------- the two modes on real stays

def mode_worker(args):
    """One mode in this process: run_explainability_analysis on the checkpoint's first test stays (cohort, every
    method), or the cascade of one stay; prints its timing as JSON."""
    import tempfile
    import torch
    torch.set_num_threads(args.threads)
    import explain_clinicalLF as ex
    options = dict(max_stays=args.cohort_stays if args.way == "cohort" else args.every_method_stays,
                   audit_stays=args.audit_stays, every_method=args.way == "every_method", randomisation_stays=0,
                   ig_tolerance=args.ig_tolerance, max_n_steps=args.max_n_steps, batch_size=args.batch_size,
                   seed=args.seed, show_progress=False, make_figures=False, report=False)
    if args.n_steps:
        options["n_steps"] = args.n_steps
    if args.cache_dir:
        options["cache_dir"] = args.cache_dir
    if args.way == "cascade":
        return print(json.dumps(cascade_seconds(args, options)))
    with tempfile.TemporaryDirectory(prefix="bench_explain_") as save_dir:
        result = ex.run_explainability_analysis(args.checkpoint, args.data, save_dir, return_tables=False, **options)
    f = result["faithfulness"]
    print(json.dumps(dict(timing=result["timing"], completeness=f["integrated_gradients_convergence"],
                          per_event=f["integrated_gradients_per_event_convergence"], audit=f["audit"]["mode"],
                          n_events=f["data"]["n_events"], peak_MiB=_common.peak_rss_mib())))


def cascade_seconds(args, options):
    """Wall and CPU seconds of the randomisation check for one audited stay (the median-length one of the first
    --every-method-stays test stays): the methods of the audit, by every randomised model, IG at its starting steps,
    as explain_in_batches runs it."""
    import dataclasses
    import torch
    import attribution
    import explain_clinicalLF as ex
    import train
    run, settings = ex.explain_options(dict(options, max_stays=args.every_method_stays))
    data = ex.prepare_explanation(args.checkpoint, args.data, run, settings)
    settings = ex.resolved_settings(settings, cohort=True)
    stay = data.stays[len(data.stays) // 2]
    with torch.no_grad():
        events, mask, static = train.batch_inputs(data.model, train.collate_stays([stay]), data.embedding_matrix)
    methods = ex.audit_methods(data.model, settings, cohort=True)
    models = attribution.cascading_randomisation(data.model, seed=settings.seed + 1)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _, step_model in models:
        attribution.explain_batch(step_model, events, mask, static, data.static_groups,
                                  dataclasses.replace(settings, ig_tolerance=0.0), methods=methods)
    return dict(seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu_start,
                n_events=len(stay.type_ids), n_models=len(models))


def measure_modes(args):
    """Cohort mode and every-method mode on the checkpoint's test stays (see the module's docstring)."""
    import explain_clinicalLF as ex
    if not args.checkpoint:
        args.checkpoint, args.data = ex.DEFAULT_CHECKPOINT, args.data or ex.DEFAULT_DATA
    if not args.data:
        raise SystemExit("--data: the event table the checkpoint was trained on")
    print(_common.machine_description(), flush=True)
    common = ["--checkpoint", args.checkpoint, "--data", args.data, "--threads", str(args.threads),
              "--seed", str(args.seed), "--batch-size", str(args.batch_size), "--ig-tolerance", str(args.ig_tolerance),
              "--max-n-steps", str(args.max_n_steps), "--cohort-stays", str(args.cohort_stays),
              "--audit-stays", str(args.audit_stays), "--every-method-stays", str(args.every_method_stays)]
    common += (["--cache-dir", args.cache_dir] if args.cache_dir else []) + \
        (["--n-steps", str(args.n_steps)] if args.n_steps else [])
    load_start = os.getloadavg()[0]
    runs = {way: _common.run_json_subprocess([__file__, "--way", way, *common])
            for way in ("cohort", "every_method", "cascade")}
    cohort, every, cascade = runs["cohort"], runs["every_method"], runs["cascade"]
    if cohort["audit"] != "cohort":
        raise SystemExit(f"--cohort-stays {args.cohort_stays} must be more than --audit-stays {args.audit_stays}")
    t = cohort["timing"]
    rows, headline = [], {}
    for clock, suffix in (("seconds", ""), ("cpu_seconds", "_cpu")):
        part = t[f"ig_and_attention_{clock}"] / max(t["ig_and_attention_stays"], 1)
        audit = t[f"every_method_{clock}"] / max(t["every_method_stays"], 1)
        per_stay = part + (200 * audit + 5 * cascade[clock]) / args.split_size
        e = every["timing"]
        every_per_stay = e[f"every_method_{clock}"] / max(e["every_method_stays"], 1) + cascade[clock] * 5 / 100
        rows.append(dict(clock=clock, cohort_part=part, audit_part=audit, cascade_per_stay=cascade[clock],
                         cohort_per_stay_projected=per_stay, every_method_per_stay=every_per_stay))
        headline[f"seconds_per_stay_every_method{suffix}"] = every_per_stay
        headline[f"cohort_part{suffix}"] = part
        headline[f"audit_part{suffix}"] = audit
        headline[f"seconds_per_stay_cohort{suffix}"] = per_stay
    completeness, per_event = cohort["completeness"], cohort["per_event"]
    print(json.dumps(dict(cohort_run=cohort, every_method_run=every, cascade=cascade)), flush=True)
    _common.print_table(rows, f"seconds per stay; cohort mode projected to a test split of {args.split_size:,} stays "
                              "with 200 audited and 5 cascade stays")
    print(f"\ncohort run: {t['ig_and_attention_stays'] + t['every_method_stays']} stays, {cohort['n_events']:,} events, "
          f"{t['every_method_stays']} audited; IG steps {completeness['steps_used']}; completeness median "
          f"{completeness['relative_delta_median']:.3g}, max {completeness['relative_delta_max']:.3g}; per-event change "
          f"n vs 2n on the audited stays: median {per_event['largest_change_median'] or 0:.3g}, max "
          f"{per_event['largest_change_max'] or 0:.3g}; peak {cohort['peak_MiB']:.0f} MiB (every method: "
          f"{every['peak_MiB']:.0f} MiB)")
    headline.update(per_event_change_max=per_event["largest_change_max"] or 0.0,
                    load_average_start=round(load_start, 1), load_average_end=round(os.getloadavg()[0], 1),
                    hours_for_split=headline["seconds_per_stay_cohort"] * args.split_size / 3600)
    seconds = headline.pop("seconds_per_stay_cohort")
    _common.print_headline(**headline, seconds_per_stay_cohort=seconds,
                           share_within_tolerance=completeness["share_within_tolerance"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="compare with the straightforward way on stays cut to these lengths (e.g. 64 128 256 512) "
                        "instead of measuring the two modes")
    p.add_argument("--cohort-stays", type=int, default=40, help="test stays of the cohort-mode run")
    p.add_argument("--audit-stays", type=int, default=8, help="of them audited (every method and measure)")
    p.add_argument("--every-method-stays", type=int, default=8, help="test stays of the every-method run")
    p.add_argument("--split-size", type=int, default=7517,
                   help="stays of the test split the cohort-mode cost is projected to (7,517: a full-size run's)")
    p.add_argument("--n-steps", type=int, default=None,
                   help="IG's starting steps (default: explain_clinicalLF's, per mode; 32 with --lengths)")
    p.add_argument("--stays", type=int, default=4, help="stays per length, the project's way")
    p.add_argument("--straightforward-stays", type=int, default=2, help="stays per length, the straightforward way")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--text-dim", type=int, default=768)
    p.add_argument("--ig-tolerance", type=float, default=0.05)
    p.add_argument("--max-n-steps", type=int, default=256)
    p.add_argument("--randomisation-stays", type=int, default=5, help="explain_clinicalLF's default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-straightforward", action="store_true")
    p.add_argument("--checkpoint", help="a trained model (train.py's best_model.pth): explain its test stays of --data "
                                        "instead of the random-weight model (--text-dim is then the encoder's)")
    p.add_argument("--data", help="the event table the checkpoint was trained on (with --checkpoint)")
    p.add_argument("--cache-dir", help="its embedding cache (with --checkpoint; default: the one it was trained with)")
    p.add_argument("--way", choices=("project", "straightforward", "cohort", "every_method", "cascade"),
                   help=argparse.SUPPRESS)
    p.add_argument("--worker-length", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.way in ("cohort", "every_method", "cascade"):
        return mode_worker(args)
    if args.way is None and args.lengths is None:
        return measure_modes(args)
    args.n_steps = args.n_steps or 32  # the comparison's steps
    if args.way:
        return worker(args)
    print(_common.machine_description(), flush=True)
    rows, headline = [], {}
    common = ["--text-dim", str(args.text_dim), "--n-steps", str(args.n_steps), "--ig-tolerance", str(args.ig_tolerance),
              "--max-n-steps", str(args.max_n_steps), "--randomisation-stays", str(args.randomisation_stays),
              "--threads", str(args.threads), "--seed", str(args.seed), "--batch-size", str(args.batch_size),
              "--stays", str(args.stays), "--straightforward-stays", str(args.straightforward_stays)]
    if args.checkpoint:
        common += ["--checkpoint", args.checkpoint, "--data", args.data] + (["--cache-dir", args.cache_dir] if args.cache_dir else [])
    for length in args.lengths:
        load = os.getloadavg()[0]
        ours = _common.run_json_subprocess([__file__, "--way", "project", "--worker-length", str(length), *common])
        theirs = None
        if not args.skip_straightforward:
            theirs = _common.run_json_subprocess([__file__, "--way", "straightforward", "--worker-length", str(length),
                                                  *common])
        import numpy as np
        row = dict(events=length, stays=args.stays, seconds_per_stay=ours["seconds_per_stay"],
                   cpu_s_per_stay=ours["cpu_seconds_per_stay"],
                   cascade_s_per_stay=ours["cascade_seconds_per_stay"], peak_MiB=ours["peak_MiB"],
                   ig_steps_median=float(np.median(ours["ig_steps"])), ig_steps_max=int(max(ours["ig_steps"])),
                   ig_within_tol=float(np.mean(np.asarray(ours["ig_relative_delta"]) <= args.ig_tolerance)),
                   load_avg=round(load, 1))
        headline[f"seconds_per_stay_{length}"] = ours["seconds_per_stay"]
        headline[f"cpu_seconds_per_stay_{length}"] = ours["cpu_seconds_per_stay"]
        headline[f"peak_MiB_{length}"] = ours["peak_MiB"]
        if theirs is not None:
            row.update(straightforward_stays=args.straightforward_stays,
                       straightforward_s_per_stay=theirs["seconds_per_stay"],
                       straightforward_cpu_s_per_stay=theirs["cpu_seconds_per_stay"],
                       straightforward_ig_steps_median=float(np.median(theirs["ig_steps"])),
                       straightforward_peak_MiB=theirs["peak_MiB"],
                       speedup=theirs["seconds_per_stay"] / ours["seconds_per_stay"],
                       cpu_speedup=theirs["cpu_seconds_per_stay"] / ours["cpu_seconds_per_stay"])
            headline[f"straightforward_seconds_per_stay_{length}"] = theirs["seconds_per_stay"]
            headline[f"speedup_{length}"] = row["speedup"]
            headline[f"cpu_speedup_{length}"] = row["cpu_speedup"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    _common.print_table(rows, "explanation cost per stay (every method and measure; cascade amortised)")
    if 256 in args.lengths:
        headline["minutes_for_100_stays_256"] = headline["seconds_per_stay_256"] * 100 / 60
    headline["load_average_end"] = round(os.getloadavg()[0], 1)
    _common.print_headline(**headline)


if __name__ == "__main__":
    main()
