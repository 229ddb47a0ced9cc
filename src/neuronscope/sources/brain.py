"""Brain data as populations: spike-sorted NWB files, response arrays and RDM files.

* :func:`nwb_population` — an NWB file's Units table (spike times) binned into trial or
  stimulus intervals (the trials table, or given intervals) and optional time bins. All
  spikes are read once as the flat ragged array and counted with one ``searchsorted``.
* :func:`load_responses` — response arrays (``.npy``, ``.npz``, HDF5, CSV): stimuli × units,
  optionally with repeats (e.g. fMRI voxel responses).
* :func:`load_rdms` — precomputed RDMs, one per subject, session or model: MATLAB
  RSA-toolbox struct arrays (v5/v7 and v7.3), rsatoolbox's HDF5, plain ``.npy``/``.npz``/
  ``.mat``/``.h5`` arrays (square, stacks or condensed).

A population is an ``xarray.DataArray`` with dims ``("sample", "neuron")``; brain
populations carry sample coords ``stimulus``, ``repeat`` (and ``time``) and neuron coords
``site`` and ``unit``.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from neuronscope.errors import NeuronscopeError
from neuronscope.rdms import RDMs

# --------------------------------------------------------------------------- reading files


@contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Turn every way a file can fail to parse (truncated, empty, not the format its suffix
    says, holding pickled objects) into one :class:`NeuronscopeError` naming the file.

    Nothing is ever unpickled: ``np.load`` runs with ``allow_pickle=False``, so an object
    array is refused, and is reported as such.
    """
    try:
        yield
    except NeuronscopeError:
        raise
    except (ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, UnicodeDecodeError):
            raise NeuronscopeError(f"{path} is not UTF-8 text ({msg[:120]}); save it as UTF-8") from None
        if "pickle" in msg.lower():
            raise NeuronscopeError(
                f"{path} holds pickled (object) data, which neuronscope never loads; "
                f"save plain numeric {what} arrays"
            ) from None
        raise NeuronscopeError(
            f"cannot read {what} file {path} ({type(e).__name__}: {msg[:200]}); "
            "check that it is a complete file of the type its suffix names"
        ) from None


def load_npy(path: Path, what: str) -> np.ndarray:
    """A ``.npy`` file's array, never unpickling: a file without the NPY header (which
    ``np.load`` would try as a pickle), a truncated file or an object array is refused."""
    with reading(path, what):
        with open(path, "rb") as f:
            head = f.read(6)
            if head != b"\x93NUMPY":
                kind = "is empty" if not head else "has no NPY header"
                raise NeuronscopeError(f"{path} {kind}, so it is not a .npy file; save {what} arrays with np.save")
            f.seek(0)
            return np.load(f, allow_pickle=False)


