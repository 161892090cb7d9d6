"""`gptkit scale`: the fits recover known laws, the planner's FLOPs are `gptkit info`'s, a killed ladder resumes
with only the missing runs, forecast.json's keys, bits per byte against a direct count, and the bad inputs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from gptkit.cli import main
from gptkit.data import prepare
from gptkit.options.scale import ScaleOptions
from gptkit.scaling.fit import compute_envelope, fit_envelope, fit_law
from gptkit.scaling.plan import (
    PlanSpec,
    ScaleError,
    Shape,
    batch_rule,
    check_data,
    estimate,
    isoflop_ladder,
    lr_rule,
    make_point,
    model_config,
    plan_ladder,
    ratio_ladder,
)
from gptkit.scaling.study import run_study, usable


# ------------------------------------------------------------------------------------------- the laws
def test_size_data_fit_recovers_chinchillas_law() -> None:
    """Losses from L(N, D) = E + A/N^α + B/D^β (Chinchilla's fitted values) with 0.2% noise, on a 5 × 5 grid of
    sizes and token counts: approach 3 gets the parameters back, and their bootstrap intervals hold the truth."""
    true = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e5, 1e8, 5), np.geomspace(1e6, 1e10, 5)))
    loss = true["E"] + true["A"] / n ** true["alpha"] + true["B"] / d ** true["beta"]
    loss *= np.exp(np.random.default_rng(0).normal(0, 0.002, len(loss)))
    law = fit_law("size_data", [n, d], loss, bootstrap=20, seed=1)
    for k in ("alpha", "beta"):
        assert law.params[k] == pytest.approx(true[k], abs=0.01)
    assert law.params["E"] == pytest.approx(true["E"], rel=0.03)
    assert law.params["A"] == pytest.approx(true["A"], rel=0.15)
    assert law.params["B"] == pytest.approx(true["B"], rel=0.15)
    intervals = law.to_dict()["intervals"]
    assert intervals["alpha"][0] < law.params["alpha"] < intervals["alpha"][1]
    # the law's prediction far off the grid (10x the largest N and D) is within 1% of the truth
    n_far, d_far = 1e9, 1e11
    truth = true["E"] + true["A"] / n_far ** 0.34 + true["B"] / d_far ** 0.28
    assert law.predict(n_far, d_far) == pytest.approx(truth, rel=0.01)


def test_compute_fit_recovers_the_law_and_forecasts_10x() -> None:
    """L(C) = L∞ + (C₀/C)^α from 8 noisy points over 4 decades: the parameters back, and the forecast at 10× the
    largest compute within 1% of the true law, its interval around the prediction."""
    l_inf, c0, alpha = 1.5, 3e11, 0.1
    c = np.geomspace(1e12, 1e16, 8)
    loss = (l_inf + (c0 / c) ** alpha) * np.exp(np.random.default_rng(2).normal(0, 0.002, len(c)))
    law = fit_law("compute", [c], loss, bootstrap=30, seed=3)
    assert law.params["alpha"] == pytest.approx(alpha, rel=0.15)
    assert law.params["L_inf"] == pytest.approx(l_inf, rel=0.05)
    pred, (lo, hi) = law.predict(1e17), law.interval(1e17)
    assert pred == pytest.approx(l_inf + (c0 / 1e17) ** alpha, rel=0.01)
    assert lo <= pred <= hi
    exact = fit_law("compute", [c[:3]], loss[:3], bootstrap=30)  # 3 runs, 3 parameters: no spread to resample
    assert exact.interval(1e17) is None and exact.predict(c[1]) == pytest.approx(loss[1], rel=1e-3)


def test_envelope_bootstrap_resamples_all_runs() -> None:
    """An isoflop ladder of 4 levels × 3 sizes: L(C) passes through the 4 envelope points' law, and its bootstrap,
    which takes the envelope again from resampled runs, has a spread (4 points alone would give none), whose
    interval at 10× holds the prediction; the full fit is the fit of the envelope."""
    rng = np.random.default_rng(5)
    c = np.repeat(np.geomspace(1e12, 6.4e13, 4), 3)
    # three sizes per level: the middle one best, the others 1-4% worse; the best follow L∞ + (C₀/C)^α
    best = 1.6 + (1e11 / c) ** 0.2
    loss = best * np.tile([1.02, 1.0, 1.04], 4) * np.exp(rng.normal(0, 0.002, len(c)))
    law = fit_envelope(c, loss, bootstrap=50, seed=0)
    env = compute_envelope(c, loss)
    assert law.params == fit_law("compute", [c[env]], loss[env]).params
    assert len(law.draws) > 25
    lo, hi = law.interval(6.4e14)
    assert hi - lo > 1e-4 and lo <= law.predict(6.4e14) <= hi


def test_optimiser_rules() -> None:
    """lr = 0.5/width (capped at 7e-3) is 0.6-1.7x GPT-3's Table 2.1 from 125M to 13B parameters; the batch
    is a power of two of sequences that grows with compute and is halved to keep `min_steps` steps."""
    gpt3 = {768: 6e-4, 1024: 3e-4, 1536: 2.5e-4, 2048: 2e-4, 2560: 1.6e-4, 4096: 1.2e-4, 5140: 1e-4}
    for width, lr in gpt3.items():
        assert 0.6 < lr_rule(width) / lr < 1.7, width
    assert lr_rule(16) == lr_rule(70) == 7e-3 and lr_rule(72) < 7e-3
    assert lr_rule(128) == pytest.approx(3.906e-3, rel=1e-3)
    sizes = [batch_rule(c, 256, 1e12, min_steps=1) for c in (1e12, 1e14, 1e16, 1e18)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert all(b & (b - 1) == 0 for b in sizes)  # powers of two
    assert batch_rule(1e18, 256, tokens=256 * 1000, min_steps=500) <= 2  # at most 2 sequences: 500 steps


# ------------------------------------------------------------------------------------------ the planner
@pytest.mark.parametrize("preset", ["gpt-nano", "gpt-micro", "gpt-mini", "gpt-small-cpu"])
def test_planner_flops_equal_gptkit_info(preset: str, capsys) -> None:
    assert main(["info", "--preset", preset, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    cfg = model_config(Shape(info["n_layer"], info["n_embd"], info["n_head"]), info["vocab_size"], info["context"])
    assert (cfg.num_params, cfg.non_embedding_params, cfg.flops_per_token()) == \
        (info["params"], info["non_embedding_params"], info["flops_per_token"])
    p = make_point(Shape(info["n_layer"], info["n_embd"], info["n_head"]), 1e6, info["vocab_size"], info["context"],
                   min_steps=10)
    assert p.tokens == p.steps * p.batch_size * info["context"]
    assert p.flops == info["flops_per_token"] * p.tokens
    assert (p.params, p.non_embedding_params) == (info["params"], info["non_embedding_params"])


def test_budget_decides_the_ladder_and_bad_budgets() -> None:
    spec = PlanSpec(vocab_size=65, block_size=64, train_tokens=10**9, budget_minutes=100, ladder="ratio", points=5)
    speed = lambda cfg, batch: 20_000.0  # noqa: E731 (tokens/s, injected: no timing in tests)
    small = plan_ladder(spec, speed)
    big = plan_ladder(dataclasses.replace(spec, budget_minutes=1000), speed)
    assert len(small) == len(big) == 5
    assert sum(p.minutes for p in small) <= 100 and sum(p.minutes for p in big) <= 1000
    assert max(p.flops for p in big) > max(p.flops for p in small)
    assert [p.shape.n_layer for p in small] == sorted({p.shape.n_layer for p in small})  # distinct, growing
    # Kaplan Fig. 6: 1-layer models are off the trend, so the family starts at 2 layers unless told otherwise
    assert [p.shape.n_layer for p in ratio_ladder(spec, 6)] == [2, 3, 4, 5, 6]
    assert [p.shape.n_layer for p in ratio_ladder(dataclasses.replace(spec, min_depth=1), 5)] == [1, 2, 3, 4, 5]
    iso = plan_ladder(dataclasses.replace(spec, ladder="isoflop", points=9, levels=3), speed)
    # the top compute grows in 1.25× steps, not by whole layers: the ladder one step bigger would not fit
    iso_spec = dataclasses.replace(spec, ladder="isoflop", points=9, levels=3)
    assert sum(p.minutes for p in iso) <= 100
    assert estimate(isoflop_ladder(iso_spec, 1.25 * max(p.flops for p in iso)), iso_spec, speed) > 100
    tiny_levels = isoflop_ladder(dataclasses.replace(spec, ladder="isoflop", points=9, levels=3), 1e9)
    assert min(p.shape.n_layer for p in tiny_levels) == 2  # the optimum would be below: still no 1-layer run
    levels = {p.level for p in iso}
    assert len(levels) == 3 and all(sum(p.level == lv for p in iso) == 3 for lv in levels)
    for lv in levels:  # one compute per level (within the rounding to whole steps)
        f = [p.flops for p in iso if p.level == lv]
        assert max(f) / min(f) < 1.15
    with pytest.raises(ScaleError, match="too small for 5 points"):
        plan_ladder(dataclasses.replace(spec, budget_minutes=0.01), speed)
    with pytest.raises(ScaleError, match="at least 5"):
        plan_ladder(dataclasses.replace(spec, points=4), speed)
    warned: list[str] = []
    check_data(small, int(max(p.tokens for p in small) / 5), warned.append)
    assert warned and "repeats the training data 5.0 times" in warned[0]
    with pytest.raises(ScaleError, match="data is too small"):
        check_data(small, int(max(p.tokens for p in small) / 50), warned.append)


# ------------------------------------------------------------------------------ a tiny ladder, for real
@pytest.fixture(scope="module")
def tiny_char(tmp_path_factory, shared_data: Path) -> Path:
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:60_000]
    src = tmp_path_factory.mktemp("src") / "tiny.txt"
    src.write_text(text, encoding="utf-8")
    out = tmp_path_factory.mktemp("data") / "char"
    prepare([str(src)], out, tokenizer="char", progress=False)
    return out


def tiny_options(data: Path, out: Path, **kw) -> ScaleOptions:
    """Depths 1-5 of width 8·depth, context 16, 0.2 tokens per parameter: a ladder of seconds."""
    base = dict(data=str(data), out=str(out), budget_minutes=1.0, ladder="ratio", points=5, tokens_per_param=0.2,
                aspect=8, head_size=8, min_depth=1, block_size=16, min_steps=4, eval_tokens=2048, bootstrap=10,
                quiet=True, threads=1)
    return ScaleOptions(**{**base, **kw})


def fast_up_to_depth_5(cfg, batch: int) -> float:
    """Injected speed: the ladder of depths 1-5 fits the budget, depth 6 does not."""
    return 1e9 if cfg.n_layer <= 5 else 1.0


def test_interrupted_ladder_resumes_only_the_missing_points(tiny_char: Path, tmp_path: Path) -> None:
    from gptkit.train import train

    out = tmp_path / "study"
    calls: list[tuple[str, bool]] = []

    def killed_in_the_third_run(cfg):
        calls.append((Path(cfg.out).name, cfg.resume))
        if len(calls) == 3:  # train half of it, then "kill" the study
            train(dataclasses.replace(cfg, max_iters=cfg.max_iters // 2, lr_decay_iters=cfg.max_iters,
                                      save_interval=max(1, cfg.max_iters // 2)))
            raise KeyboardInterrupt
        return train(cfg)

    with pytest.raises(KeyboardInterrupt):
        run_study(tiny_options(tiny_char, out), speed=fast_up_to_depth_5, trainer=killed_in_the_third_run,
                  say=lambda s: None)
    plan = json.loads((out / "plan.json").read_text())
    names = [p["name"] for p in sorted(plan["points"], key=lambda p: p["flops"])]
    assert [c[0] for c in calls] == names[:3]

    calls2: list[tuple[str, bool]] = []

    def recorder(cfg):
        calls2.append((Path(cfg.out).name, cfg.resume))
        if Path(cfg.out).name.startswith("forecast-"):  # the forecast is on disk before its run trains
            before = json.loads((out / "forecast.json").read_text())
            assert "predicted_val_loss" in before and "verified_val_loss" not in before
        return train(cfg)

    never = lambda cfg, batch: pytest.fail("a resumed study re-measured speed instead of reusing plan.json")  # noqa
    res = run_study(tiny_options(tiny_char, out, verify=True), speed=never, trainer=recorder, say=lambda s: None)
    # the two finished runs were not trained again; the half-done one resumed; the rest started fresh
    assert calls2[:3] == [(names[2], True), (names[3], False), (names[4], False)]
    assert calls2[3][0].startswith("forecast-") and len(calls2) == 4
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results] == [p["name"] for p in plan["points"]]
    assert all(math.isfinite(r["val_loss"]) for r in results)
    fc = json.loads((out / "forecast.json").read_text())
    for key in ("target_flops", "largest_fitted_flops", "predicted_val_loss", "predicted_interval",
                "verified_val_loss", "relative_error"):
        assert key in fc, key
    assert fc["target_flops"] == pytest.approx(10 * max(r["flops"] for r in results))
    assert fc["relative_error"] == pytest.approx(fc["verified_val_loss"] / fc["predicted_val_loss"] - 1)
    assert fc["law"] == "compute" and "compute" in fc["predictions"]  # L(C) is fitted (3+ levels): it forecasts
    assert fc["predicted_val_loss"] == fc["predictions"]["compute"]["val_loss"]
    for law, p in fc["predictions"].items():
        assert fc["relative_errors"][law] == pytest.approx(fc["verified_val_loss"] / p["val_loss"] - 1)
    assert res["fit"]["compute"]["params"]["alpha"] > 0
    for png in ("scaling.png", "isoflop.png"):
        assert (out / png).stat().st_size < 200_000
    # `gptkit scale fit RUN...` on the same runs fits the same L(C)
    fit_out = tmp_path / "refit"
    assert main(["scale", "fit", *[r["run_dir"] for r in results], "--out", str(fit_out), "--bootstrap", "0"]) == 0
    refit = json.loads((fit_out / "fit.json").read_text())
    assert refit["compute"]["params"]["alpha"] == pytest.approx(res["fit"]["compute"]["params"]["alpha"], rel=1e-6)


# ------------------------------------------------------------------------------------------ bits per byte
def test_bits_per_byte_equals_a_direct_count(tmp_path: Path) -> None:
    """One document, split nanoGPT's way: val is the last 10% of its tokens plus an end-of-text token. Counting
    that text's UTF-8 bytes directly (non-ASCII characters are 2-3 bytes) gives the same bits per byte."""
    from gptkit.data.bytes import bits_per_byte, val_bytes_per_token
    from gptkit.tokenizer import Tokenizer

    text = "".join(f"Zeile {i}: Grüße, naïve café — ✓ {i * i}\n" for i in range(300))
    src = tmp_path / "t.txt"
    src.write_text(text, encoding="utf-8")
    for kind in ("char", "bpe"):
        data = tmp_path / kind
        prepare([str(src)], data, tokenizer=kind, vocab_size=300, progress=False)
        tok = Tokenizer.from_pretrained(data / "tokenizer")
        ids = tok.encode(text)
        cut = int(len(ids) * 0.9)
        val_bytes = len(text.encode("utf-8")) - len(tok.decode(ids[:cut]).encode("utf-8"))
        val_tokens = len(ids) - cut + 1  # + the end-of-text token
        r = val_bytes_per_token(data)
        assert (r["tokens"], r["bytes"], r["exact"]) == (val_tokens, val_bytes, True)
        assert bits_per_byte(2.0, data) == pytest.approx(2.0 * val_tokens / (val_bytes * math.log(2)), rel=1e-12)


# ------------------------------------------------------------------------------------------- bad input
def test_bad_input(tiny_char: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bad"
    assert main(["scale", "--out", str(out), "--budget-minutes", "5"]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert main(["scale", "--data", str(tiny_char), "--out", str(out), "--budget-minutes", "-1"]) == 2
    assert "--budget-minutes must be a positive number" in capsys.readouterr().err
    assert main(["scale", "fit", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    with pytest.raises(ScaleError, match="too small for 5 points"):
        run_study(tiny_options(tiny_char, out, budget_minutes=1e-9), speed=fast_up_to_depth_5, say=lambda s: None)
    with pytest.raises(ScaleError, match="data is too small"):
        run_study(tiny_options(tiny_char, out, tokens_per_param=2000.0), speed=fast_up_to_depth_5,
                  say=lambda s: None)
    assert not (out / "plan.json").exists()  # nothing written by a refused plan
    with pytest.raises(ScaleError, match="not beyond the ladder"):
        run_study(tiny_options(tiny_char, out, target_flops=1.0), speed=fast_up_to_depth_5, say=lambda s: None)
    # a run whose loss is not finite is reported and left out; too few left is an error
    runs = [{"name": f"r{i}", "val_loss": v, "status": "ok"} for i, v in enumerate([3.0, 2.5, math.nan, 2.2, 2.1,
                                                                                     2.0])]
    warned: list[str] = []
    assert [r["name"] for r in usable(runs, "nats", warned.append)] == ["r0", "r1", "r3", "r4", "r5"]
    assert len(warned) == 1 and "r2" in warned[0] and "left out" in warned[0]
    with pytest.raises(ScaleError, match="only 4 runs"):
        usable(runs[1:], "nats", warned.append)


def test_forecast_caveats_and_the_verify_refusal():
    """A forecast run that would repeat the data past 40 epochs is not verified (fit.json and forecast.json are
    still written by the caller); one past 4 epochs, or outside the fitted sizes, is said and recorded."""
    from gptkit.scaling.forecast import caveats, check_verifiable
    from gptkit.scaling.plan import ScaleError

    said = []
    fc = {"point": {"tokens": 1_000_000_000, "non_embedding_params": 100_000}}
    got = caveats(fc, [12_800, 100_000, 793_000], train_tokens=4_740_912, warn=said.append)
    assert got["epochs"] == pytest.approx(1e9 / 4_740_912) and got["size_inside_ladder"] is True
    assert len(said) == 1 and "211 times" in said[0]
    with pytest.raises(ScaleError, match="211 times"):
        check_verifiable({**fc, **got})
    said.clear()
    fc = {"point": {"tokens": 3_000_000, "non_embedding_params": 5_000}}
    got = caveats(fc, [12_800, 100_000], train_tokens=4_740_912, warn=said.append)
    assert got == {"epochs": pytest.approx(3e6 / 4_740_912), "size_inside_ladder": False}
    assert len(said) == 1 and "not inside the fitted runs'" in said[0]
    assert caveats({"point": {"tokens": 1, "non_embedding_params": 12_800}}, [12_800, 100_000], 10,
                   said.append)["size_inside_ladder"] is False  # at the smallest fitted size: not bracketed
    check_verifiable({**fc, **got})  # under 40 epochs: verifiable


def test_the_forecast_is_l_of_c_and_keeps_both_laws():
    """With both laws fitted, L(N, D) chooses the size (no smaller than `floor` layers) and L(C) forecasts the loss
    (GPT-4 §3); each law's prediction is kept, and `verified` scores each. Without L(C), L(N, D) forecasts."""
    from gptkit.scaling.forecast import forecast, verified

    spec = PlanSpec(vocab_size=65, block_size=64, train_tokens=10**9, budget_minutes=100, ladder="isoflop", points=9)
    n, d = np.meshgrid(np.geomspace(1e4, 1e6, 4), np.geomspace(1e6, 1e8, 4))
    n, d = n.ravel(), d.ravel()
    size_data = fit_law("size_data", [n, d], 1.7 + 400 / n**0.34 + 410 / d**0.28)
    c = np.geomspace(1e11, 1e14, 5)
    compute = fit_law("compute", [c], 1.5 + (3e10 / c) ** 0.1)
    fc = forecast(1e15, 1e14, spec, {"compute": compute, "size_data": size_data}, "nats")
    n_opt, d_opt = fc["point"]["non_embedding_params"], fc["point"]["tokens"]
    assert fc["law"] == "compute" and fc["predicted_val_loss"] == compute.predict(fc["run_flops"])
    assert fc["predictions"]["size_data"]["val_loss"] == size_data.predict(n_opt, d_opt)
    done = verified(fc, 2.0)
    assert done["relative_error"] == done["relative_errors"]["compute"] == 2.0 / fc["predicted_val_loss"] - 1
    assert done["relative_errors"]["size_data"] == 2.0 / fc["predictions"]["size_data"]["val_loss"] - 1
    # never smaller than the ladder's top winner (`floor` layers): the optimal size grows with compute
    depth = fc["point"]["shape"]["n_layer"]
    deeper = forecast(1e15, 1e14, spec, {"compute": compute, "size_data": size_data}, "nats", floor=depth + 3)
    assert deeper["point"]["shape"]["n_layer"] == depth + 3 and deeper["run_flops"] == pytest.approx(1e15, rel=0.01)
    alone = forecast(1e15, 1e14, spec, {"compute": None, "size_data": size_data}, "nats")
    assert alone["law"] == "size_data" and set(alone["predictions"]) == {"size_data"}
    assert alone["predicted_val_loss"] == fc["predictions"]["size_data"]["val_loss"]


def test_a_budget_past_the_machines_memory_plans_the_largest_ladder_that_fits() -> None:
    """A probe whose model cannot fit memory (gptkit.train.check_memory) ends the search: the plan is the largest
    ladder before it, with a warning; when not even the smallest fits, an error in the study's flags."""
    from gptkit.errors import MachineTooSmall

    def fits_up_to_depth_7(cfg, batch: int) -> float:
        if cfg.n_layer > 7:
            raise MachineTooSmall(f"depth {cfg.n_layer} needs more memory")
        return 1e9

    spec = PlanSpec(vocab_size=65, block_size=16, train_tokens=10**9, budget_minutes=1e5, ladder="ratio", points=5,
                    aspect=8, head_size=8, min_steps=4, min_depth=1, tokens_per_param=0.2)
    warned: list[str] = []
    points = plan_ladder(spec, fits_up_to_depth_7, warned.append)
    assert max(p.shape.n_layer for p in points) == 7
    assert len(warned) == 1 and "fit this machine's memory" in warned[0] and "depth 8" in warned[0]
    with pytest.raises(ScaleError, match="not even the smallest ratio ladder fits .* depth 1 needs .* lower "
                                         "--tokens-per-param"):
        plan_ladder(spec, lambda cfg, batch: (_ for _ in ()).throw(MachineTooSmall("depth 1 needs more")))


@pytest.mark.parametrize("flags, fragment", [
    (["--budget-minutes", "1e12"], "--budget-minutes must be at most 525,600"),  # probed ever larger models
    (["--budget-minutes", "5", "--min-depth", "1000"], "--min-depth must be at most 256"),  # killed, no word
    (["--budget-minutes", "5", "--points", str(10**20)], "is out of range"),
    (["--budget-minutes", "5", "--tokens-per-param", "1e300"], "--tokens-per-param must be at most 10,000")])
def test_sizes_a_plan_cannot_use_are_one_line(tiny_char: Path, tmp_path: Path, flags, fragment, capsys) -> None:
    from cli_helpers import assert_one_line_error, run

    rc, _, err = run(capsys, "scale", "--plan-only", "--data", tiny_char, "--out", tmp_path / "s", *flags)
    assert_one_line_error(rc, err, fragment)
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def finished_run(tiny_char: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "r"
    assert main(["train", "--data", str(tiny_char), "--out", str(out), "--preset", "gpt-nano", "--block-size", "16",
                 "--batch-size", "2", "--max-iters", "2", "--eval-iters", "1", "--quiet", "--device", "cpu"]) == 0
    return out


@pytest.mark.parametrize("damage, fragment", [
    (("train_config.json", b"{"), "is not the JSON `gptkit train` writes"),
    (("train_config.json", b"[]"), "is not the settings `gptkit train` writes"),
    (("metrics.jsonl", b"\xff\xfe\x00\n"), "is not a finished `gptkit train` run"),
    (("metrics.jsonl", b"[1]\n"), "is not a finished `gptkit train` run")])
def test_scale_fit_reads_damaged_runs_in_one_line(finished_run: Path, tmp_path: Path, damage, fragment,
                                                  capsys) -> None:
    """`scale fit` on a run whose metrics.jsonl or train_config.json is damaged (UnicodeDecodeError,
    AttributeError, JSONDecodeError, TypeError tracebacks before) names the run; a whole run is still read."""
    import shutil

    from cli_helpers import assert_one_line_error, run

    out = tmp_path / "r"
    shutil.copytree(finished_run, out)
    rc, _, err = run(capsys, "scale", "fit", out, "--bootstrap", "0")
    assert_one_line_error(rc, err, "a fit needs at least")  # one good run: read, then too few to fit
    name, data = damage
    if name == "metrics.jsonl":
        with open(out / name, "ab") as f:
            f.write(data)
    else:
        (out / name).write_bytes(data)
    rc, _, err = run(capsys, "scale", "fit", out, "--bootstrap", "0", "--unit", "bpb")
    assert_one_line_error(rc, err, str(out), fragment)


def test_a_study_is_not_written_into_the_data(tiny_char: Path, capsys) -> None:
    from cli_helpers import assert_one_line_error, run

    before = sorted(p.name for p in tiny_char.iterdir())
    rc, _, err = run(capsys, "scale", "--plan-only", "--data", tiny_char, "--out", tiny_char, "--budget-minutes", "5")
    assert_one_line_error(rc, err, "is a `gptkit prepare` output")
    assert sorted(p.name for p in tiny_char.iterdir()) == before
