"""Which radar clusters the detector uses: one rule for training data and the node.

nuScenes radars (Continental ARS 408) report every cluster with quality states; the devkit's
default filter keeps clusters that are valid, not ambiguous in Doppler and of a known dynamic
property. The reader applies it to training data and the node to live clouds that carry these
fields, so the model sees the same kind of radar points in both.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Kept values of the three state fields (the devkit's RadarPointCloud defaults).
VALID_INVALID_STATES: tuple[int, ...] = (0,)
VALID_DYNPROP_STATES: tuple[int, ...] = tuple(range(7))
VALID_AMBIG_STATES: tuple[int, ...] = (3,)
STATE_FIELDS: tuple[str, ...] = ("invalid_state", "dyn_prop", "ambig_state")


def cluster_keep_mask(
    invalid_state: npt.ArrayLike, dyn_prop: npt.ArrayLike, ambig_state: npt.ArrayLike
) -> npt.NDArray[np.bool_]:
    """[N] True for the clusters to keep."""
    return (
        np.isin(invalid_state, VALID_INVALID_STATES)
        & np.isin(dyn_prop, VALID_DYNPROP_STATES)
        & np.isin(ambig_state, VALID_AMBIG_STATES)
    )