def load_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, never unpickling (object arrays are refused); the file
    is closed whatever happens (``np.load`` on a path leaks it when the archive is bad)."""
    with reading(path, what), open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _numeric(a: Any, what: str) -> np.ndarray:
    """``a`` as a real numeric ndarray: complex values and non-numbers are refused."""
    if not isinstance(a, np.ndarray):
        raise NeuronscopeError(f"{what} is not an array; save a numeric array (np.save / np.savez)")
    if a.dtype.kind == "c":
        raise NeuronscopeError(f"{what} is complex-valued; give real responses (e.g. np.abs or .real first)")
    if a.dtype.kind not in "biuf":
        raise NeuronscopeError(f"{what} has dtype {a.dtype}, not numbers; give numeric (stimuli, units) values")
    return a


# --------------------------------------------------------------------------- response arrays


def responses_population(
    data: np.ndarray,
    stimulus: Sequence[Any] | None = None,
    repeat: Sequence[int] | None = None,
    site: str = "responses",
) -> xr.DataArray:
    """Build a brain population from a response array.

    ``data`` is (stimuli, units) — optionally with ``stimulus`` ids and ``repeat`` indices per
    row — or (stimuli, repeats, units), which is flattened stimulus-major with ``repeat``
    filled in. Neuron coords: ``site`` (one name) and ``unit`` (0..units-1).
    """
    a = _numeric(np.asarray(data), "the response array")
    if a.ndim == 3:
        ns, nr, nu = a.shape
        stim = np.arange(ns) if stimulus is None else np.asarray(stimulus)
        if len(stim) != ns:
            raise NeuronscopeError(f"{len(stim)} stimulus ids for {ns} stimuli; give one id per stimulus")
        a = a.reshape(ns * nr, nu)
        stimulus, repeat = np.repeat(stim, nr), np.tile(np.arange(nr), ns)
    if a.ndim != 2:
        raise NeuronscopeError(
            f"response array has shape {a.shape}; give (stimuli, units) or (stimuli, repeats, units)"
        )
    n = a.shape[0]
    stim = np.arange(n) if stimulus is None else np.asarray(stimulus)
    if len(stim) != n:
        raise NeuronscopeError(f"{len(stim)} stimulus ids for {n} rows; give one id per row")
    coords: dict[str, Any] = {
        "stimulus": ("sample", stim),
        "site": ("neuron", np.full(a.shape[1], site, dtype=object)),
        "unit": ("neuron", np.arange(a.shape[1], dtype=np.int64)),
    }
    if repeat is not None:
        try:
            rep = np.asarray(repeat, dtype=np.int64)
        except (TypeError, ValueError):
            raise NeuronscopeError("repeat indices must be integers (0, 1, ...), one per row") from None
        if len(rep) != n:
            raise NeuronscopeError(f"{len(rep)} repeat indices for {n} rows; give one per row")
        coords["repeat"] = ("sample", rep)
    elif len(np.unique(stim)) < n:
        _, inv = np.unique(stim, return_inverse=True)
        rep = np.zeros(n, dtype=np.int64)
        seen: dict[int, int] = {}
        for i, g in enumerate(inv.tolist()):
            rep[i] = seen.get(g, 0)
            seen[g] = rep[i] + 1
        coords["repeat"] = ("sample", rep)
    dtype = np.float32 if a.dtype == np.float32 else np.float64
    return xr.DataArray(a.astype(dtype, copy=False), dims=("sample", "neuron"), coords=coords)


def _pick(arrays: dict[str, np.ndarray], key: str | None, prefer: Sequence[str], what: str) -> str:
    if key is not None:
        if key not in arrays:
            raise NeuronscopeError(f"no array {key!r} in the file (has {sorted(arrays)}); pick one of those")
        return key
    for k in prefer:
        if k in arrays:
            return k
    numeric = [k for k, v in arrays.items() if np.asarray(v).dtype.kind in "fiu" and np.ndim(v) >= 1
               and k not in ("stimulus", "repeat")]
    if not numeric:
        raise NeuronscopeError(f"no numeric {what} array in the file; pass key=<name>")
    return max(numeric, key=lambda k: np.size(arrays[k]))


def load_responses(path: str | Path, key: str | None = None, site: str | None = None) -> xr.DataArray:
    """Load a response file as a brain population (see :func:`responses_population`).

    * ``.npy``: (stimuli, units) or (stimuli, repeats, units).
    * ``.npz`` / ``.h5`` / ``.hdf5``: the array ``key`` (default ``responses``, ``data`` or the
      largest numeric array) plus optional ``stimulus`` and ``repeat`` arrays.
    * ``.csv``: a header row; a ``stimulus`` column, optional ``repeat``, all other columns units.
    """
    p = Path(path)
    if not p.exists():
        raise NeuronscopeError(f"response file {p} does not exist; check the path")
    site = site or p.stem
    suf = p.suffix.lower()
    if suf == ".npy":
        return responses_population(_numeric(load_npy(p, "response"), f"{p}"), site=site)
    if suf in (".npz", ".h5", ".hdf5"):
        with reading(p, "response"):
            if suf == ".npz":
                arrays = load_npz(p, "response")
            else:
                import h5py

                with h5py.File(p, "r") as f:
                    arrays = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        k = _pick(arrays, key, ("responses", "data"), "response")
        _numeric(np.asarray(arrays[k]), f"array {k!r} of {p}")
        stim = arrays.get("stimulus")
        if stim is not None and stim.dtype.kind == "S":
            stim = stim.astype(str)
        return responses_population(arrays[k], stimulus=stim, repeat=arrays.get("repeat"), site=site)
    if suf == ".csv":
        import pandas as pd

        with reading(p, "response"):
            df = pd.read_csv(p)
        if "stimulus" not in df.columns:
            raise NeuronscopeError(f"{p} has no `stimulus` column; add one naming each row's stimulus")
        units = df.drop(columns=[c for c in ("stimulus", "repeat") if c in df.columns])
        bad = [str(c) for c in units.columns if units[c].dtype.kind not in "biuf"]
        if bad:
            raise NeuronscopeError(f"{p}: column(s) {', '.join(bad[:3])} hold non-numbers; every column but "
                                   "stimulus and repeat must be numeric (a unit's responses)")
        if "repeat" in df.columns and df["repeat"].dtype.kind not in "iu":
            raise NeuronscopeError(f"{p}: the repeat column must hold integers (0, 1, ...)")
        rep = df["repeat"].to_numpy() if "repeat" in df.columns else None
        return responses_population(units.to_numpy(dtype=np.float64), df["stimulus"].to_numpy(), rep, site)
    raise NeuronscopeError(f"unknown response file type {suf!r}; use .npy, .npz, .h5/.hdf5 or .csv")


# --------------------------------------------------------------------------- RDM files

_RDM_KEYS = ("rdms", "rdm", "RDMs", "RDM", "Models", "models")
_NAME_DESCRIPTORS = ("name", "names", "model", "subject", "subj", "session")
_STIM_DESCRIPTORS = ("stimulus", "stimuli", "conds", "cond", "condition", "conditions", "image", "images",
                     "name", "names")


def _text(v: Any) -> str | None:
    """A MATLAB char array / string / bytes as str (None if it is not text)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, str):
        return v
    a = np.asarray(v)
    if a.dtype.kind in "US":
        flat = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in a.ravel()]
        return "".join(flat) if a.ndim <= 1 else " ".join(flat)
    if a.dtype == object and a.size == 1:
        return _text(a.ravel()[0])
    return None


