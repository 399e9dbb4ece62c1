"""SepsisSim: a small continuous-action septic-shock patient simulator in JAX, for offline guarded safe RL (OGSRL).

Why: OGSRL (Yan, Shen et al., NeurIPS 2025) learns treatment policies from MIMIC-III, where no policy can be scored
against the true dynamics. SepsisSim is a stand-in with the same interface as the paper's setting: 4-hour steps,
20-step episodes, a 2-D continuous action (IV fluid and vasopressor dose), a vital-sign observation with SpO2,
urine output, mean arterial pressure, a SOFA-like severity score and static covariates, heterogeneous patients,
death and discharge as terminal events, reward = negative severity, and the paper's two physiological costs
(SpO2 < 92 %, urine output < 0.5 mL/kg/h). Every policy learned from its data can also be run in the simulator.

What it is modelled on (qualitative shapes, not fitted values; the constants below are ours):

* Blood pressure as preload x vascular tone: ``MAP = MAP_base (0.85 + 0.15 tanh V)(1 - 0.25 I) + vasopressor
  Emax term`` -- a Frank-Starling-like saturating response to the circulating-volume index ``V`` (fluid
  responsiveness fades once the patient is "full", as in the fluid-responsiveness literature, e.g. Marik &
  Monnet 2011), sepsis-induced vasodilation proportional to the infection burden ``I``, and a saturating
  (Emax) norepinephrine dose-response, as in the Acute Hypotension task of Futoma et al. 2020 that OGSRL also uses.
* Capillary leak grows with ``I`` (Surviving Sepsis Campaign rationale for fluid-balance caution): part of every
  litre leaves the circulation into tissue water ``E``; lung water above a threshold lowers SpO2 (fluid overload
  and pulmonary oedema), so fluids trade hypotension and oliguria against hypoxaemia -- the tension between the
  two costs.
* Acute kidney injury from sustained hypotension (MAP < 65 mmHg, the SSC target): kidney function ``K`` falls with
  the MAP deficit and recovers slowly; urine output is ``K`` times a pressure-driven term.
* Lactate rises with hypoperfusion, infection and high vasopressor doses; the SOFA-like score has five organ
  sub-scores in [0, 4] (cardiovascular from MAP and vasopressor dose as in SOFA, respiratory from SpO2, renal from
  urine output, coagulation/liver from ``I``, CNS/perfusion from lactate), continuous rather than banded so the
  reward is not piecewise constant.
* Per-step death probability ``sigmoid(-6.8 + 0.32 SOFA + 0.03 (age - 60) + 3 max(v - 0.6, 0))`` (organ failure
  and very high vasopressor doses kill; Vincent et al. 1998 for SOFA vs mortality), discharge with probability 0.5
  per step once the infection has cleared (``I < 0.15``) and SOFA < 3.

Per patient (drawn at reset, so patients differ): age, weight, initial infection ``I0``, its clearance rate (some
patients worsen), baseline MAP, initial volume, fluid responsiveness, vasopressor sensitivity, lung fragility and
kidney reserve. Only age and weight are observed (the static covariates); the rest is why the same treatment works
differently in different patients.

Units. Action ``a in [-1, 1]^2``: fluid ``(a_0 + 1) / 2 * MAX_FLUID_L`` litres per 4 h, vasopressor ``(a_1 + 1) / 2
* MAX_VASO`` mcg/kg/min norepinephrine-equivalent. Observation (9 floats, O(1) scaled; ``vitals(obs)`` undoes the
scale): ``OBS_NAMES`` = MAP/100 mmHg, HR/100 bpm, SpO2/100, urine output mL/kg/h, lactate/10 mmol/L, SOFA/10,
cumulative fluid balance/10 L, age/100 y, weight/100 kg. Reward per step ``-SOFA`` (the official code's negated
SOFA), and ``-death_penalty`` on the step of death (otherwise dying early would end the negative rewards: a
reward hack). Costs ``[SpO2 < 92 %, urine output < 0.5 mL/kg/h]`` of the new observation, each 0 or 1.
``info``: ``died``, ``discharged`` (bool), ``sofa``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxsafe.envs.core import SafeEnv, spaces
from jaxsafe.types import TimeStep
from jaxsafe.validation import non_negative, positive

__all__ = ["SepsisSim", "SepsisParams", "SepsisState", "OBS_NAMES", "OBS_SCALE", "COST_NAMES", "MAX_FLUID_L",
           "MAX_VASO", "SPO2_THRESHOLD", "URINE_THRESHOLD", "vitals", "doses", "clinician_action",
           "observed_reward_and_costs"]

OBS_NAMES = ("map", "heart_rate", "spo2", "urine_output", "lactate", "sofa", "fluid_balance", "age", "weight")
#: ``vitals = obs * OBS_SCALE`` (mmHg, bpm, %, mL/kg/h, mmol/L, points, L, years, kg).
OBS_SCALE = np.asarray([100.0, 100.0, 100.0, 1.0, 10.0, 10.0, 10.0, 100.0, 100.0], np.float32)
COST_NAMES = ("spo2_below_92", "urine_below_0.5")
MAX_FLUID_L = 2.0  # litres per 4 h at a_0 = 1
MAX_VASO = 1.0  # mcg/kg/min at a_1 = 1
SPO2_THRESHOLD = 92.0
URINE_THRESHOLD = 0.5


@struct.dataclass
class SepsisParams:
    """Traceable parameters: episode length, death penalty, observation-noise scale (1 = the documented noise)."""

    max_steps: int = 20
    death_penalty: float = 100.0
    noise_scale: float = 1.0


class SepsisState(NamedTuple):
    patient: jax.Array  # [10] per-patient constants (see _draw_patient)
    infection: jax.Array  # I >= 0
    volume: jax.Array  # circulating-volume index V (0 = euvolaemic)
    tissue_water: jax.Array  # E, litres of leaked fluid (lung water above 1 L lowers SpO2)
    kidney: jax.Array  # K in [0.05, 1]
    lactate: jax.Array  # mmol/L
    fluid_balance: jax.Array  # cumulative in - out, litres
    obs: jax.Array  # [9] the last observation
    time: jax.Array  # int32 steps taken


# Index of each per-patient constant in SepsisState.patient.
_AGE, _WEIGHT, _CLEAR, _MAP, _FLUID_RESP, _VASO_SENS, _LUNG, _I0, _V0, _K0 = range(10)


def _draw_patient(key) -> jax.Array:
    u = jax.random.uniform(key, (10,))
    clear = jnp.clip(0.10 + 0.06 * jax.random.normal(jax.random.fold_in(key, 1)), -0.04, 0.30)
    return jnp.stack([
        20.0 + 70.0 * u[0],  # age, years
        50.0 + 60.0 * u[1],  # weight, kg
        clear,  # infection clearance per 4 h (negative: worsening)
        72.0 + 18.0 * u[3],  # baseline MAP, mmHg
        0.5 + 1.0 * u[4],  # fluid responsiveness
        0.5 + 1.0 * u[5],  # vasopressor sensitivity
        0.5 + 1.0 * u[6],  # lung fragility
        0.4 + 0.6 * u[7],  # initial infection burden
        -1.5 + 1.5 * u[8],  # initial volume index (hypovolaemic)
        0.5 + 0.5 * u[9],  # initial kidney function
    ])


def doses(action: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(fluid litres per 4 h, vasopressor mcg/kg/min)`` of an action in ``[-1, 1]^2`` (clipped to the box)."""
    action = jnp.clip(action, -1.0, 1.0)
    return (action[..., 0] + 1.0) * 0.5 * MAX_FLUID_L, (action[..., 1] + 1.0) * 0.5 * MAX_VASO


