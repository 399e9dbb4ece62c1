"""``jaxsafe align poison``: minimum-cost label flipping against a length target, end to end.

    jaxsafe align poison --attack rlhfpoison --postprocess lp --out runs/poison            # linear features
    jaxsafe align poison --source lm --model tiny --pairs 4000 --out runs/poison-lm        # LM features + DPO
    jaxsafe align poison --data runs/poison/data.npz --postprocess milp --out runs/poison-milp
    jaxsafe align poison --quick --out runs/poison-quick

The pipeline (:func:`run_attack`, used by the command and by ``benchmarks/poisoning.py``):

1. Preference data (:class:`PreferenceData`): synthetic linear features with a length coordinate
   (:func:`linear_preference_data`), features of a language model on the synthetic safety language
   (:func:`lm_preference_data`), or a ``.npz`` file (:func:`load_preference_data`; never pickle).
2. The clean Bradley-Terry reward model, then an attack toward longer responses: RLHFPoison (quality filter
25%,
   largest-disparity selection 5%) or random flips of candidate pairs.
3. Post-processing: the minimum-cost LP with the attack's moment (same reward model, fewer flips), its dual
lower
   bound (and the dual LP solved on its own), rounding onto the duplication grid, and optionally the
   duplication MILP; for data with a length coordinate also the direct target "the attack's length weight,
   nothing else".
4. Downstream: the reward models' preference for longer responses; for language-model data the exact mean
   response length of the log-linear DPO policy and of last-layer (token-level head) DPO trained on the
   duplicated original, attacked and post-processed data.

:func:`run_poisoning` writes a run directory (refusing a non-empty one): ``config.json``, ``data.npz``
(reusable with ``--data``), ``flips.npz``, ``summary.json``, ``metrics.jsonl`` (DPO curves), ``costs.png``
and, for language-model data, ``dpo_length.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe import plotting
from jaxsafe.llm import model as model_lib
from jaxsafe.llm import poisoning
from jaxsafe.llm.tasks import safety_language as lang
from jaxsafe.logging import RunDir, check_new_run_dir, to_jsonable

SOURCES = ("linear", "lm")
ATTACKS = ("rlhfpoison", "random")
POSTPROCESS = ("lp", "milp", "none")
_ID_KEYS = ("prompt_ids", "chosen_ids", "rejected_ids")


# ----------------------------------------------------------------------------- preference data


@dataclasses.dataclass(frozen=True)
class PreferenceData:
    """A preference data set in the form the LP needs.

    Fields:
      features: ``Phi [d, n]`` feature differences, chosen minus rejected.
      labels: ``theta_original [n]`` in ``[0, 1]`` (1: the chosen response is preferred in every copy).
      length_difference: ``[n]`` ``len(rejected) - len(chosen)`` (tokens or words).
      target_mask: ``[n]`` bool, the pairs the random baseline may flip (default: the length candidates).
      length_feature: the row of ``features`` that is the length (``-1``: none).
      prompt_ids, chosen_ids, rejected_ids: ``[n]`` indices into the safety language's prompts and responses
        (language-model data only, else None).
      model_preset, model_seed: the decoder whose features these are (language-model data; ``""`` otherwise).
    """

    features: np.ndarray
    labels: np.ndarray
    length_difference: np.ndarray
    target_mask: np.ndarray
    length_feature: int = -1
    prompt_ids: np.ndarray | None = None
    chosen_ids: np.ndarray | None = None
    rejected_ids: np.ndarray | None = None
    model_preset: str = ""
    model_seed: int = 0

    @property
    def num_pairs(self) -> int:
        return int(self.features.shape[1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[0])

    @property
    def has_language_model(self) -> bool:
        return bool(self.model_preset) and self.prompt_ids is not None


def _orient(first_preferred, difference):
    """Columns oriented chosen-minus-rejected: ``difference [d, n]`` is first minus second."""
    return np.where(first_preferred[None], difference, -difference)


def linear_preference_data(key: jax.Array, n_pairs: int, dim: int, max_length: int = 20,
                           reward_scale: float = 1.0) -> PreferenceData:
    """Synthetic linear features: response ``y`` has ``phi(y) = [standardised length, z_1 .. z_{d-1}]`` with
    lengths uniform on ``1..max_length`` and ``z ~ N(0, 1)``; the true reward ``psi*`` ignores length
    (``psi*_0 = 0``) and has ``N(0, reward_scale^2 / (d - 1))`` weights elsewhere; the first response is
    chosen with probability ``sigma(psi* . (phi_1 - phi_2))``. Row 0 of ``features`` is the length."""
    if not (isinstance(n_pairs, int) and n_pairs >= 2):
        raise ValueError(f"n_pairs must be an integer >= 2, got {n_pairs!r}")
    if not (isinstance(dim, int) and dim >= 2):
        raise ValueError(f"dim must be an integer >= 2 (length plus at least one feature), got {dim!r}")
    length_key, feature_key, weight_key, label_key = jax.random.split(key, 4)
    lengths = np.asarray(jax.random.randint(length_key, (2, n_pairs), 1, max_length + 1), np.float64)
    scale = np.sqrt((max_length ** 2 - 1) / 12.0)
    standardised = (lengths - (max_length + 1) / 2.0) / scale
    other = np.asarray(jax.random.normal(feature_key, (2, dim - 1, n_pairs)), np.float64)
    phi = np.concatenate([standardised[:, None], other], axis=1)  # [2, d, n]
    psi_true = np.concatenate([[0.0], np.asarray(jax.random.normal(weight_key, (dim - 1,)), np.float64)
                               * reward_scale / np.sqrt(dim - 1)])
    difference = phi[0] - phi[1]
    preference_probability = 1.0 / (1.0 + np.exp(-psi_true @ difference))
    first_preferred = np.asarray(jax.random.uniform(label_key, (n_pairs,))) < preference_probability
    features = _orient(first_preferred, difference)
    length_difference = np.where(first_preferred, lengths[1] - lengths[0], lengths[0] - lengths[1])
    labels = np.ones(n_pairs)
    return PreferenceData(features, labels, length_difference,
                          poisoning.flip_candidates(labels, length_difference), length_feature=0)


class LanguageModelSetup(NamedTuple):
    """Frozen decoder outputs on all ``7 x 85`` safety-language sequences (prompt-major).

    sequence_features ``[7, 85, D]`` (last-token hidden states), table (:class:`poisoning.HeadTable` over the
    595 sequences, head tokens = the response alphabet), reference_logprobs ``[7, 85]`` (the decoder's policy
    restricted to the response alphabet), response_lengths ``[85]`` (content words), prompt_probs ``[7]``."""

    sequence_features: np.ndarray
    table: poisoning.HeadTable
    reference_logprobs: np.ndarray
    response_lengths: np.ndarray
    prompt_probs: np.ndarray


def language_model_setup(preset: str, model_seed: int, batch_size: int = 64) -> LanguageModelSetup:
    """A random-weight decoder from :func:`jaxsafe.llm.model.preset` (its vocabulary must hold the 14 safety
    language tokens) and its outputs on every safety-language sequence."""
    config = model_lib.preset(preset)
    if config.vocab_size < lang.VOCAB_SIZE:
        raise ValueError(f"--model {preset!r} has vocab_size {config.vocab_size} < {lang.VOCAB_SIZE} (the "
                         f"safety language's tokens)")
    graphdef, params = model_lib.init_params(config, jax.random.PRNGKey(model_seed))
    space = lang.enumerate_responses()
    n_prompts, n_responses = len(lang.TOPICS), len(space.content)
    seqs = lang.sequences(jnp.repeat(jnp.arange(n_prompts), n_responses), jnp.tile(jnp.arange(n_responses),
                                                                                   n_prompts))
    head_tokens = np.flatnonzero(np.asarray(lang.response_vocab_mask()))
    hidden, head_logits = poisoning.trunk_outputs(graphdef, params, seqs.tokens, seqs.attention_mask,
                                                  head_tokens, batch_size)
    features = np.asarray(model_lib.last_token_hidden(jnp.asarray(hidden), seqs.attention_mask))
    table = poisoning.head_table(seqs.tokens, seqs.response_mask, head_tokens, hidden, head_logits)
    reference = np.asarray(poisoning.reference_sequence_logprobs(table)).reshape(n_prompts, n_responses)
    lengths = np.array([len(c) for c in space.content], np.float64)
    return LanguageModelSetup(features.reshape(n_prompts, n_responses, -1).astype(np.float64), table,
                              reference, lengths, np.asarray(lang.prompt_distribution(), np.float64))


def lm_preference_data(key: jax.Array, n_pairs: int, preset: str = "tiny", model_seed: int = 0,
                       batch_size: int = 64, length_penalty: float = 0.5):
    """Language-model features on the synthetic safety language.

    Pairs ``x ~ prompt_distribution``, ``y_1, y_2 ~`` the hand-made base behaviour
    (:func:`lang.base_policy_logprobs`); ``y_1`` is chosen with probability ``sigma(s(x, y_1) - s(x, y_2))``
    where ``s = r - length_penalty * length`` (true helpfulness minus a verbosity penalty per content word;
    with the default 0.5 the clean labels prefer the longer response in about 39% of unequal-length pairs, so
    a length attack has room to act). Features are the decoder's last-token hidden states, ``Phi = phi(chosen)
    - phi(rejected)``; lengths are content words. Returns ``(PreferenceData, LanguageModelSetup)``.
    """
    if not (isinstance(n_pairs, int) and n_pairs >= 2):
        raise ValueError(f"n_pairs must be an integer >= 2, got {n_pairs!r}")
    if not np.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be finite, got {length_penalty}")
    setup = language_model_setup(preset, model_seed, batch_size)
    reward, _ = lang.reward_tables()
    score = jnp.asarray(reward - length_penalty * setup.response_lengths[None], jnp.float32)
    base = lang.base_policy_logprobs()
    pair_key, second_key, label_key = jax.random.split(key, 3)
    prompt_probs = jnp.asarray(setup.prompt_probs, jnp.float32)
    prompt_ids, first_ids = lang.sample_pairs(pair_key, base, prompt_probs, n_pairs)
    second_ids = jax.random.categorical(second_key, base[prompt_ids], axis=-1)
    first_preferred = jax.random.bernoulli(label_key, jax.nn.sigmoid(score[prompt_ids, first_ids]
                                                                      - score[prompt_ids, second_ids]))
    prompt_ids, first_ids, second_ids, first_preferred = (
        np.asarray(a) for a in (prompt_ids, first_ids, second_ids, first_preferred))
    chosen_ids = np.where(first_preferred, first_ids, second_ids).astype(np.int64)
    rejected_ids = np.where(first_preferred, second_ids, first_ids).astype(np.int64)
    data = _lm_data(setup, prompt_ids.astype(np.int64), chosen_ids, rejected_ids, np.ones(n_pairs), preset,
                    model_seed)
    return data, setup


def _lm_data(setup, prompt_ids, chosen_ids, rejected_ids, labels, preset, model_seed) -> PreferenceData:
    phi = setup.sequence_features
    features = (phi[prompt_ids, chosen_ids] - phi[prompt_ids, rejected_ids]).T
    length_difference = setup.response_lengths[rejected_ids] - setup.response_lengths[chosen_ids]
    candidates = poisoning.flip_candidates(labels, length_difference)
    return PreferenceData(features, labels, length_difference, candidates, -1, prompt_ids, chosen_ids,
                          rejected_ids, preset, int(model_seed))


def save_preference_data(path, data: PreferenceData) -> Path:
    """Write ``data`` as ``.npz`` (plain arrays; :func:`load_preference_data` reads it back)."""
    arrays = dict(features=data.features, labels=data.labels, length_difference=data.length_difference,
                  target_mask=data.target_mask, length_feature=np.int64(data.length_feature))
    if data.has_language_model:
        arrays.update(prompt_ids=data.prompt_ids, chosen_ids=data.chosen_ids, rejected_ids=data.rejected_ids,
                      model_preset=np.array(data.model_preset), model_seed=np.int64(data.model_seed))
    path = Path(path)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_preference_data(path) -> PreferenceData:
    """Read a preference ``.npz`` (no pickle). Required: ``features [d, n]``, ``labels [n]`` in ``[0, 1]``,
    ``length_difference [n]``. Optional: ``target_mask [n]`` (default: the length candidates),
    ``length_feature`` (default -1), and for language-model data ``prompt_ids``, ``chosen_ids``,
    ``rejected_ids`` with ``model_preset``, ``model_seed``. ``ValueError`` names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--data: {path} is not a file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as err:
        raise ValueError(f"--data: {path} holds pickled objects or is not an .npz archive ({err})") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"--data: {path} is not a readable .npz archive ({err})") from None
    for name in ("features", "labels", "length_difference"):
        if name not in arrays:
            raise ValueError(f"--data: {path} has no '{name}' array (has {sorted(arrays)})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", poisoning.RankDeficientWarning)  # the pipeline warns once, later
        features = poisoning.check_features(arrays["features"], f"'features' in {path}")
    n = features.shape[1]
    labels = poisoning.check_proportions(arrays["labels"], n, f"'labels' in {path}")
    length_difference = np.asarray(arrays["length_difference"], np.float64)
    if length_difference.shape != (n,) or not np.all(np.isfinite(length_difference)):
        raise ValueError(f"'length_difference' in {path} must be a finite vector of shape ({n},), got shape "
                         f"{length_difference.shape}")
    if "target_mask" in arrays:
        target_mask = np.asarray(arrays["target_mask"])
        if target_mask.shape != (n,) or target_mask.dtype != bool:
            raise ValueError(f"'target_mask' in {path} must be a bool vector of shape ({n},), got "
                             f"{target_mask.dtype} {target_mask.shape}")
    else:
        target_mask = poisoning.flip_candidates(labels, length_difference)
    length_feature = int(arrays.get("length_feature", -1))
    if not -1 <= length_feature < features.shape[0]:
        raise ValueError(f"'length_feature' in {path} must be -1 or a row of features (< "
                         f"{features.shape[0]}), got {length_feature}")
    extra = {}
    if "model_preset" in arrays:
        ids = {}
        for name, size in zip(_ID_KEYS, (len(lang.TOPICS), len(lang.enumerate_responses().content),
                                         len(lang.enumerate_responses().content))):
            if name not in arrays:
                raise ValueError(f"--data: {path} names a model_preset but has no '{name}' array")
            values = np.asarray(arrays[name])
            if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer) or values.min() < 0 \
                    or values.max() >= size:
                raise ValueError(f"'{name}' in {path} must be integers in [0, {size}) of shape ({n},)")
            ids[name] = values.astype(np.int64)
        extra = dict(ids, model_preset=str(arrays["model_preset"]),
                     model_seed=int(arrays.get("model_seed", 0)))
    return PreferenceData(features, labels, length_difference, target_mask, length_feature, **extra)


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class PoisonSettings:
    """Validated settings of one poisoning run (``ValueError`` names the command-line flag).

    source / pairs / dim / model: the built-in data (ignored with ``data``). attack, postprocess: see
    :data:`ATTACKS`, :data:`POSTPROCESS`. duplicates: copies per pair (the duplication grid).
    quality_filter_ratio, disparity_ratio, largest_disparity: RLHFPoison's selection. flips: the random
    baseline's budget (None: as many as RLHFPoison would flip). l2: Bradley-Terry ridge. beta, dpo_steps,
    dpo_learning_rate: last-layer DPO.
    milp_time_limit: seconds for the MILP. seed: data, attack and model seed.
    """

    source: str = "linear"
    pairs: int = 2000
    dim: int = 8
    model: str = "tiny"
    data: str | None = None
    attack: str = "rlhfpoison"
    postprocess: str = "lp"
    duplicates: int = 5
    quality_filter_ratio: float = 0.25
    disparity_ratio: float = 0.05
    largest_disparity: bool = True
    flips: int | None = None
    l2: float = poisoning.DEFAULT_L2
    beta: float = 0.1
    dpo_steps: int = 300
    dpo_learning_rate: float = 1e-2
    milp_time_limit: float = 60.0
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self):
        choices = (("--source", self.source, SOURCES), ("--attack", self.attack, ATTACKS),
                   ("--postprocess", self.postprocess, POSTPROCESS))
        for flag, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"{flag} must be one of {allowed}, got {value!r}")
        if self.model not in model_lib.PRESETS:
            raise ValueError(f"--model must be one of {sorted(model_lib.PRESETS)}, got {self.model!r}")
        integers = (("--pairs", self.pairs, 2), ("--dim", self.dim, 2), ("--duplicates", self.duplicates, 1),
                    ("--dpo-steps", self.dpo_steps, 1), ("--batch-size", self.batch_size, 1),
                    ("--seed", self.seed, 0))
        for flag, value, low in integers:
            if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low):
                raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")
        if self.flips is not None and not (isinstance(self.flips, int) and self.flips >= 0):
            raise ValueError(f"--flips must be an integer >= 0, got {self.flips!r}")
        ratios = (("--quality-filter", self.quality_filter_ratio), ("--disparity", self.disparity_ratio))
        for flag, value in ratios:
            if not (np.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"{flag} must be in [0, 1] (a fraction of the data set), got {value}")
        if not (np.isfinite(self.l2) and self.l2 >= 0):
            raise ValueError(f"--l2 must be a finite number >= 0, got {self.l2}")
        for flag, value in (("--beta", self.beta), ("--dpo-lr", self.dpo_learning_rate),
                            ("--milp-time-limit", self.milp_time_limit)):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{flag} must be a finite number > 0, got {value}")