def _ids(v: Any) -> np.ndarray:
    """Stimulus ids from an array, a MATLAB cellstr or char matrix."""
    a = np.asarray(v)
    if a.dtype == object:
        return np.array([_text(x) if _text(x) is not None else str(np.asarray(x).ravel()[0]) for x in a.ravel()])
    if a.dtype.kind in "US" and a.ndim == 2:  # char matrix: one id per row
        return np.array(["".join(map(str, r)).strip() for r in a])
    if a.dtype.kind == "S":
        return a.ravel().astype(str)
    return a.ravel()


def _condensed(a: np.ndarray, what: str) -> np.ndarray:
    """(r, m) condensed RDMs from one numeric array in a file: square (n, n), MATLAB stack
    (n, n, k), stack (k, n, n), condensed (m,), (1, m), (m, 1) or (k, m)."""
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise NeuronscopeError(f"{what} is not numeric (dtype {a.dtype}); pass key=/field= naming the RDM matrices")
    a = a.astype(np.float64)
    if a.ndim == 3 and a.shape[0] == a.shape[1] and a.shape[1] != a.shape[2]:
        a = np.moveaxis(a, -1, 0)  # MATLAB (n, n, k)
    if a.ndim == 2 and 1 in a.shape and a.shape[0] != a.shape[1]:
        a = a.reshape(1, -1)
    try:
        return RDMs.from_array(a).dissimilarities
    except NeuronscopeError as e:
        raise NeuronscopeError(f"{what}: {e}") from None


def _leaves(obj: Any, field: str, var: str, idx: tuple[int, ...] = (), name: str | None = None
            ) -> list[tuple[tuple[int, ...], str | None, Any]]:
    """(index, name, numeric array) of every RDM in a MATLAB value: struct arrays (their
    ``field``, named by their ``name`` field), cell arrays and numeric arrays, any nesting."""
    if isinstance(obj, np.ndarray) and obj.dtype.names:
        if field not in obj.dtype.names:
            raise NeuronscopeError(
                f"struct {var!r} has fields {', '.join(obj.dtype.names)} and no {field!r}; pass field=<the RDM field>"
            )
        out = []
        for ix in np.ndindex(obj.shape):
            el = obj[ix]
            nm = _text(el["name"]) if "name" in obj.dtype.names else None
            out += _leaves(el[field], field, var, idx + ix, nm or name)
        return out
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        out = []
        for ix in np.ndindex(obj.shape):
            out += _leaves(obj[ix], field, var, idx + ix, name)
        return out
    return [(idx, name, obj)]


