"""TSDI on SACPO with a refusal shortcut (the biased-safety experiment, ``../shared/papers/tsdi.md`` §5.5).

    python benchmarks/tsdi.py              # lambda in {0.5, 1, 2, 4}, alpha in {0, 0.5, 1, 1.5}, L in {1, 2, 3}, 3 seeds
    python benchmarks/tsdi.py --quick      # a smoke run (about a minute)
    python benchmarks/tsdi.py --overhead   # decoding speed with and without the TSDI processor (run on a quiet machine)

Writes ``benchmarks/results/tsdi.{json,md,png}`` (``tsdi_overhead.{json,md}`` for ``--overhead``). The issue asks
for L in {1, 2, 4}: responses of the synthetic language are at most 3 tokens long, so L = 3 already debiases every
position and L = 4 would be the same model.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jaxsafe  # noqa: E402,F401  (sets the XLA flags before jax initialises)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxsafe.llm import generate as generate_lib  # noqa: E402
from jaxsafe.llm import model as model_lib  # noqa: E402
from jaxsafe.llm import tsdi  # noqa: E402
from jaxsafe.llm import tsdi_experiment as te  # noqa: E402
from jaxsafe.logging import to_jsonable  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def reproduction(args, out: Path) -> dict:
    settings = te.TSDIArgs(**{**(te.QUICK if args.quick else {}), "seeds": 1 if args.quick else args.seeds})
    with tempfile.TemporaryDirectory() as tmp:
        summary = te.run_tsdi(settings, Path(tmp) / "run", seed=args.seed)
        shutil.copy(Path(tmp) / "run" / "pareto.png", out / "tsdi.png")
    areas = {name: front["dominated_area"] for name, front in summary["fronts"].items()}
    best = max((k for k in areas if k != "sacpo"), key=areas.get)
    report = {"settings": to_jsonable(settings.__dict__), "quick": args.quick, "seed": args.seed,
              "fronts": summary["fronts"], "dominated_area": areas, "best_tsdi_front": best,
              "area_gain_best": areas[best] / areas["sacpo"] - 1.0, "per_setting": summary["per_setting"],
              "biased_data": summary["biased_data"], "sft": summary["sft"],
              "refusal_bias_by_position": summary["refusal_bias_by_position"],
              "train_seconds": summary["train_seconds"], "total_seconds": summary["total_seconds"],
              "machine": platform.platform()}
    (out / "tsdi.json").write_text(json.dumps(to_jsonable(report), indent=2))
    lines = [f"# TSDI on SACPO with a refusal shortcut ({'quick' if args.quick else 'full'} settings)", "",
             f"Biased safety data: the chosen response starts with REFUSE in "
             f"{summary['biased_data']['chosen_starts_with_refuse_benign']:.0%} of benign and "
             f"{summary['biased_data']['chosen_starts_with_refuse_harmful']:.0%} of harmful pairs. "
             f"Seeds: {settings.seeds}; SACPO: beta {settings.beta:g}, {settings.steps} steps per stage, "
             f"{settings.pairs} pairs per objective; bias from {settings.prompts} random prompts.", "",
             "Area dominated by each helpfulness-safety front (exact E[g], E[r]; above a common reference point):", "",
             "| front | dominated area | vs SACPO |", "|---|---:|---:|"]
    for name, area in sorted(areas.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {area:.4f} | {area / areas['sacpo'] - 1:+.1%} |")
    lines += ["", "Per setting (mean over seeds):", "", te.table(summary), "",
              f"Training {summary['train_seconds']:.0f} s, total {summary['total_seconds']:.0f} s on "
              f"{platform.machine()}, alongside other work (these are exact values, not timings)."]
    (out / "tsdi.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


def overhead(args, out: Path) -> dict:
    """Tokens per second of the jitted sampler with and without the TSDI processor, paired A B A B."""
    rows = []
    for preset, batch, new_tokens in (("tiny", 64, 32), ("llama-160m", 8, 32)):
        config = model_lib.preset(preset, max_seq_len=128)
        graphdef, params = model_lib.init_params(config, jax.random.PRNGKey(0))
        prompts = jax.random.randint(jax.random.PRNGKey(1), (batch, 16), 3, config.vocab_size)
        mask = jnp.ones(prompts.shape, bool)
        sampling = generate_lib.SamplingConfig(new_tokens)
        state = tsdi.TSDIState(jax.random.normal(jax.random.PRNGKey(2), (4, config.vocab_size)), jnp.float32(1.0))
        processor = tsdi.debiased_processor()

        def plain(key):
            return generate_lib.generate(graphdef, params, prompts, mask, key, sampling).sequences

        def debiased(key):
            return generate_lib.generate(graphdef, params, prompts, mask, key, sampling, processor,
                                         processor_state=state).sequences

        times = {"plain": [], "tsdi": []}
        for fn in (plain, debiased):
            jax.block_until_ready(fn(jax.random.PRNGKey(0)))  # compile
        for repeat in range(args.repeats):
            for name, fn in (("plain", plain), ("tsdi", debiased)):
                start = time.perf_counter()
                jax.block_until_ready(fn(jax.random.PRNGKey(repeat)))
                times[name].append(time.perf_counter() - start)
        ratios = np.asarray(times["tsdi"]) / np.asarray(times["plain"])
        tokens = batch * new_tokens
        rows.append({"preset": preset, "batch": batch, "new_tokens": new_tokens,
                     "plain_tokens_per_s": tokens / np.median(times["plain"]),
                     "tsdi_tokens_per_s": tokens / np.median(times["tsdi"]),
                     "slowdown_median": float(np.median(ratios)) - 1.0, "repeats": args.repeats})
    (out / "tsdi_overhead.json").write_text(json.dumps(to_jsonable(rows), indent=2))
    lines = ["# TSDI decoding overhead (paired runs, median)", "",
             "| preset | batch x tokens | plain tokens/s | TSDI tokens/s | slowdown |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['batch']} x {r['new_tokens']} | {r['plain_tokens_per_s']:.0f} | "
                     f"{r['tsdi_tokens_per_s']:.0f} | {r['slowdown_median']:+.1%} |")
    lines += ["", f"{args.repeats} paired repeats on {platform.machine()} ({platform.platform()})."]
    (out / "tsdi_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--overhead", action="store_true", help="only the decoding-speed comparison")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return overhead(args, out) if args.overhead else reproduction(args, out)


if __name__ == "__main__":
    main()
