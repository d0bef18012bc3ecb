"""Euler angle conversions between the canonical RELION ZYZ angles and other formats.

Conventions (after teamtomo's ``eulerangles`` metadata, which treats RELION and Dynamo
angles as the same kind of transform, so that conversion keeps the composed matrix):

* RELION / Warp ``(rot, tilt, psi)``: intrinsic ZYZ, ``M = Rz(rot) Ry(tilt) Rz(psi)``.
* Dynamo ``(tdrot, tilt, narot)`` and STOPGAP ``(phi, the, psi)``: extrinsic zxz,
  ``M = Rz(narot) Rx(tilt) Rz(tdrot)``.
* copick ``transformation_``: the particle rotation, ``M.T`` (the CZ portal and copick use
  ``Rotation.from_euler('ZYZ', relion).inv()``).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.spatial.transform import Rotation


def _rot(seq: str, angles: np.ndarray) -> Rotation:
    return Rotation.from_euler(seq, np.asarray(angles, dtype=float).reshape(-1, 3), degrees=True)


def _euler(r: Rotation, seq: str) -> np.ndarray:
    with warnings.catch_warnings():  # gimbal lock (tilt 0 or 180) is fine: the matrix is kept
        warnings.simplefilter("ignore", UserWarning)
        return r.as_euler(seq, degrees=True).reshape(-1, 3)


def relion_to_zxz(angles: np.ndarray) -> np.ndarray:
    """RELION (rot, tilt, psi) -> Dynamo (tdrot, tilt, narot)."""
    if len(angles) == 0:
        return np.zeros((0, 3))
    return _euler(_rot("ZYZ", angles), "zxz")


def zxz_to_relion(angles: np.ndarray) -> np.ndarray:
    """Dynamo (tdrot, tilt, narot) -> RELION (rot, tilt, psi)."""
    if len(angles) == 0:
        return np.zeros((0, 3))
    return _euler(_rot("zxz", angles), "ZYZ")


def relion_to_matrices(angles: np.ndarray) -> np.ndarray:
    """RELION angles -> (n, 3, 3) particle rotation matrices as copick stores them."""
    if len(angles) == 0:
        return np.zeros((0, 3, 3))
    return _rot("ZYZ", angles).inv().as_matrix().reshape(-1, 3, 3)


def matrices_to_relion(matrices: np.ndarray) -> np.ndarray:
    m = np.asarray(matrices, dtype=float).reshape(-1, 3, 3)
    if len(m) == 0:
        return np.zeros((0, 3))
    return _euler(Rotation.from_matrix(m).inv(), "ZYZ")