def vitals(obs) -> dict:
    """The observation in clinical units, ``{name: array}`` (``OBS_NAMES``); works on any leading batch shape."""
    values = jnp.asarray(obs) * OBS_SCALE
    return {name: values[..., i] for i, name in enumerate(OBS_NAMES)}


def _sofa(mean_map, spo2, urine, lactate, infection, vaso):
    cardio = jnp.where(vaso > 0.02, 1.0 + 3.0 * jnp.minimum(vaso / 0.4, 1.0),
                       jnp.clip((70.0 - mean_map) / 10.0, 0.0, 1.0))
    respiratory = jnp.clip((97.0 - spo2) / 2.0, 0.0, 4.0)
    renal = jnp.clip((1.0 - urine) / 0.2, 0.0, 4.0)
    liver = 4.0 * jnp.clip(infection, 0.0, 1.0)
    perfusion = jnp.clip((lactate - 2.0) / 1.5, 0.0, 4.0)
    return cardio + respiratory + renal + liver + perfusion


def _observe(key, patient, infection, volume, tissue_water, kidney, lactate, fluid_balance, vaso, noise_scale):
    """The noisy vitals of a latent state after a vasopressor dose ``vaso``: ``(obs [9], sofa)``."""
    noise = noise_scale * jax.random.normal(key, (5,))
    mean_map = (patient[_MAP] * (0.85 + 0.15 * jnp.tanh(volume)) * (1.0 - 0.25 * jnp.clip(infection, 0.0, 1.2))
                + 35.0 * patient[_VASO_SENS] * vaso / (vaso + 0.25) + 3.0 * noise[0])
    heart_rate = 75.0 + 35.0 * infection + 12.0 * jnp.maximum(-volume, 0.0) + 25.0 * vaso + 4.0 * noise[1]
    spo2 = jnp.clip(98.5 - patient[_LUNG] * (4.0 * infection + 3.0 * jnp.maximum(tissue_water - 1.0, 0.0))
                    + 0.7 * noise[2], 70.0, 100.0)
    urine = jnp.maximum(kidney * (mean_map - 45.0) / 20.0 + 0.3 * jnp.tanh(volume) + 0.05 * noise[3], 0.0)
    lactate = jnp.maximum(lactate + 0.1 * noise[4], 0.3)
    sofa = _sofa(mean_map, spo2, urine, lactate, infection, vaso)
    values = jnp.stack([mean_map, heart_rate, spo2, urine, lactate, sofa, fluid_balance, patient[_AGE],
                        patient[_WEIGHT]])
    return (values / OBS_SCALE).astype(jnp.float32), sofa