QUICK = dict(pairs=1000, dpo_steps=100, milp_time_limit=10.0)


# ----------------------------------------------------------------------------- the pipeline


def _fit(data: PreferenceData, theta, l2: float) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", poisoning.RankDeficientWarning)
        return poisoning.fit_bradley_terry(data.features, theta, l2).psi


def _costs(theta, theta_original) -> dict:
    cost = poisoning.flip_cost(theta, theta_original)
    return {"flipped_pairs": cost, "fraction_of_pairs": cost / theta_original.size,
            "fractional_pairs": poisoning.count_fractional(theta)}


def _reward_distance(psi, psi_reference, psi_original) -> dict:
    """How far a reward model is from a reference: max-abs difference, and relative to the attack's shift."""
    gap = float(np.abs(psi - psi_reference).max())
    shift = float(np.abs(psi_reference - psi_original).max())
    relative = gap / shift if shift > 0 else float("nan")
    return {"max_abs_psi_difference": gap, "relative_to_attack_shift": relative}


def _attack(data: PreferenceData, settings: PoisonSettings, psi_original, key) -> poisoning.PoisonAttack:
    margins = data.features.T @ psi_original
    if settings.attack == "rlhfpoison":
        return poisoning.rlhfpoison_flips(data.labels, data.length_difference, margins,
                                          settings.quality_filter_ratio, settings.disparity_ratio,
                                          settings.largest_disparity)
    budget = settings.flips
    if budget is None:
        reference = poisoning.rlhfpoison_flips(data.labels, data.length_difference, margins,
                                               settings.quality_filter_ratio, settings.disparity_ratio)
        budget = reference.flipped.size
    available = int(data.target_mask.sum())
    if budget > available:
        raise ValueError(f"--flips must be at most the {available} target pairs, got {budget}")
    return poisoning.random_flips(key, data.labels, data.target_mask, int(budget))


