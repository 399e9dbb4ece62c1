"""OGSRL: what the ensemble model predicts off the data (the reward hack of the ensemble-model CPO cells).

For seed 44's task (600 patients, the default 5-member ensemble of ``ogsrl.with_ensemble``), the ensemble's mean
outcome probabilities (continue, death, discharge) on 2,000 training (s, a) pairs, then on the same states with
the action fixed to a few corners of the box, with the guardian's OOD share and the ensemble disagreement. Writes
``benchmarks/results/ogsrl_ensemble_probe.json``. Usage: ``python benchmarks/ogsrl_ensemble_probe.py [--seed 44]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe.offline import ensemble as ens
from jaxsafe.offline import ogsrl

ACTIONS = ([1, 1], [1, -1], [-1, 1], [0.3, 0.2], [-1, -1], [-0.5, -1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=44)
    parser.add_argument("--patients", type=int, default=600)
    args = parser.parse_args(argv)
    task = ogsrl.with_ensemble(ogsrl.build_task(args.seed, args.patients))
    inputs, _, labels = ogsrl.ensemble_training_data(task)
    _, _, logits = ens.predict(task.ensemble, inputs[:2000])
    out = {"seed": args.seed, "patients": args.patients, "outcomes": ["continue", "death", "discharge"],
           "data": {"predicted": np.asarray(jax.nn.softmax(logits, -1)).mean((0, 1)).tolist(),
                    "label_frequency": (np.bincount(labels, minlength=3) / len(labels)).tolist(),
                    "disagreement": float(ens.disagreement(task.ensemble, inputs[:2000]).mean())},
           "fixed_actions": []}
    obs = np.asarray(task.dataset.observations)[task.splits["train"]][:2000]
    for action in ACTIONS:
        act = np.tile(np.asarray(action, np.float32), (len(obs), 1))
        x = task.guardian.normaliser(jnp.concatenate([jnp.asarray(obs), jnp.asarray(act)], 1))
        _, _, lg = ens.predict(task.ensemble, x)
        out["fixed_actions"].append({
            "action": action, "predicted": np.asarray(jax.nn.softmax(lg, -1)).mean((0, 1)).tolist(),
            "ood_share": float(np.asarray(ogsrl.guard.guardian_flags(task.guardian, obs, act)).mean()),
            "disagreement": float(ens.disagreement(task.ensemble, x).mean())})
    path = Path(__file__).parent / "results" / "ogsrl_ensemble_probe.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
