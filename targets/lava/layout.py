"""Tensor layouts: NIR is (C, H, W) in C-order, Lava's Conv is (W, H, C).

A lowered tensor keeps its NIR shape, its Lava shape and a permutation ``perm`` with
``lava_flat[i] == nir_flat[perm[i]]``. Flattening a (W, H, C) port in C-order keeps the
permutation, so a Flatten costs no process: the following Dense takes ``W[:, perm]``.
"""
from __future__ import annotations

import numpy as np


def lava_shape(nir_shape: tuple[int, ...]) -> tuple[int, ...]:
    """(C, H, W) -> (W, H, C); a 1-D convolution's (C, L) -> (L, 1, C), a unit height, so that
    Lava's 2-D ``Conv`` runs NIR's ``Conv1d``."""
    if len(nir_shape) == 2:
        return (nir_shape[1], 1, nir_shape[0])
    return tuple(reversed(nir_shape)) if len(nir_shape) == 3 else tuple(nir_shape)


def layout_perm(nir_shape: tuple[int, ...]) -> np.ndarray | None:
    """Permutation of a freshly laid-out tensor (None: Lava order equals NIR order)."""
    if len(nir_shape) not in (2, 3):
        return None
    size = int(np.prod(nir_shape))
    if len(nir_shape) == 2:
        return np.arange(size).reshape(nir_shape).T.ravel()
    return np.arange(size).reshape(nir_shape).transpose(2, 1, 0).ravel()


def to_lava(x: np.ndarray, lava_shape_: tuple[int, ...], perm: np.ndarray | None) -> np.ndarray:
    """[N, *nir_shape] -> [N, *lava_shape]."""
    flat = x.reshape(x.shape[0], -1)
    if perm is not None:
        flat = flat[:, perm]
    return flat.reshape((x.shape[0],) + tuple(lava_shape_))


def to_nir(x: np.ndarray, nir_shape: tuple[int, ...], perm: np.ndarray | None) -> np.ndarray:
    """[N, *lava_shape] -> [N, *nir_shape]."""
    flat = x.reshape(x.shape[0], -1)
    if perm is not None:
        out = np.empty_like(flat)
        out[:, perm] = flat
        flat = out
    return flat.reshape((x.shape[0],) + tuple(nir_shape))


def single_to_lava(x: np.ndarray, lava_shape_: tuple[int, ...], perm: np.ndarray | None) -> np.ndarray:
    """One array of NIR shape (broadcast already applied) -> Lava shape."""
    return to_lava(x[None], lava_shape_, perm)[0]


def conv_weight(w_oihw: np.ndarray) -> np.ndarray:
    """ONNX/NIR cross-correlation kernel OIHW -> Lava's true-convolution kernel (O, W, H, I)."""
    return np.ascontiguousarray(w_oihw.transpose(0, 3, 2, 1)[:, ::-1, ::-1])


def wh(pair_hw: tuple[int, int]) -> tuple[int, int]:
    """NIR gives (H, W) pairs; Lava wants (W, H)."""
    return int(pair_hw[1]), int(pair_hw[0])