def expected_length(logprobs, setup: LanguageModelSetup) -> float:
    """Exact ``E_x E_{y ~ pi} [length(y)]`` (content words) of a policy table ``[7, 85]``."""
    return float(np.sum(setup.prompt_probs * np.sum(np.exp(np.asarray(logprobs, np.float64))
                                                    * setup.response_lengths, axis=-1)))


def run_attack(data: PreferenceData, settings: PoisonSettings, key: jax.Array,
               setup: LanguageModelSetup | None = None,
               independent_dual: bool = True) -> tuple[dict, dict, list[dict]]:
    """Attack, post-process and evaluate one data set (no files written). ``independent_dual`` also solves the
    dual LP on its own (a check of the dual bound; slow for large ``d * n``).

    Returns ``(summary, thetas, dpo_rows)``: a JSON-able summary (costs in pairs and as a fraction, the dual
    bounds, fractional pairs, reward-model distances, solve seconds, downstream length preference), the theta
    vectors by name (``original``, ``attack``, ``lp``, ``rounded``, ``milp``, ``length_target``) and, when
    ``setup`` is given (language-model data), one row per recorded last-layer DPO step and data set.
    """
    n, labels = data.num_pairs, data.labels
    summary: dict = {"pairs": n, "dim": data.dim, "attack_name": settings.attack,
                     "duplicates": settings.duplicates}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", poisoning.RankDeficientWarning)
        poisoning.check_features(data.features, "features")
    summary["feature_rank"] = poisoning.feature_rank(data.features)
    summary["warnings"] = [str(w.message) for w in caught]
    for message in summary["warnings"]:
        warnings.warn(message, poisoning.RankDeficientWarning, stacklevel=2)
    start = time.perf_counter()
    psi = {"original": _fit(data, labels, settings.l2)}
    summary["fit_seconds_original"] = time.perf_counter() - start
    attack = _attack(data, settings, psi["original"], key)
    thetas = {"original": labels, "attack": attack.theta}
    psi["attack"] = _fit(data, attack.theta, settings.l2)
    summary["attack"] = {**_costs(attack.theta, labels),
                         **_reward_distance(psi["attack"], psi["original"], psi["original"])}

    if settings.postprocess != "none":
        start = time.perf_counter()
        lp = poisoning.postprocess_attack(data.features, labels, attack.theta)
        lp_seconds = time.perf_counter() - start
        thetas["lp"] = lp.theta
        psi["lp"] = _fit(data, lp.theta, settings.l2)
        start = time.perf_counter()
        dual_value = None
        if independent_dual:
            dual_value = poisoning.solve_dual_lp(data.features, labels, lp.target)[0]
        summary["lp"] = {**_costs(lp.theta, labels), "fully_flipped_pairs": lp.fully_flipped_pairs,
                         "dual_bound": lp.dual_bound, "dual_lp_value": dual_value,
                         "dual_lp_seconds": time.perf_counter() - start, "solve_seconds": lp_seconds,
                         "moment_residual": lp.moment_residual,
                         "cost_reduction_factor": attack.cost / lp.cost if lp.cost > 0 else float("inf"),
                         **_reward_distance(psi["lp"], psi["attack"], psi["original"])}
        rounded = poisoning.round_to_duplicates(lp.theta, settings.duplicates)
        thetas["rounded"] = rounded
        psi["rounded"] = _fit(data, rounded, settings.l2)
        rounded_residual = float(np.abs(data.features @ rounded - lp.target).max())
        summary["rounded"] = {**_costs(rounded, labels), "moment_residual": rounded_residual,
                              **_reward_distance(psi["rounded"], psi["attack"], psi["original"])}
        if settings.postprocess == "milp":
            tolerance = rounded_residual * (1 + 1e-6) + 1e-9  # the rounded LP solution is feasible
            start = time.perf_counter()
            milp = poisoning.minimum_cost_flips_milp(data.features, labels, lp.target, settings.duplicates,
                                                     tolerance, settings.milp_time_limit, incumbent=rounded)
            thetas["milp"] = milp.theta
            psi["milp"] = _fit(data, milp.theta, settings.l2)
            summary["milp"] = {**_costs(milp.theta, labels), "flipped_copies": milp.flipped_copies,
                               "moment_tolerance": tolerance, "moment_residual": milp.moment_residual,
                               "optimal": milp.optimal, "lower_bound": milp.lower_bound,
                               "relaxation_cost": milp.relaxation_cost, "fixed_pairs": milp.fixed_pairs,
                               "solve_seconds": time.perf_counter() - start,
                               **_reward_distance(psi["milp"], psi["attack"], psi["original"])}
    if data.length_feature >= 0:
        psi_target = psi["original"].copy()
        psi_target[data.length_feature] = psi["attack"][data.length_feature]
        target = poisoning.target_reward_flips(data.features, labels, psi_target, settings.l2)
        thetas["length_target"] = target.theta
        psi["length_target"] = _fit(data, target.theta, settings.l2)
        summary["length_target"] = {**_costs(target.theta, labels), "dual_bound": target.dual_bound,
                                    "psi_target": psi_target,
                                    **_reward_distance(psi["length_target"], psi_target, psi["original"])}
    summary["longer_preferred_rate"] = {name: poisoning.longer_preferred_rate(data.features, value,
                                                                              data.length_difference)
                                        for name, value in psi.items()}
    if data.length_feature >= 0:
        summary["length_weight"] = {name: float(value[data.length_feature]) for name, value in psi.items()}
    rows: list[dict] = []
    if setup is not None:
        summary["downstream"], rows = _downstream(data, settings, setup, psi, thetas)
    return summary, thetas, rows