def _leaf_rdms(leaves: list, var: str, average_sessions: bool) -> tuple[np.ndarray, list[str]]:
    rows: list[np.ndarray] = []
    names: list[str] = []
    index: list[tuple[int, ...]] = []
    for ix, nm, arr in leaves:
        where = f"{var}[{', '.join(map(str, ix))}]" if ix else var
        v = _condensed(arr, where)
        for r in range(len(v)):
            rows.append(v[r])
            names.append((nm or where) if len(v) == 1 else f"{nm or where}[{r}]")
            index.append(ix if len(v) == 1 else (*ix, r))
    if len({len(r) for r in rows}) > 1:
        raise NeuronscopeError(f"the RDMs in {var!r} cover different numbers of stimuli; load them separately")
    stack = np.stack(rows)
    if not average_sessions:
        return stack, names
    if any(len(ix) < 2 for ix in index):
        raise NeuronscopeError(f"{var!r} has no session axis (a 1-D list of RDMs); load without average_sessions")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, ix in enumerate(index):
        groups.setdefault(ix[:-1], []).append(i)
    out, out_names = [], []
    for g, members in groups.items():
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out.append(np.nanmean(stack[members], axis=0))
        group_names = [names[i] for i in members]
        common = os.path.commonprefix(group_names)
        if len(set(group_names)) > 1:  # cut back to a word boundary: "s1 sess1", "s1 sess2" -> "s1"
            common = common[: max((common.rfind(c) for c in " _-:,.(["), default=-1) + 1]
        common = common.rstrip(" _-:,.([")
        out_names.append(common or f"{var}[{', '.join(map(str, g))}]")
    return np.stack(out), out_names


def _mat_v73(p: Path) -> dict[str, Any]:
    """A MATLAB v7.3 (HDF5) file as :func:`scipy.io.loadmat` would give it: numeric arrays in
    MATLAB's shape, char as str, cell arrays as object arrays, struct arrays (fields of
    object references) and scalar structs as record arrays."""
    import h5py

    def value(f: h5py.File, obj: Any) -> Any:
        cls = obj.attrs.get("MATLAB_class", b"")
        cls = cls.decode() if isinstance(cls, bytes) else str(cls)
        if isinstance(obj, h5py.Group):
            fields = [k for k in obj.keys() if k != "#refs#"]
            first = obj[fields[0]] if fields else None
            is_array = (isinstance(first, h5py.Dataset) and h5py.check_ref_dtype(first.dtype) is not None
                        and "MATLAB_class" not in first.attrs)
            if is_array:
                refs = {k: obj[k][()].T for k in fields}
                shape = refs[fields[0]].shape
                rec = np.empty(shape, dtype=[(k, object) for k in fields])
                for ix in np.ndindex(shape):
                    for k in fields:
                        rec[ix][k] = value(f, f[refs[k][ix]])
                return rec
            rec = np.empty((1, 1), dtype=[(k, object) for k in fields])
            for k in fields:
                rec[0, 0][k] = value(f, obj[k])
            return rec
        if "MATLAB_empty" in obj.attrs and obj.attrs["MATLAB_empty"]:
            return np.zeros((0, 0))
        data = obj[()]
        if cls == "cell":
            data = data.T
            out = np.empty(data.shape, dtype=object)
            for ix in np.ndindex(data.shape):
                out[ix] = value(f, f[data[ix]])
            return out
        if cls == "char":
            return "".join(chr(int(c)) for c in np.asarray(data).T.ravel())
        return np.asarray(data).T

    with h5py.File(p, "r") as f:
        return {k: value(f, f[k]) for k in f.keys() if not k.startswith("#")}


