"""Flipping-based policies (Shen et al., NeurIPS 2024): deterministic families, LP mixing, both flip modes.

Three parts, each writing into ``benchmarks/results/flipping.json`` / ``.md`` and ``docs/figures/flipping.png``
(with ``--out DIR``: all three into ``DIR``):

* ``point2d`` -- the paper's appendix-K example (:mod:`jaxsafe.envs.point2d`, dt 0.1, T = 100 steps): a family of
  deterministic policies by inflated-radius planning (``beta`` from 1.0 to 3.0 in steps of 0.05, the paper's
  1.0-2.2 plus the range where the detour no longer reaches the goal), each evaluated by 5 sets of 1,000 vmapped
  rollouts for expected reward and the probability of touching a hazard within T; then, at a ladder of violation
  budgets, the best deterministic policy, the LP's two-policy mixture (upper concave hull), and that mixture played
  with a coin once per episode and once per step, each measured on fresh rollouts.
* ``navigation`` -- PPO-Lagrangian and CPO trained at a ladder of episode-cost limits on ``SafePointGoal2`` and
  ``SafeCarGoal2``: one vmapped ``jaxsafe train`` run per (task, algorithm) with the task's preset
  (:mod:`jaxsafe.rl.presets`), one lane per limit, at the safety suite's budget (10^7 steps per policy) as resumable
  chunked runs (:mod:`benchmarks.chunked`: advanced round-robin so that the ladders stay at similar budgets, mirrored
  with their newest checkpoint into the committed store ``benchmarks/results/flipping_cells/``); then every ladder
  that has steps is evaluated and mixed by :func:`jaxsafe.rl.flipping.mix_run` (what ``jaxsafe flip RUN_DIR``
  does): each policy on fresh episodes, the LP mixture at each cost limit, played in both flip modes. The table
  states the steps each ladder reached and whether its evaluated costs rise with the limit.
* ``head`` -- the state-dependent flipping head (``policy="flipping"``) against the ordinary Gaussian policy, each
  trained by PPO-Lagrangian and by CPO on the chance-constraint surrogate
  (:class:`jaxsafe.rl.flipping.ChanceConstraintCost`) of ``ChanceBandit`` at equal limits.

Usage::

    python benchmarks/flipping.py --quick                 # ~15-25 min on 2 CPU cores (200k-step ladders)
    python benchmarks/flipping.py                         # full: 10^7 steps per navigation policy (hours)
    python benchmarks/flipping.py --parts navigation --hours 2   # advance the ladders for 2 h, then evaluate
    python benchmarks/flipping.py --parts navigation --hours 0   # evaluate the stored ladders only
    python benchmarks/flipping.py --parts point2d         # one part (the others keep their stored results)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jaxsafe  # noqa: E402,F401  (sets the XLA flags before jax initialises)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import chunked  # noqa: E402
from jaxsafe import envs, runner, sweep  # noqa: E402
from jaxsafe.logging import RunDir  # noqa: E402
from jaxsafe.envs.point2d import ChancePoint2D, plan_inflated, tracking_policy  # noqa: E402
from jaxsafe.policy import from_act  # noqa: E402
from jaxsafe.rl import cpo, flipping, ppo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURE = ROOT / "docs" / "figures" / "flipping.png"


# ----------------------------------------------------------------------------------------------------------------
# Part 1: the 2-D point example
# ----------------------------------------------------------------------------------------------------------------


def point2d(args) -> dict:
    env = ChancePoint2D()
    params = env.default_params
    T = params.max_steps
    betas = np.round(np.arange(args.beta_min, args.beta_max + 1e-9, args.beta_step), 4)
    t0 = time.time()
    plans = jax.block_until_ready(plan_inflated(params, betas))
    plan_seconds = time.time() - t0
    sets, per_set = args.eval_sets, args.eval_episodes

    def evaluate(policy, key):
        r = flipping.rollout_episodes(env, params, policy, key, sets * per_set, T)
        violated = r.unsafe.max(1)
        return r.returns.reshape(sets, per_set).mean(1), violated.reshape(sets, per_set).mean(1)

    def evaluate_plan(plan, key):
        return evaluate(tracking_policy(plan, params, args.gain), key)

    t0 = time.time()
    J_sets, V_sets = jax.jit(jax.vmap(evaluate_plan, (0, None)))(plans, jax.random.PRNGKey(1))
    J_sets, V_sets = np.asarray(J_sets, np.float64), np.asarray(V_sets, np.float64)
    eval_seconds = time.time() - t0
    J, V = J_sets.mean(1), V_sets.mean(1)

    budgets = np.asarray(args.budgets, np.float64)
    mixtures = [flipping.mix_for_budget(V, J, a) for a in budgets]
    low = jnp.asarray([m.low for m in mixtures])
    high = jnp.asarray([m.high for m in mixtures])
    weight = jnp.asarray([m.weight_low for m in mixtures], jnp.float32)
    take = lambda idx: jax.tree.map(lambda x: x[idx], plans)  # noqa: E731

    measured = {}
    for mode in flipping.FLIP_MODES:
        def evaluate_mixture(plan_low, plan_high, w, key, mode=mode):
            policy = flipping.mixture_policy(tracking_policy(plan_low, params, args.gain),
                                             tracking_policy(plan_high, params, args.gain), w, mode)
            return evaluate(policy, key)

        mJ, mV = jax.jit(jax.vmap(evaluate_mixture, (0, 0, 0, None)))(take(low), take(high), weight,
                                                                       jax.random.PRNGKey(2))
        measured[mode] = (np.asarray(mJ, np.float64), np.asarray(mV, np.float64))

    # the best deterministic policy per budget, re-measured on the same fresh rollouts as the mixtures (common
    # random numbers: the comparison is not blurred by the noise draw both share)
    best = [flipping.best_deterministic(V, J, a)[0] for a in budgets]
    det_index = jnp.asarray([b if b >= 0 else int(np.argmin(V)) for b in best])
    dJ, dV = jax.jit(jax.vmap(evaluate_plan, (0, None)))(take(det_index), jax.random.PRNGKey(2))
    dJ, dV = np.asarray(dJ, np.float64), np.asarray(dV, np.float64)

    rows = []
    for i, (a, m) in enumerate(zip(budgets, mixtures)):
        d_index, d_value = flipping.best_deterministic(V, J, a)
        row = dict(budget=float(a), deterministic_beta=float(betas[d_index]) if d_index >= 0 else None,
                   deterministic_return=d_value, deterministic_violation=float(V[d_index]) if d_index >= 0 else None,
                   deterministic_remeasured_return=float(dJ[i].mean()) if d_index >= 0 else None,
                   deterministic_remeasured_violation=float(dV[i].mean()) if d_index >= 0 else None,
                   lp_return=m.value, lp_violation=m.cost, pair_betas=[float(betas[m.low]), float(betas[m.high])],
                   weight_low=m.weight_low, feasible=m.feasible)
        for mode, (mJ, mV) in measured.items():
            row[f"{mode}_return"] = float(mJ[i].mean())
            row[f"{mode}_return_std"] = float(mJ[i].std(ddof=1))
            row[f"{mode}_violation"] = float(mV[i].mean())
            row[f"{mode}_violation_std"] = float(mV[i].std(ddof=1))
        rows.append(row)
    family = [dict(beta=float(b), expected_return=float(j), return_std=float(js.std(ddof=1)),
                   violation=float(v), violation_std=float(vs.std(ddof=1)),
                   nominal_return=float(n), inflated_violation=float(iv))
              for b, j, js, v, vs, n, iv in zip(betas, J, J_sets, V, V_sets, np.asarray(plans.nominal_return),
                                                np.asarray(plans.inflated_violation))]
    return dict(settings=dict(dt=float(params.dt), T=int(T), sigma=float(params.sigma),
                              max_action=float(params.max_action), tracking_gain=args.gain,
                              betas=[float(betas[0]), float(betas[-1]), float(args.beta_step)],
                              eval=f"{sets} sets x {per_set} rollouts"),
                family=family, hull=[int(i) for i in flipping.upper_concave_hull(V, J)], budgets=rows,
                seconds=dict(plan=plan_seconds, evaluate=eval_seconds))


# ----------------------------------------------------------------------------------------------------------------
# Part 2: policy mixing on the navigation tasks
# ----------------------------------------------------------------------------------------------------------------


NAV_STORE = RESULTS / "flipping_cells"
NAV_CHUNK = 250_000  # env steps per lane per chunk (as the safety suite)


def navigation_cells(args) -> list[chunked.Cell]:
    """One chunked run per (task, algorithm): the task's preset, one seed, the cost-limit ladder as a vmapped grid;
    the final checkpoint stays in the store (the mixtures are played from it)."""

    def make(task, name):
        return lambda: runner.make_spec(name, task, seeds=[args.seed], grid={"cost_limit": args.limits},
                                        num_chunks=max(1, args.total_steps // NAV_CHUNK),
                                        overrides={"total_steps": args.total_steps})

    return [chunked.Cell(f"{task}__{name}", args.total_steps, make(task, name), keep_final=True)
            for task in args.tasks for name in args.algos]


def cost_inversions(limits, costs) -> int:
    """Pairs of ladder policies whose evaluated cost falls while their limit rises (0: the ladder is monotone)."""
    order = np.argsort(limits)
    c = np.asarray(costs, np.float64)[order]
    return int(sum(c[j] < c[i] for i in range(c.size) for j in range(i + 1, c.size)))


def navigation(args) -> dict:
    """Train (or resume) the ladders for ``--hours``, then evaluate every ladder that has steps through
    :func:`jaxsafe.rl.flipping.mix_run` from its newest checkpoint (``jaxsafe flip`` on the run directory)."""
    cells = navigation_cells(args)
    root, store = Path(args.run_root), None if args.store == "none" else Path(args.store)
    if args.hours > 0:
        chunked.run_cells(cells, root, args.hours, store, schedule="round-robin")
    wall = chunked.wall_seconds(root, store)
    out = {}
    for cell, (task, name) in zip(cells, [(t, a) for t in args.tasks for a in args.algos]):
        run_dir = chunked.newest(cell, root, store)
        steps = chunked.steps_done(run_dir)
        if steps == 0:
            continue
        t0 = time.time()
        run = runner.load_run(run_dir)
        limits = [float(p["cost_limit"]) for p in run.grid.points]
        rows = flipping.mix_run(run, limits, episodes=args.nav_episodes, max_steps=int(run.env_params.max_steps),
                                window=args.window, seed=3)
        training = RunDir(run_dir, must_exist=True).read_metrics()
        train_return = chunked.final_values(training, "episode_return")
        train_cost = chunked.final_values(training, "episode_cost")
        policies = [dict(cost_limit=r["cost_limit"], expected_return=r["expected_return"],
                         return_se=r["return_se"], expected_cost=r["expected_cost"], cost_se=r["cost_se"],
                         violation=r["violation"], train_return=float(train_return[r["lane"]]),
                         train_cost=float(train_cost[r["lane"]]))
                    for r in rows if r["kind"] == "policy"]
        costs = np.asarray([p["expected_cost"] for p in policies])
        budgets = []
        for budget in limits:
            mixed = {r["mode"]: r for r in rows if r["kind"] == "mixture" and r["budget"] == budget}
            first = next(iter(mixed.values()))
            d = first["best_deterministic_lane"]
            row = dict(budget=budget, deterministic_return=first["best_deterministic_return"] if d >= 0 else None,
                       deterministic_cost=float(costs[d]) if d >= 0 else None, lp_return=first["lp_return"],
                       lp_cost=first["lp_cost"], pair_limits=[limits[first["low_lane"]], limits[first["high_lane"]]],
                       weight_low=first["weight_low"], feasible=first["feasible"])
            for mode, r in mixed.items():
                row.update({f"{mode}_return": r["expected_return"], f"{mode}_cost": r["expected_cost"],
                            f"{mode}_violation": r["violation"], f"{mode}_return_se": r["return_se"]})
            budgets.append(row)
        out[f"{task}/{name}"] = dict(task=task, algorithm=name, steps_per_policy=steps, target_steps=cell.steps,
                                     episodes=args.nav_episodes, window=args.window, policies=policies,
                                     budgets=budgets, cost_inversions=cost_inversions(limits, costs),
                                     seconds=dict(train=wall.get(cell.name), evaluate=time.time() - t0))
        print(f"  {task} {name}: {steps:,} steps per policy, evaluated in {time.time() - t0:.0f}s, "
              f"{out[f'{task}/{name}']['cost_inversions']} cost inversions", flush=True)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Part 3: the state-dependent flipping head against a Gaussian policy
# ----------------------------------------------------------------------------------------------------------------


def head(args) -> dict:
    from jaxsafe.envs.chance_bandit import flip_optimum, solve_by_enumeration

    base_env, env_params = envs.make("ChanceBandit")
    env = flipping.ChanceConstraintCost(base_env, gamma_unsafe=1.0)  # one-step episodes: the surrogate is Pr{unsafe}
    # PPO-Lag needs a faster multiplier and no entropy bonus here (measured; the defaults end fully unsafe);
    # CPO runs with its defaults.
    learners = {
        "ppo_lag": (ppo, dict(num_envs=64, num_steps=4, total_steps=args.head_steps, num_epochs=4, num_minibatches=4,
                              hidden=(16,), multiplier="lagrangian"),
                    dict(learning_rate=1e-3, entropy_coef=0.0, multiplier_lr=0.2)),
        "cpo": (cpo, dict(num_envs=64, num_steps=4, total_steps=args.head_steps // 2, hidden=(16,), method="cpo"), {}),
    }
    out = {}
    for learner, (module, config_kwargs, hparams_kwargs) in learners.items():
        for policy in ("gaussian", "flipping"):
            config_cls = module.PPOConfig if module is ppo else module.CPOConfig
            config = config_cls(policy=policy, **config_kwargs)
            base = config.default_hparams().replace(**{k: jnp.float32(v) for k, v in hparams_kwargs.items()})
            grid = sweep.make_grid(base, seeds=args.head_seeds, cost_limit=args.head_limits)
            t0 = time.time()
            result = jax.block_until_ready(sweep.run_grid(module.make_train(config, env, env_params), grid))
            act = module.make_act(config, env, env_params)

            def evaluate(params, key):
                r = flipping.rollout_episodes(env, env_params, from_act(act, params), key, 20_000, 1)
                return r.returns.mean(), r.unsafe.max(1).mean()

            Jr, Vr = jax.jit(jax.vmap(evaluate, (0, None)))(result.params, jax.random.PRNGKey(5))
            out[f"{learner}/{policy}"] = [
                dict(cost_limit=float(p["cost_limit"]), seed=int(p["seed"]), expected_return=float(j),
                     violation=float(v)) for p, j, v in zip(grid.points, np.asarray(Jr), np.asarray(Vr))]
            out[f"{learner}/{policy}/seconds"] = time.time() - t0
            print(f"  head {learner} {policy}: {time.time() - t0:.0f}s", flush=True)
    out["optimum"] = [dict(cost_limit=float(a), value=flip_optimum(a).value,
                           enumeration_value=solve_by_enumeration(a).value,
                           enumeration_support=[float(x) for x in solve_by_enumeration(a).support])
                      for a in args.head_limits]
    out["settings"] = dict(seeds=args.head_seeds, ppo_lag_steps=args.head_steps, cpo_steps=args.head_steps // 2,
                           evaluation="20,000 one-step episodes per policy")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def fmt(x, digits=3):
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def markdown(results: dict) -> str:
    lines = ["# Flipping-based policies: deterministic family vs LP mixture, both flip modes", "",
             f"Machine: {results.get('machine', '')}.", ""]
    p = results.get("point2d")
    if p:
        s = p["settings"]
        lines += ["## 2-D point example (appendix K)", "",
                  f"dt {s['dt']}, T {s['T']} steps (the chance constraint is over the whole episode), sigma "
                  f"{s['sigma']}, |a| <= {s['max_action']} per axis, open-loop plans tracked with gain "
                  f"{s['tracking_gain']}; beta {s['betas'][0]}..{s['betas'][1]} step {s['betas'][2]}; evaluation "
                  f"{s['eval']} (mean +- std over the sets). Predicted = the family's measured values the LP was solved on; every other column is re-measured on one fresh set of rollouts shared by all columns. Return = sum of rewards over the episode (the mean "
                  "per-step reward is this / T).", "",
                  "| violation budget | best deterministic: predicted (beta) | re-measured: return / violation | LP mixture (betas, w) | per-episode flip: return / violation | per-step flip: return / violation |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in p["budgets"]:
            det = (f"{fmt(r['deterministic_return'], 2)} ({fmt(r['deterministic_beta'], 2)}) | "
                   f"{fmt(r['deterministic_remeasured_return'], 2)} / {fmt(r['deterministic_remeasured_violation'])}")
            lp = (f"{fmt(r['lp_return'], 2)} ({r['pair_betas'][0]:.2f}/{r['pair_betas'][1]:.2f}, "
                  f"{r['weight_low']:.2f})")
            ep = f"{r['episode_return']:.2f} +- {r['episode_return_std']:.2f} / {r['episode_violation']:.3f}"
            st = f"{r['step_return']:.2f} +- {r['step_return_std']:.2f} / {r['step_violation']:.3f}"
            lines.append(f"| {r['budget']:.3f} | {det} | {lp} | {ep} | {st} |")
        lines.append("")
    nav = results.get("navigation")
    if nav:
        lines += ["## Navigation: mixing policies trained at a ladder of cost limits", "",
                  "Each ladder is one vmapped `jaxsafe train` run (the task's preset, one seed, one lane per cost "
                  "limit), trained as a resumable chunked run (`benchmarks/flipping_cells/`); its newest policies are "
                  "evaluated and mixed by `flipping.mix_run` (as `jaxsafe flip RUN_DIR`). Policy and flip columns "
                  "are measured on fresh episodes (return ± standard error over episodes); best deterministic and "
                  "LP are computed from the policies' measured (cost, return); gain = per-episode flip return − best "
                  "deterministic return.", ""]
        for key, block in nav.items():
            target = block.get("target_steps")
            reached = (f"{block['steps_per_policy']:,} of {target:,} steps per policy" if target
                       else f"{block['steps_per_policy']:,} steps per policy")
            inv = block.get("cost_inversions")
            mono = ("" if inv is None else ", evaluated cost monotone in the limit" if inv == 0
                    else f", {inv} cost inversion(s) along the ladder")
            lines += [f"### {block['task']}, {block['algorithm']} ({reached}, {block['episodes']} evaluation "
                      f"episodes, violation window {block['window']}{mono})", "",
                      "| cost limit | policy return / cost / violation | training return / cost | best deterministic within limit | LP mixture | per-episode flip: return / cost | per-step flip: return / cost | gain |",
                      "|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for pol, r in zip(block["policies"], block["budgets"]):
                se = f" ± {pol['return_se']:.2f}" if "return_se" in pol else ""
                ep_se = f" ± {r['episode_return_se']:.2f}" if "episode_return_se" in r else ""
                train = (f"{pol['train_return']:.2f} / {pol['train_cost']:.1f}" if "train_return" in pol else "-")
                gain = (r["episode_return"] - r["deterministic_return"] if r["deterministic_return"] is not None
                        else None)
                lines.append(
                    f"| {r['budget']:.0f} | {pol['expected_return']:.2f}{se} / {pol['expected_cost']:.1f} / "
                    f"{pol['violation']:.3f} | {train} | {fmt(r['deterministic_return'], 2)} | "
                    f"{fmt(r['lp_return'], 2)} (limits {r['pair_limits'][0]:.0f}/{r['pair_limits'][1]:.0f}, w "
                    f"{r['weight_low']:.2f}) | {r['episode_return']:.2f}{ep_se} / {r['episode_cost']:.1f} | "
                    f"{r['step_return']:.2f} / {r['step_cost']:.1f} | {fmt(gain, 2)} |")
            lines.append("")
    h = results.get("head")
    if h:
        lines += ["## State-dependent flipping head vs Gaussian policy (ChanceBandit, one-step episodes)", "",
                  f"Trained on the chance-constraint surrogate at each violation limit; {h['settings']['seeds']} seeds "
                  f"(mean +- std); PPO-Lag {h['settings']['ppo_lag_steps']:,} steps, CPO "
                  f"{h['settings']['cpo_steps']:,}; {h['settings']['evaluation']}. The exact optimum is the "
                  "two-action flip (closed form = enumeration LP).", "",
                  "| violation limit | exact optimum | PPO-Lag Gaussian | PPO-Lag flipping head | CPO Gaussian | CPO flipping head |",
                  "|---:|---:|---:|---:|---:|---:|"]

        def cell(rows):
            if not rows:
                return "-"
            j, v = [r["expected_return"] for r in rows], [r["violation"] for r in rows]
            return f"{np.mean(j):.3f} +- {np.std(j):.3f} / {np.mean(v):.3f}"

        for opt in h["optimum"]:
            a = opt["cost_limit"]
            cells = [cell([r for r in h.get(f"{learner}/{policy}", []) if abs(r["cost_limit"] - a) < 1e-6])
                     for learner in ("ppo_lag", "cpo") for policy in ("gaussian", "flipping")]
            lines.append(f"| {a:.2f} | {opt['value']:.3f} | " + " | ".join(cells) + " |")
        lines += ["", "Cells: expected reward +- std over seeds / Pr{unsafe}.", ""]
    return "\n".join(lines)


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if "point2d" in results:
        panels.append(("2-D point example", results["point2d"], "violation", None))
        panels.append(("2-D point example, low violation", results["point2d"], "violation", 0.052))
    for key, block in results.get("navigation", {}).items():
        panels.append((f"{block['task']} / {block['algorithm']}", block, "cost", None))
    if not panels:
        return
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, block, axis, xmax) in zip(axes.flat, panels):
        if axis == "violation":
            xs = [f["violation"] for f in block["family"]]
            ys = [f["expected_return"] for f in block["family"]]
            ax.set_xlabel("violation probability (T = episode)")
        else:
            xs = [f["expected_cost"] for f in block["policies"]]
            ys = [f["expected_return"] for f in block["policies"]]
            ax.set_xlabel("expected episode cost")
        order = np.argsort(xs)
        style = "o-" if axis == "violation" else "o"  # the planned family is ordered by beta; trained ones are not
        ax.plot(np.asarray(xs)[order], np.asarray(ys)[order], style, ms=3, color="0.5", label="deterministic family")
        hull = flipping.upper_concave_hull(xs, ys)
        ax.plot(np.asarray(xs)[hull], np.asarray(ys)[hull], "--", color="k", lw=1, label="upper concave hull (LP)")
        for mode, marker, color in (("episode", "s", "tab:blue"), ("step", "^", "tab:red")):
            bx = [r[f"{mode}_{axis}"] for r in block["budgets"]]
            by = [r[f"{mode}_return"] for r in block["budgets"]]
            ax.plot(bx, by, marker, color=color, ms=5, label=f"flip once per {mode}")
        if xmax is not None:
            ax.set_xlim(-0.002, xmax)
            ax.set_ylim(0, max(y for x, y in zip(xs, ys) if x <= xmax) * 1.15)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("expected return")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced navigation/head budgets (~20 min on 2 cores)")
    parser.add_argument("--parts", default="point2d,navigation,head")
    parser.add_argument("--beta-min", type=float, default=1.0)
    parser.add_argument("--beta-max", type=float, default=3.0)
    parser.add_argument("--beta-step", type=float, default=0.05)
    parser.add_argument("--gain", type=float, default=0.0, help="tracking gain of the planned policies (0: open loop)")
    parser.add_argument("--eval-sets", type=int, default=5)
    parser.add_argument("--eval-episodes", type=int, default=1000)
    parser.add_argument("--budgets", default="0.005,0.01,0.02,0.03,0.05,0.1,0.15,0.17,0.2,0.25")
    parser.add_argument("--tasks", default="SafePointGoal2,SafeCarGoal2")
    parser.add_argument("--algos", default="ppo_lag,cpo")
    parser.add_argument("--limits", default="10,25,50,80,120,160", help="episode-cost limits of the ladder")
    parser.add_argument("--total-steps", type=int, default=None,
                        help="per ladder policy (default 10^7, the safety suite's budget; quick 200k)")
    parser.add_argument("--hours", type=float, default=None,
                        help="bound on this call's navigation training (default: until the ladders finish; 0: only "
                             "evaluate what the run directories hold)")
    parser.add_argument("--run-root", default="runs/flipping", help="the ladders' run directories")
    parser.add_argument("--store", default=str(NAV_STORE),
                        help="committed mirror of the ladders' run directories; 'none' disables")
    parser.add_argument("--nav-episodes", type=int, default=None, help="evaluation episodes per policy")
    parser.add_argument("--window", type=int, default=10, help="T of the navigation violation probability")
    parser.add_argument("--head-limits", default="0.1,0.25,0.4")
    parser.add_argument("--head-seeds", type=int, default=3)
    parser.add_argument("--head-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--report", action="store_true", help="only rewrite the table and figure from the JSON")
    args = parser.parse_args(argv)
    args.budgets = [float(x) for x in args.budgets.split(",")]
    args.tasks, args.algos = args.tasks.split(","), args.algos.split(",")
    args.limits = [float(x) for x in args.limits.split(",")]
    args.head_limits = [float(x) for x in args.head_limits.split(",")]
    args.total_steps = args.total_steps or (200_000 if args.quick else 10_000_000)
    args.hours = float("inf") if args.hours is None else args.hours
    if args.quick:  # short ladders: their own run root, no committed store
        args.store = "none" if args.store == str(NAV_STORE) else args.store
        args.run_root = "runs/flipping_quick" if args.run_root == "runs/flipping" else args.run_root
    args.nav_episodes = args.nav_episodes or (32 if args.quick else 100)
    args.head_steps = args.head_steps or (256 * 300 if args.quick else 256 * 1000)
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - {"point2d", "navigation", "head"})
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from point2d, navigation, head")

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure_path = FIGURE if out_dir.resolve() == RESULTS.resolve() else out_dir / "flipping.png"
    json_path = out_dir / "flipping.json"
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    if args.report:
        (out_dir / "flipping.md").write_text(markdown(results))
        figure(results, figure_path)
        print(markdown(results))
        return
    results["machine"] = (f"{jax.device_count()}x {jax.devices()[0].platform}, jax {jax.__version__}, "
                          f"{platform.platform()}")
    results["mode"] = "quick" if args.quick else "full"
    for part, fn in (("point2d", point2d), ("navigation", navigation), ("head", head)):
        if part in parts:
            print(f"[{part}]", flush=True)
            t0 = time.time()
            results[part] = fn(args)
            results.setdefault("seconds", {})[part] = time.time() - t0
            json_path.write_text(json.dumps(results, indent=1))
            (out_dir / "flipping.md").write_text(markdown(results))
            figure(results, figure_path)
            print(f"[{part}] done in {time.time() - t0:.0f}s", flush=True)
    print(markdown(results))


if __name__ == "__main__":
    main()
