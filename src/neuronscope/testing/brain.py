"""A small synthetic brain study on digit images, in the files neuroscientists have: an NWB
session (spike-sorted units in two areas, a trials table) and RSA-toolbox MATLAB files of
subject and model RDMs — so the "Compare a model with brain data" walkthrough runs from a
fresh clone (``python -m neuronscope.testing.brain study/``).

The simulated brain sees ``n_stimuli`` digit images (3 per digit class by default) and has
two areas with known representations:

* ``V1`` — rectified random projections of the pixel intensities (an early, pixel-like code);
* ``IT`` — rectified random projections of the hidden layer ``act2`` of the trained digits
  MLP (:func:`~neuronscope.testing.digits.train_digits`, seed 0), i.e. a category-like code.

Files written by :func:`synthetic_study` (all seeded, deterministic):

* ``stimuli.npy`` (n_stimuli, 64) — the standardized digit inputs (what the digits nets
  take; row i is stimulus id i), ``labels.npy`` — their digit classes;
* ``session.nwb`` — a pynwb file: electrodes with ``location`` V1 / IT, one unit per
  electrode, a trials table (column ``stimulus``: the image id, every image ``repeats``
  times in shuffled order, 0.5 s trials 0.2 s apart). Spikes are Poisson: a baseline of 5 Hz,
  and from the area's latency (V1 50 ms, IT 150 ms) to the trial's end 5 Hz + the unit's
  response (up to ~60 Hz);
* ``brain_rdms.mat`` — variable ``RDMs``: a subjects × sessions struct array (fields ``RDM``,
  ``name`` = ``"sNN sessK"``, ``color``) of correlation-distance RDMs of each simulated
  subject's IT responses (a subject-specific mixing of the IT code plus session noise);
* ``model_rdms.mat`` — variable ``Models``: a 1 × k struct array of model RDMs (``pixels``,
  ``mlp act1``, ``mlp act2``, ``mlp act2 untrained``, ``category``, ``random``).

The IT code is built on the trained MLP, so its layers are the best models, the untrained
MLP and the random RDM the worst; the NWB session's IT units carry stimulus information
only from 150 ms after trial onset (V1 from 50 ms), which RSA over time shows.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from neuronscope.errors import NeuronscopeError

__all__ = ["AREAS", "synthetic_study"]

#: Areas of the simulated brain and their response latencies (seconds after trial start).
AREAS = {"V1": 0.05, "IT": 0.15}
_BASE_HZ = 5.0
_PEAK_HZ = 60.0
_TRIAL_S = 0.5
_GAP_S = 0.2


def _corr_rdm(x: np.ndarray) -> np.ndarray:
    z = x - x.mean(1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return np.clip(1.0 - z @ z.T, 0.0, 2.0) * (1 - np.eye(len(x)))


def _struct(rdms: list[list[np.ndarray]], names: list[list[str]], colors: np.ndarray) -> np.ndarray:
    rec = np.empty((len(rdms), len(rdms[0])), dtype=[("RDM", object), ("name", object), ("color", object)])
    for i, row in enumerate(rdms):
        for j, sq in enumerate(row):
            rec[i, j]["RDM"] = sq
            rec[i, j]["name"] = names[i][j]
            rec[i, j]["color"] = colors[(i * len(row) + j) % len(colors)][None]
    return rec


def _area_codes(x: np.ndarray, units: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """(n_stimuli, units) non-negative response profiles of V1 and IT, each unit's scaled to
    a peak of 1."""
    import torch

    from neuronscope.testing.digits import train_digits

    mlp = train_digits("mlp", 0)
    with torch.no_grad():
        h = mlp.act2(mlp.fc2(mlp.act1(mlp.fc1(torch.from_numpy(x))))).numpy().astype(np.float64)
    out = {}
    for area, feats in (("V1", x.astype(np.float64)), ("IT", h)):
        f = (feats - feats.mean(0)) / np.where(feats.std(0) > 0, feats.std(0), 1.0)
        r = np.maximum(f @ rng.normal(size=(f.shape[1], units)) / np.sqrt(f.shape[1]), 0.0)
        out[area] = r / np.maximum(r.max(0, keepdims=True), 1e-9)
    return out


def _write_nwb(path: Path, codes: dict[str, np.ndarray], repeats: int, rng: np.random.Generator) -> None:
    from pynwb import NWBHDF5IO, NWBFile

    n = next(iter(codes.values())).shape[0]
    order = np.concatenate([rng.permutation(n) for _ in range(repeats)])
    starts = np.arange(len(order)) * (_TRIAL_S + _GAP_S)
    end = float(starts[-1] + _TRIAL_S + _GAP_S)
    nwb = NWBFile(session_description="neuronscope synthetic study: digit images, areas V1 and IT",
                  identifier="neuronscope-synthetic-study", session_start_time=datetime(2024, 1, 1, tzinfo=UTC))
    dev = nwb.create_device(name="probe")
    group = nwb.create_electrode_group(name="probe0", description="one shank through V1 and IT",
                                       location="V1, IT", device=dev)
    row = 0
    for area, code in codes.items():
        latency = AREAS[area]
        for u in range(code.shape[1]):
            nwb.add_electrode(group=group, location=area)
            # baseline everywhere, plus the unit's response from the latency to the trial end
            base = rng.uniform(0.0, end, size=rng.poisson(_BASE_HZ * end))
            evoked = []
            for t0, s in zip(starts, order, strict=True):
                lam = _PEAK_HZ * code[s, u] * (_TRIAL_S - latency)
                evoked.append(t0 + latency + rng.uniform(0.0, _TRIAL_S - latency, size=rng.poisson(lam)))
            spikes = np.sort(np.concatenate([base, *evoked]))
            nwb.add_unit(spike_times=spikes, electrodes=[row], electrode_group=group)
            row += 1
    nwb.add_trial_column(name="stimulus", description="digit image id (row of stimuli.npy)")
    for t0, s in zip(starts, order, strict=True):
        nwb.add_trial(start_time=float(t0), stop_time=float(t0 + _TRIAL_S), stimulus=int(s))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


def synthetic_study(out_dir: str | Path, n_stimuli: int = 30, n_subjects: int = 8, n_sessions: int = 2,
                    units: int = 12, repeats: int = 4, seed: int = 0) -> dict[str, Path]:
    """Write the synthetic study (see the module docstring) into ``out_dir`` and return the
    paths by name: ``stimuli``, ``labels``, ``nwb``, ``brain_rdms``, ``model_rdms``.
    ``units`` per area in the NWB file; ``n_stimuli`` images taken in turn from each digit
    class of the digits test split."""
    import scipy.io

    from neuronscope.testing.digits import digits_data, train_digits

    if n_stimuli < 4 or n_subjects < 2 or n_sessions < 1 or units < 1 or repeats < 1:
        raise NeuronscopeError("synthetic_study needs n_stimuli >= 4, n_subjects >= 2 and positive sessions, "
                               "units and repeats")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x_all, y_all = digits_data("test", "mlp")
    per_class = [np.flatnonzero(y_all == c) for c in range(10)]
    pick = [per_class[i % 10][i // 10] for i in range(n_stimuli)]
    x, y = x_all[pick], y_all[pick]
    np.save(out / "stimuli.npy", x)
    np.save(out / "labels.npy", y)
    codes = _area_codes(x, units, rng)
    _write_nwb(out / "session.nwb", codes, repeats, rng)

    colors = np.array([[0.27, 0.47, 0.67], [0.8, 0.4, 0.0], [0.2, 0.6, 0.2], [0.6, 0.2, 0.6]])
    it = codes["IT"]
    subj_rdms, subj_names = [], []
    for s in range(n_subjects):
        mix = rng.normal(size=(it.shape[1], 40))  # a subject's own voxels/electrodes
        signal = it @ mix
        row, names = [], []
        for k in range(n_sessions):
            noisy = signal + rng.normal(scale=1.5 * signal.std(), size=signal.shape)
            row.append(_corr_rdm(noisy))
            names.append(f"s{s + 1:02d} sess{k + 1}")
        subj_rdms.append(row)
        subj_names.append(names)
    scipy.io.savemat(out / "brain_rdms.mat", {"RDMs": _struct(subj_rdms, subj_names, colors)})

    import torch

    def hidden(model: Any) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            a1 = model.act1(model.fc1(torch.from_numpy(x)))
            a2 = model.act2(model.fc2(a1))
        return a1.numpy(), a2.numpy()

    m1, m2 = hidden(train_digits("mlp", 0))
    _, u2 = hidden(train_digits("mlp", 0, trained=False))
    cat = (y[:, None] != y[None, :]).astype(np.float64)
    rnd = rng.random((n_stimuli, n_stimuli))
    rnd = np.triu(rnd, 1) + np.triu(rnd, 1).T
    models = [("pixels", _corr_rdm(x)), ("mlp act1", _corr_rdm(m1)), ("mlp act2", _corr_rdm(m2)),
              ("mlp act2 untrained", _corr_rdm(u2)), ("category", cat), ("random", rnd)]
    scipy.io.savemat(out / "model_rdms.mat",
                     {"Models": _struct([[m for _, m in models]], [[n for n, _ in models]], colors)})
    return {"stimuli": out / "stimuli.npy", "labels": out / "labels.npy", "nwb": out / "session.nwb",
            "brain_rdms": out / "brain_rdms.mat", "model_rdms": out / "model_rdms.mat"}


def main(argv: list[str] | None = None) -> None:
    """``python -m neuronscope.testing.brain OUT_DIR``: write the study and list its files."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m neuronscope.testing.brain OUT_DIR", file=sys.stderr)
        sys.exit(2)
    for name, path in synthetic_study(args[0]).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