def _rsatoolbox_h5(f: Any, p: Path) -> RDMs:
    """rsatoolbox's own HDF5 (``RDMs.save(..., file_type='hdf5')``), read without rsatoolbox."""
    import h5py

    def strings(ds: h5py.Dataset) -> np.ndarray:
        a = ds[()]
        return a.astype(str) if a.dtype.kind == "S" else np.asarray(a)

    d = np.asarray(f["dissimilarities"][()], dtype=np.float64)
    if d.ndim == 3:
        d = RDMs.from_array(d).dissimilarities
    rd = f["rdm_descriptors"] if "rdm_descriptors" in f else {}
    pd_ = f["pattern_descriptors"] if "pattern_descriptors" in f else {}
    names = None
    for k in _NAME_DESCRIPTORS + tuple(k for k in rd if k != "index"):
        if k in rd and isinstance(rd[k], h5py.Dataset) and rd[k].shape == (len(d),):
            names = [str(x) for x in strings(rd[k])]
            break
    stim = None
    for k in _STIM_DESCRIPTORS + tuple(k for k in pd_ if k != "index"):
        if k in pd_ and isinstance(pd_[k], h5py.Dataset) and pd_[k].ndim == 1:
            cand = strings(pd_[k])
            if len(np.unique(cand)) == len(cand):
                stim = cand
                break
    measure = f.attrs.get("dissimilarity_measure", "")
    measure = measure.decode() if isinstance(measure, bytes) else str(measure)
    return RDMs(d, stimulus=stim, names=names or [f"{p.stem}[{i}]" for i in range(len(d))], measure=measure)


def load_rdms(path: str | Path, key: str | None = None, field: str = "RDM",
              average_sessions: bool = False) -> RDMs:
    """Load RDMs (one per subject, session or model) from the files people have.

    * MATLAB ``.mat`` (v5/v7 through ``scipy.io.loadmat``): RSA-toolbox struct arrays — any
      nesting of struct and cell arrays, e.g. the 92-image demo's ``RDMs`` (subjects ×
      sessions) or ``Models`` (1 × k) with fields ``RDM``, ``name``, ``color`` — take the
      matrices from ``field`` and the RDM names from ``name``; cell arrays of matrices and
      plain numeric variables too. The variable is ``key``, else the first struct array with
      ``field``, else ``rdms``, ``rdm``, ``RDMs``, ``RDM``, ``Models`` or the largest numeric
      array, else the first cell array. ``average_sessions=True``
      averages over the last axis of the struct array (sessions; NaN-aware), one RDM per
      subject named by the sessions' common name prefix.
    * MATLAB v7.3 ``.mat`` (HDF5, read with h5py): numeric arrays, char, cell arrays, scalar
      structs and struct arrays whose fields are object references (MATLAB's layout), so the
      same struct files work; sparse, complex, function-handle and object (classdef)
      variables are not supported.
    * ``.npy``; ``.npz`` and ``.h5``/``.hdf5`` (array ``key``, default as above, plus an
      optional ``stimulus`` array and ``names``).
    * rsatoolbox's HDF5 (``RDMs.save(path, file_type='hdf5')``), detected by its
      ``dissimilarities`` dataset and read without rsatoolbox or pickle: the names come from
      an rdm descriptor (``name``, ``model``, ``subject``, … or the first other one), the
      stimulus ids from a pattern descriptor (``stimulus``, ``conds``, … or the first other
      one with unique values), the measure from ``dissimilarity_measure``.

    Arrays: a square (n, n) matrix, a stack (k, n, n) (or MATLAB's (n, n, k)), a condensed
    vector (m,) or a stack (k, m) with m = n(n-1)/2 (scipy ``squareform`` order). Square
    matrices must be symmetric with a zero diagonal; NaN marks a missing pair (kept, see
    :class:`RDMs`); Inf is refused. ``stimulus`` ids next to the RDMs are kept for alignment.
    """
    p = Path(path)
    if not p.exists():
        raise NeuronscopeError(f"RDM file {p} does not exist; check the path")
    suf = p.suffix.lower()
    stim: Any = None
    names: list[str] | None = None
    if suf not in (".h5", ".hdf5", ".npy", ".npz", ".mat"):
        raise NeuronscopeError(f"unknown RDM file type {suf!r}; use .mat, .npy, .npz, .h5 or .hdf5")
    with reading(p, "RDM"):
        if suf in (".h5", ".hdf5"):
            import h5py

            with h5py.File(p, "r") as f:
                if "dissimilarities" in f and isinstance(f["dissimilarities"], h5py.Dataset) and key is None:
                    return _rsatoolbox_h5(f, p)
                arrays = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        elif suf == ".npy":
            arrays = {"rdms": load_npy(p, "RDM")}
        elif suf == ".npz":
            arrays = load_npz(p, "RDM")
        else:
            import scipy.io

            try:
                v73 = scipy.io.matlab.matfile_version(p)[0] == 2
            except (ValueError, TypeError) as e:
                raise NeuronscopeError(f"{p} is not a MATLAB file ({e}); check the file") from None
            arrays = _mat_v73(p) if v73 else {
                k: v for k, v in scipy.io.loadmat(p).items() if not k.startswith("__")}
    cplx = [k for k, v in arrays.items() if isinstance(v, np.ndarray) and v.dtype.kind == "c"]
    if cplx:
        raise NeuronscopeError(f"{p.name}: {cplx[0]!r} is complex-valued; RDMs hold real dissimilarities")
    if "stimulus" in arrays:
        stim = _ids(arrays["stimulus"])
    if "names" in arrays:
        names = [str(x) for x in _ids(arrays["names"])]
    structs = [k for k, v in arrays.items() if isinstance(v, np.ndarray) and v.dtype.names and field in v.dtype.names]
    if key is not None and key not in arrays:
        raise NeuronscopeError(f"no variable {key!r} in {p.name} (has {', '.join(sorted(arrays))}); pass one of those")
    cells = [k for k, v in arrays.items() if isinstance(v, np.ndarray) and v.dtype == object and k != "stimulus"]
    var = key if key is not None else (structs[0] if structs else None)
    if var is None and cells and not any(isinstance(v, np.ndarray) and v.dtype.kind in "biuf" and v.ndim >= 2
                                         for v in arrays.values()):
        var = cells[0]
    if var is None:
        numeric = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"
                   and v.ndim >= 1 and k not in ("stimulus", "repeat")}
        if not numeric:
            have = ", ".join(sorted(arrays)) or "nothing"
            raise NeuronscopeError(
                f"no numeric RDM array and no struct with field {field!r} in {p.name} (has {have}); "
                "pass key=<variable> and field=<struct field>"
            )
        var = next((k for k in _RDM_KEYS if k in numeric), max(numeric, key=lambda k: np.size(numeric[k])))
    value = arrays[var]
    leaves = _leaves(value, field, var)
    if len(leaves) == 1 and not (isinstance(value, np.ndarray) and value.dtype.names):
        d = _condensed(leaves[0][2], var)
        if average_sessions:
            raise NeuronscopeError(f"{var!r} is a plain array without a session axis; load without average_sessions")
        default = [p.stem] if len(d) == 1 else [f"{p.stem}[{i}]" for i in range(len(d))]
        nm = names if names is not None and len(names) == len(d) else default
    else:
        d, nm = _leaf_rdms(leaves, var, average_sessions)
    return RDMs(d, stimulus=stim, names=nm, measure="")


