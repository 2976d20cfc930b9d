"""The static structure of a HistFactory model: :class:`ModelConfig` (pyhf's ``model.config``
vocabulary) and :class:`Tables` (index tables and masks as read-only numpy arrays).

Both are hashable and compared by value, so compiled functions see them as constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ModelConfig", "Tables"]

#: Models with at most this many (cell, normsys entry) pairs combine normsys factors with a
#: dense one-hot matrix instead of a gather (faster, but memory grows as cells x entries).
_DENSE_NORMSYS_LIMIT = 2**22


@dataclass(frozen=True)
class ModelConfig:
    """Static description of a model, with pyhf's ``model.config`` vocabulary."""

    channels: tuple
    channel_nbins_items: tuple
    samples: tuple
    modifiers: tuple
    par_order: tuple
    par_slices: tuple
    par_is_scalar: tuple
    par_kinds: tuple
    par_modtypes: tuple
    init: tuple
    bounds: tuple
    fixed: tuple
    poi_name: str | None
    poi_index: int | None
    auxdata: tuple
    auxdata_order: tuple
    modifier_settings: tuple
    perbin: tuple  # (parameter index, tuple of global bins) for per-bin parameters
    normsys_keys: tuple = ()  # (modifier, channel, sample) of each normsys entry
    histosys_keys: tuple = ()  # (modifier, sample) of each histosys template row
    staterror_keys: tuple = ()  # (modifier, sample) of each staterror template row
    symmetric: tuple = ()  # names of parameters with a symmetrised (even) variation

    @property
    def channel_nbins(self) -> dict:
        return dict(self.channel_nbins_items)

    @property
    def channel_slices(self) -> dict:
        out, start = {}, 0
        for c, n in self.channel_nbins_items:
            out[c] = slice(start, start + n)
            start += n
        return out

    @property
    def npars(self) -> int:
        return len(self.init)

    @property
    def nmaindata(self) -> int:
        return sum(n for _, n in self.channel_nbins_items)

    @property
    def nauxdata(self) -> int:
        return len(self.auxdata)

    @property
    def parameters(self) -> list:
        return sorted(self.par_order)

    def par_slice(self, name: str) -> slice:
        return slice(*self.par_slices[self.par_order.index(name)])

    @property
    def par_names(self) -> list:
        """Names including the bin index of per-bin parameters, e.g. ``gamma[0]``."""
        names = []
        for name, (a, b), scalar in zip(
            self.par_order, self.par_slices, self.par_is_scalar, strict=True
        ):
            names += [name] if scalar else [f"{name}[{i}]" for i in range(b - a)]
        return names

    def suggested_init(self) -> list:
        return list(self.init)

    def suggested_bounds(self) -> list:
        return [tuple(b) for b in self.bounds]

    def suggested_fixed(self) -> list:
        return list(self.fixed)

    def interpcode(self, modtype: str) -> str:
        return dict(self.modifier_settings)[modtype]


def _scatter(values, positions, size, fill):
    out = np.full(size, fill, dtype=np.asarray(values).dtype if len(values) else type(fill))
    out[np.asarray(positions, dtype=int)] = values
    return out


def _per_aux(b) -> dict:
    """Per auxiliary datum: which staterror (modifier, bin) gives its width and which shapesys
    (sample, bin) gives its rate factor; the masks ``se_pos``/``ss_pos`` say where they apply."""
    A = len(b.aux_par)
    return dict(
        se_pos=_scatter(np.ones(len(b.se_pos), bool), b.se_pos, A, False),
        se_mod=_scatter(b.se_mod, b.se_pos, A, 0),
        se_bin=_scatter(b.se_bin, b.se_pos, A, 0),
        ss_pos=_scatter(np.ones(len(b.ss_pos), bool), b.ss_pos, A, False),
        ss_sample=_scatter(b.ss_sample, b.ss_pos, A, 0),
        ss_bin=_scatter(b.ss_bin, b.ss_pos, A, 0),
    )


def _onehot(index, n: int) -> np.ndarray:
    """``out[i, j] = (index[j] == i)``, shape ``(n, len(index))``."""
    return (np.asarray(index)[None, :] == np.arange(n)[:, None]).astype(float)


@dataclass(frozen=True, eq=False)
class Tables:
    """The integer structure of a model: index tables and masks as read-only numpy arrays.

    They are a *static* part of :class:`Model` (hashable, compared by value), so compiled
    functions see them as constants whether the model is closed over or passed as an
    argument: XLA then folds the gathers and one-hot matrices, which halves both the
    compile time and the run time of a fit.
    """

    direct_table: np.ndarray  # (layers, S*B): index into pars + [1]
    normsys_par: np.ndarray  # (normsys entries,): parameter index
    normsys_table: np.ndarray  # (layers, S*B): index into normsys entries + [none]
    histosys_par: np.ndarray  # (histosys entries,)
    histosys_sample: np.ndarray
    histosys_mask: np.ndarray  # (histosys entries, bins)
    staterror_member: np.ndarray  # (staterror modifiers, samples), 0/1
    staterror_entry_mod: np.ndarray  # (staterror entries,)
    aux_par: np.ndarray  # (auxiliary data,): parameter index
    aux_poisson: np.ndarray
    se_pos: np.ndarray
    se_mod: np.ndarray
    se_bin: np.ndarray
    ss_pos: np.ndarray
    ss_sample: np.ndarray
    ss_bin: np.ndarray

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            value = np.array(getattr(self, name))
            if value.dtype.kind in "iu":
                value = value.astype(np.int32)
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        arrays = [getattr(self, n) for n in self._names]
        object.__setattr__(self, "_hash", hash(tuple((a.shape, a.tobytes()) for a in arrays)))

    @property
    def _names(self):
        return tuple(self.__dataclass_fields__)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, Tables) or hash(self) != hash(other):
            return False
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in self._names)

    def normsys_onehot(self, entries: int) -> np.ndarray | None:
        """``(S*B, entries)`` count of each normsys entry per cell, or ``None`` when larger
        than :data:`_DENSE_NORMSYS_LIMIT` (then a gather is used)."""
        cells = self.normsys_table.shape[1]
        if cells * entries > _DENSE_NORMSYS_LIMIT:
            return None
        out = np.zeros((cells, entries + 1))
        for layer in self.normsys_table:
            out[np.arange(cells), layer] += 1.0
        return out[:, :entries]