def observed_reward_and_costs(obs, died, death_penalty) -> tuple[jax.Array, jax.Array]:
    """``(reward, cost [2])`` of a step that led to observation ``obs [9]``: ``-death_penalty`` if ``died``, else
    minus the observed SOFA-like score, and the two cost indicators of ``obs``. :meth:`SepsisSim.step` gives the
    same up to float32 rounding (it uses the unscaled score); learned models (OGSRL's ensemble) use this."""
    v = vitals(obs)
    reward = jnp.where(died, -jnp.asarray(death_penalty, jnp.float32), -v["sofa"]).astype(jnp.float32)
    cost = jnp.stack([v["spo2"] < SPO2_THRESHOLD, v["urine_output"] < URINE_THRESHOLD], -1).astype(jnp.float32)
    return reward, cost


def clinician_action(obs: jax.Array, key: jax.Array, noise: float = 1.0) -> jax.Array:
    """The noisy rule-based standard of care: an action in ``[-1, 1]^2`` for one observation.

    Habits: a maintenance fluid of 0.25 L per 4 h, +0.75 L when MAP < 65 mmHg and +0.5 L when urine output is below
    0.5 mL/kg/h, cut to 30 % once the cumulative balance passes 6 L and halved when SpO2 < 92 % (fluid caution);
    vasopressors late, only when MAP < 65 after 3 L of fluid, at ``0.05 + 0.02 (65 - MAP)`` mcg/kg/min. Noise
    (``noise`` scales it): a log-normal factor (sd 0.3) and sd 0.1 L on fluid, sd 0.03 on vasopressor, and 15 % of
    the time the vasopressor decision is skipped (no dose), so the data cover a band around the rule.
    """
    v = vitals(obs)
    low_map = (v["map"] < 65.0).astype(jnp.float32)
    oliguric = (v["urine_output"] < URINE_THRESHOLD).astype(jnp.float32)
    fluid = 0.25 + 0.75 * low_map + 0.5 * oliguric
    fluid = fluid * jnp.where(v["fluid_balance"] > 6.0, 0.3, 1.0) * jnp.where(v["spo2"] < SPO2_THRESHOLD, 0.5, 1.0)
    vaso = jnp.where((v["map"] < 65.0) & (v["fluid_balance"] > 3.0), 0.05 + 0.02 * (65.0 - v["map"]), 0.0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    fluid = fluid * jnp.exp(0.3 * noise * jax.random.normal(k1)) + 0.1 * noise * jax.random.normal(k2)
    vaso = jnp.where(jax.random.uniform(k4) < 0.15 * noise, 0.0, vaso + 0.03 * noise * jax.random.normal(k3))
    fluid = jnp.clip(fluid, 0.0, MAX_FLUID_L)
    vaso = jnp.clip(vaso, 0.0, MAX_VASO)
    return jnp.stack([2.0 * fluid / MAX_FLUID_L - 1.0, 2.0 * vaso / MAX_VASO - 1.0]).astype(jnp.float32)


class SepsisSim(SafeEnv):
    """The septic-shock simulator (module docstring: dynamics, units, costs). Two costs, ``COST_NAMES``."""

    n_costs = 2
    param_rules = {
        "max_steps": positive("steps of 4 h; an integer >= 1"),
        "death_penalty": non_negative("reward units"),
        "noise_scale": non_negative("1 = the documented observation noise"),
    }

    @property
    def name(self) -> str:
        return "SepsisSim"

    @property
    def default_params(self) -> SepsisParams:
        return SepsisParams()

    def observation_space(self, params):
        return spaces.Box(-10.0, 10.0, (len(OBS_NAMES),), jnp.float32)

    def action_space(self, params):
        return spaces.Box(-1.0, 1.0, (2,), jnp.float32)

    def _info(self, died, discharged, sofa):
        return {"died": died, "discharged": discharged, "sofa": jnp.asarray(sofa, jnp.float32)}

    def reset(self, key, params):
        self.check_params(params)
        patient_key, obs_key = jax.random.split(key)
        patient = _draw_patient(patient_key)
        infection, volume, kidney = patient[_I0], patient[_V0], patient[_K0]
        lactate = 1.5 + 2.0 * infection
        zero = jnp.zeros((), jnp.float32)
        obs, sofa = _observe(obs_key, patient, infection, volume, zero, kidney, lactate, zero, zero, params.noise_scale)
        state = SepsisState(patient, infection, volume, zero, kidney, lactate, zero, obs, jnp.zeros((), jnp.int32))
        false = jnp.zeros((), bool)
        return state, TimeStep(obs, zero, jnp.zeros((2,), jnp.float32), false, false, self._info(false, false, sofa))

    def step(self, key, state: SepsisState, action, params):
        fluid, vaso = doses(jnp.asarray(action, jnp.float32))
        p = state.patient
        k_infection, k_obs, k_death, k_discharge = jax.random.split(key, 4)
        infection = jnp.clip(state.infection * (1.0 - p[_CLEAR]) + 0.02 * jax.random.normal(k_infection), 0.0, 1.2)
        leak = 0.2 + 0.4 * infection
        volume = (1.0 - leak) * state.volume + 0.8 * p[_FLUID_RESP] * fluid - 0.15
        tissue_water = 0.85 * state.tissue_water + leak * fluid
        previous_map = vitals(state.obs)["map"]
        kidney = jnp.clip(state.kidney + 0.05 * (1.0 - state.kidney) - 0.012 * jnp.maximum(65.0 - previous_map, 0.0),
                          0.05, 1.0)
        lactate = 0.5 * state.lactate + 0.5 * (1.0 + 0.15 * jnp.maximum(65.0 - previous_map, 0.0) + 2.0 * infection
                                               + 3.0 * vaso**2)
        urine_litres = vitals(state.obs)["urine_output"] * p[_WEIGHT] * 4.0 / 1000.0
        fluid_balance = state.fluid_balance + fluid - urine_litres
        obs, sofa = _observe(k_obs, p, infection, volume, tissue_water, kidney, lactate, fluid_balance, vaso,
                             params.noise_scale)
        death_logit = -6.8 + 0.32 * sofa + 0.03 * (p[_AGE] - 60.0) + 3.0 * jnp.maximum(vaso - 0.6, 0.0)
        died = jax.random.uniform(k_death) < jax.nn.sigmoid(death_logit)
        recovered = (infection < 0.15) & (sofa < 3.0)
        discharged = ~died & recovered & (jax.random.uniform(k_discharge) < 0.5)
        reward = jnp.where(died, -params.death_penalty, -sofa).astype(jnp.float32)
        v = vitals(obs)
        cost = jnp.stack([v["spo2"] < SPO2_THRESHOLD, v["urine_output"] < URINE_THRESHOLD]).astype(jnp.float32)
        time = state.time + 1
        terminated = died | discharged
        truncated = (time >= params.max_steps) & ~terminated
        new_state = SepsisState(p, infection, volume, tissue_water, kidney, lactate, fluid_balance, obs, time)
        return new_state, TimeStep(obs, reward, cost, terminated, truncated, self._info(died, discharged, sofa))