# --------------------------------------------------------------------------- NWB


def nwb_population(
    path: str | Path,
    intervals: np.ndarray | None = None,
    stimulus: Sequence[Any] | None = None,
    stimulus_column: str = "stimulus",
    bins: Sequence[float] | None = None,
    rate: bool = False,
) -> xr.DataArray:
    """Spike counts of an NWB file's Units table in trial intervals (and time bins).

    Intervals are ``intervals`` ((trials, 2) start/stop seconds) with ``stimulus`` ids, or the
    file's trials table (``start_time``, ``stop_time`` and the column ``stimulus_column``, or
    the trial index when that column is absent). ``bins`` are edges in seconds relative to
    each interval's start: each (trial, bin) is one sample with coord ``time`` (bin start);
    without ``bins`` a sample counts spikes in [start, stop). ``repeat`` numbers the
    occurrences of each stimulus. Neuron coords: ``site`` (the unit's electrode group name,
    else its ``location``, else ``"units"``) and ``unit`` (the Units table id). ``rate=True``
    divides counts by the bin length. Counts are exact: spike t counts in [a, b) iff a <= t < b.

    Vectorized: the flat ``spike_times`` array and its index are read once; spikes of unit u
    are shifted by ``u * span`` so that one ``searchsorted`` counts every unit × interval.
    """
    from pynwb import NWBHDF5IO

    p = Path(path)
    if not p.exists():
        raise NeuronscopeError(f"NWB file {p} does not exist; check the path")
    with NWBHDF5IO(str(p), "r") as io:
        nwb = io.read()
        if nwb.units is None or len(nwb.units) == 0:
            raise NeuronscopeError(f"{p} has no Units table; spike-sorted units are needed")
        units = nwb.units
        col = units["spike_times"]
        flat = np.asarray(col.target.data[:], dtype=np.float64)
        ends = np.asarray(units["spike_times_index"].data[:], dtype=np.int64)
        unit_ids = np.asarray(units.id.data[:], dtype=np.int64)
        names = set(units.colnames)
        if "electrode_group" in names:
            site = np.array([g.name for g in units["electrode_group"][:]], dtype=object)
        elif "location" in names:
            site = np.array([str(s) for s in units["location"][:]], dtype=object)
        else:
            site = np.full(len(unit_ids), "units", dtype=object)
        if intervals is None:
            if nwb.trials is None:
                raise NeuronscopeError(f"{p} has no trials table; pass intervals=(trials, 2) start/stop times")
            trials = nwb.trials
            iv = np.column_stack([trials["start_time"].data[:], trials["stop_time"].data[:]])
            if stimulus is None:
                stimulus = (np.asarray(trials[stimulus_column].data[:]) if stimulus_column in trials.colnames
                            else np.arange(len(iv)))
        else:
            iv = np.asarray(intervals, dtype=np.float64)
    if iv.ndim != 2 or iv.shape[1] != 2 or len(iv) == 0:
        raise NeuronscopeError("intervals must be a non-empty (trials, 2) array of start/stop seconds")
    if (iv[:, 1] < iv[:, 0]).any():
        raise NeuronscopeError("an interval ends before it starts; give start <= stop")
    stim = np.arange(len(iv)) if stimulus is None else np.asarray(stimulus)
    if stim.dtype.kind in "SO":
        stim = stim.astype(str)
    if len(stim) != len(iv):
        raise NeuronscopeError(f"{len(stim)} stimulus ids for {len(iv)} intervals; give one per interval")

    if bins is None:
        lo, hi = iv[:, :1], iv[:, 1:]
        t_rel = None
    else:
        edges = np.asarray(bins, dtype=np.float64)
        if edges.ndim != 1 or len(edges) < 2 or (np.diff(edges) <= 0).any():
            raise NeuronscopeError("bins must be increasing edges (seconds from interval start)")
        lo = iv[:, :1] + edges[None, :-1]
        hi = iv[:, :1] + edges[None, 1:]
        t_rel = edges[:-1]
    lo, hi = lo.ravel(), hi.ravel()  # (samples,) in trial-major, bin-minor order

    n_units = len(unit_ids)
    starts = np.concatenate([[0], ends[:-1]])
    owner = np.repeat(np.arange(n_units), ends - starts)
    order = np.lexsort((flat, owner))  # sort spikes within each unit (NWB does not require it)
    flat, owner = flat[order], owner[order]
    tmin = min(flat.min() if len(flat) else 0.0, lo.min())
    span = max(flat.max() if len(flat) else 0.0, hi.max()) - tmin + 1.0
    shifted = (flat - tmin) + owner * span
    offs = (np.arange(n_units) * span)[None, :]
    a = np.searchsorted(shifted, (lo - tmin)[:, None] + offs, side="left")
    b = np.searchsorted(shifted, (hi - tmin)[:, None] + offs, side="left")
    counts = (b - a).astype(np.float64)
    if rate:
        counts /= (hi - lo)[:, None]

    n_bins = 1 if t_rel is None else len(t_rel)
    _, inv = np.unique(stim, return_inverse=True)
    rep_trial = np.zeros(len(stim), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, g in enumerate(inv.tolist()):
        rep_trial[i] = seen.get(g, 0)
        seen[g] = rep_trial[i] + 1
    coords: dict[str, Any] = {
        "stimulus": ("sample", np.repeat(stim, n_bins)),
        "repeat": ("sample", np.repeat(rep_trial, n_bins)),
        "trial": ("sample", np.repeat(np.arange(len(stim), dtype=np.int64), n_bins)),
        "site": ("neuron", site),
        "unit": ("neuron", unit_ids),
    }
    if t_rel is not None:
        coords["time"] = ("sample", np.tile(t_rel, len(stim)))
    return xr.DataArray(counts.astype(np.float32), dims=("sample", "neuron"), coords=coords)