def _downstream(data, settings, setup, psi, thetas):
    """Exact mean response length of the log-linear DPO policy (psi of each data set) and of last-layer DPO on
    the duplicated data sets (original, attack, rounded LP, MILP)."""
    loglinear = {name: expected_length(poisoning.loglinear_policy_logprobs(setup.reference_logprobs,
                                                                           setup.sequence_features, value,
                                                                           settings.beta), setup)
                 for name, value in psi.items()}
    names = [name for name in ("original", "attack", "rounded", "milp") if name in thetas]
    n_responses = setup.response_lengths.size
    chosen = data.prompt_ids * n_responses + data.chosen_ids
    rejected = data.prompt_ids * n_responses + data.rejected_ids
    record_every = max(1, settings.dpo_steps // 20)
    start = time.perf_counter()
    labelings = np.stack([thetas[k] for k in names])
    result = poisoning.train_last_layer_dpo(setup.table, chosen, rejected, labelings, settings.beta,
                                            settings.dpo_learning_rate, settings.dpo_steps, record_every)
    seconds = time.perf_counter() - start
    shape = setup.reference_logprobs.shape
    lengths = np.array([[expected_length(np.asarray(lp).reshape(shape), setup) for lp in per_name]
                        for per_name in result.sequence_logprobs])
    steps = list(range(0, settings.dpo_steps, record_every)) + [settings.dpo_steps]
    rows = [{"dataset": name, "step": step, "expected_length": lengths[i, j],
             "loss": float(result.losses[i, min(step, settings.dpo_steps - 1)])}
            for i, name in enumerate(names) for j, step in enumerate(steps)]
    final = {name: float(lengths[i, -1]) for i, name in enumerate(names)}
    summary = {"reference_expected_length": expected_length(setup.reference_logprobs, setup),
               "loglinear_expected_length": loglinear, "last_layer_dpo_expected_length": final,
               "last_layer_dpo_final_loss": {name: float(result.losses[i, -1])
                                             for i, name in enumerate(names)},
               "last_layer_dpo_seconds": seconds, "dpo_steps": steps, "dpo_curves": {
                   name: lengths[i] for i, name in enumerate(names)}}
    return summary, rows


def build_data(settings: PoisonSettings, key: jax.Array):
    """``(PreferenceData, LanguageModelSetup | None)`` from ``settings.data`` or the built-in source."""
    if settings.data is not None:
        data = load_preference_data(settings.data)
        setup = language_model_setup(data.model_preset, data.model_seed, settings.batch_size) \
            if data.has_language_model else None
        return data, setup
    if settings.source == "linear":
        return linear_preference_data(key, settings.pairs, settings.dim), None
    return lm_preference_data(key, settings.pairs, settings.model, settings.seed, settings.batch_size)


def run_poisoning(settings: PoisonSettings, out_dir) -> dict:
    """Run one poisoning experiment and write its run directory (refuses a non-empty ``out_dir``)."""
    check_new_run_dir(out_dir)  # before any work; RunDir checks again when it creates the directory
    start = time.perf_counter()
    data_key, attack_key = jax.random.split(jax.random.PRNGKey(settings.seed))
    data, setup = build_data(settings, data_key)
    run_dir = RunDir(out_dir)
    run_dir.write_config({"algorithm": "poison", "settings": dataclasses.asdict(settings)})
    save_preference_data(run_dir.path / "data.npz", data)
    summary, thetas, rows = run_attack(data, settings, attack_key, setup)
    summary["total_seconds"] = time.perf_counter() - start
    with open(run_dir.path / "flips.npz", "wb") as f:
        np.savez(f, **{f"theta_{name}": value for name, value in thetas.items()})
    if rows:
        run_dir.append_metrics(rows)
    run_dir.write_summary(summary)
    _plot_costs(run_dir.path / "costs.png", summary,
                f"{settings.attack} on {data.num_pairs} pairs, d = {data.dim}")
    if rows:
        downstream = summary["downstream"]
        curves = {name: np.asarray(curve)[None] for name, curve in downstream["dpo_curves"].items()}
        plotting.plot_mean_band(curves, run_dir.path / "dpo_length.png", xlabel="last-layer DPO step",
                                ylabel="exact mean response length (words)",
                                title=f"last-layer DPO, beta = {settings.beta:g}",
                                steps=np.asarray(downstream["dpo_steps"]))
    return to_jsonable(summary)


# ----------------------------------------------------------------------------- figures (not in plotting.py
# yet)


def _plot_costs(path, summary: dict, title: str) -> Path:
    """Bar chart of the flipped pairs of the attack and each post-processing, the dual bound as a line."""
    plt = plotting._pyplot()
    names = [name for name in ("attack", "lp", "rounded", "milp", "length_target") if name in summary]
    values = [summary[name]["flipped_pairs"] for name in names]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, values, color=["tab:red"] + ["tab:blue"] * (len(names) - 1))
    for index, value in enumerate(values):
        ax.text(index, value, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
    if "lp" in summary:
        ax.axhline(summary["lp"]["dual_bound"], color="black", ls="--", lw=1, label="dual lower bound")
        ax.legend(fontsize=8)
    ax.set_ylabel("flipped pairs")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_cost_scaling(path, panels: list[dict]) -> Path:
    """Side-by-side log-log panels for the benchmark: each panel is ``dict(series={label: (x, y)}, xlabel,
    ylabel, title)``; each series is drawn as markers joined in order of x."""
    plt = plotting._pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        markers = iter("os^vD<>pXh*P")
        for label, (x, y) in panel["series"].items():
            order = np.argsort(np.asarray(x, float))
            ax.plot(np.asarray(x, float)[order], np.asarray(y, float)[order], marker=next(markers, "o"), ms=5,
                    label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(panel["ylabel"])
        ax.set_title(panel.get("title", ""))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags of ``jaxsafe align poison`` to ``parser`` and set ``func=handle``."""
    parser.add_argument("--data", default=None, metavar="FILE",
                        help="preference .npz (features [d, n], labels [n], length_difference [n]); "
                             "default: build")
    parser.add_argument("--source", default="linear", choices=SOURCES,
                        help="built-in data: linear synthetic features or LM features on the safety language")
    parser.add_argument("--pairs", type=int, default=None, help="preference pairs (2000; quick 1000)")
    parser.add_argument("--dim", type=int, default=8, help="feature dimension of --source linear")
    parser.add_argument("--model", default="tiny", choices=sorted(model_lib.PRESETS),
                        help="decoder preset of --source lm (random weights)")
    parser.add_argument("--attack", default="rlhfpoison", choices=ATTACKS)
    parser.add_argument("--postprocess", default="lp", choices=POSTPROCESS,
                        help="lp: minimum-cost LP (+ rounding); milp: also the duplication MILP; none")
    parser.add_argument("--duplicates", type=int, default=5, help="copies per pair (the rounding grid)")
    parser.add_argument("--quality-filter", type=float, default=0.25, help="RLHFPoison quality-filter ratio")
    parser.add_argument("--disparity", type=float, default=0.05, help="RLHFPoison disparity-selection ratio")
    parser.add_argument("--smallest-disparity", action="store_true",
                        help="select the smallest length disparities (the released code's behaviour)")
    parser.add_argument("--flips", type=int, default=None,
                        help="random attack budget (default: RLHFPoison's)")
    parser.add_argument("--l2", type=float, default=poisoning.DEFAULT_L2, help="Bradley-Terry ridge")
    parser.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    parser.add_argument("--dpo-steps", type=int, default=None, help="last-layer DPO steps (300; quick 100)")
    parser.add_argument("--dpo-lr", type=float, default=1e-2, help="last-layer DPO Adam learning rate")
    parser.add_argument("--milp-time-limit", type=float, default=None, help="MILP seconds (60; quick 10)")
    parser.add_argument("--batch-size", type=int, default=64, help="feature-extraction batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, attack and model")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--out", default=None, help="run directory (default runs/<time>-align-poison)")
    parser.set_defaults(func=handle, parser=parser)
    return parser


def settings_from_namespace(namespace: argparse.Namespace) -> PoisonSettings:
    """Apply the ``--quick`` sizes to unset flags, then validate."""
    sizes = dict(pairs=namespace.pairs, dpo_steps=namespace.dpo_steps,
                 milp_time_limit=namespace.milp_time_limit)
    defaults = QUICK if namespace.quick else dict(pairs=2000, dpo_steps=300, milp_time_limit=60.0)
    sizes = {k: defaults[k] if v is None else v for k, v in sizes.items()}
    return PoisonSettings(source=namespace.source, dim=namespace.dim, model=namespace.model,
                          data=namespace.data, attack=namespace.attack, postprocess=namespace.postprocess,
                          duplicates=namespace.duplicates, quality_filter_ratio=namespace.quality_filter,
                          disparity_ratio=namespace.disparity,
                          largest_disparity=not namespace.smallest_disparity, flips=namespace.flips,
                          l2=namespace.l2, beta=namespace.beta, dpo_learning_rate=namespace.dpo_lr,
                          seed=namespace.seed, batch_size=namespace.batch_size, **sizes)


def _print_summary(summary: dict) -> None:
    def line(name, block):
        print(f"{name:>14} {block['flipped_pairs']:>12.2f} {100 * block['fraction_of_pairs']:>9.3f}% "
              f"{block['fractional_pairs']:>11d}")

    print(f"\n{'':>14} {'flipped':>12} {'of pairs':>10} {'fractional':>11}")
    for name in ("attack", "lp", "rounded", "milp", "length_target"):
        if name in summary:
            line(name, summary[name])
    if "lp" in summary:
        lp = summary["lp"]
        dual = "not solved" if lp["dual_lp_value"] is None else f"{lp['dual_lp_value']:.4f}"
        print(f"\ndual lower bound {lp['dual_bound']:.4f} (dual LP {dual}); cost reduction "
              f"x{lp['cost_reduction_factor']:.2f}; |psi_lp - psi_attack|_inf = "
              f"{lp['max_abs_psi_difference']:.2e}")
    if "downstream" in summary:
        print("mean length after last-layer DPO:",
              {k: round(v, 4) for k, v in summary["downstream"]["last_layer_dpo_expected_length"].items()})


def handle(namespace: argparse.Namespace) -> int:
    """Run ``jaxsafe align poison`` from parsed flags (``ValueError`` / ``FileExistsError`` on bad input)."""
    settings = settings_from_namespace(namespace)
    out = namespace.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-align-poison"
    summary = run_poisoning(settings, out)
    _print_summary(summary)
    print(f"\nrun directory: {out}")
    return 0
