"""Behaviour of the one PMSM neuron implementation (docs/spiking-onnx.md)."""
import numpy as np
import pytest

from pmsm.runtime.neuron import NeuronParams, initial_membrane, run, step

RNG = np.random.default_rng(0)
SIGNED_FLOOR = NeuronParams(lo=-2, hi=2, v_init=0.5, rounding="floor")
UNSIGNED_FLOOR = NeuronParams(lo=0, hi=4, v_init=0.5, rounding="floor")
SIGNED_HALF_EVEN = NeuronParams(lo=-128, hi=127, v_init=0.0, rounding="half_even")
UNSIGNED_HALF_EVEN = NeuronParams(lo=-3, hi=252, v_init=0.0, rounding="half_even")  # u8 with zero point 3
ALL = [SIGNED_FLOOR, UNSIGNED_FLOOR, SIGNED_HALF_EVEN, UNSIGNED_HALF_EVEN]


def quantizer(z, p):
    z = np.asarray(z, dtype=np.float32)
    u = (np.float32(p.v_init) + z).astype(np.float32)
    r = np.floor(u) if p.rounding == "floor" else np.rint(u)
    return np.clip(r, p.lo, p.hi)


@pytest.mark.parametrize("params", ALL, ids=lambda p: f"{p.rounding}[{p.lo},{p.hi}]")
def test_t1_output_equals_the_quantizer_bit_for_bit(params):
    z = (RNG.normal(size=(7, 33)) * params.max_abs_spikes).astype(np.float32)
    z[0, :6] = [0.5, -0.5, 1.5, 2.5, -1.5, -2.5]  # rounding ties
    np.testing.assert_array_equal(run(z[None], params)[0], quantizer(z, params))


def test_half_even_rounds_ties_to_even():
    z = np.array([0.5, 1.5, 2.5, -0.5, -1.5], dtype=np.float32)
    np.testing.assert_array_equal(run(z[None], SIGNED_HALF_EVEN)[0], [0, 2, 2, -0, -2])


@pytest.mark.parametrize("params", ALL, ids=lambda p: f"{p.rounding}[{p.lo},{p.hi}]")
@pytest.mark.parametrize("timesteps", [2, 3, 4, 8])
def test_constant_input_spike_sum_is_the_finer_quantization_while_the_cap_is_not_hit(params, timesteps):
    # |z| <= 1 never needs more than one spike per step, so the per-step cap is not hit
    # as long as the total stays inside T * [lo, hi].
    z = RNG.uniform(-1, 1, size=500).astype(np.float32)
    if params.lo == 0:
        z = np.abs(z)
    spikes = run(np.broadcast_to(z, (timesteps, z.size)), params)
    total = spikes.sum(axis=0)
    u_total = np.float32(params.v_init) + np.float64(timesteps) * z
    expected = np.floor(u_total) if params.rounding == "floor" else np.rint(u_total)
    np.testing.assert_array_equal(total, np.clip(expected, timesteps * params.lo, timesteps * params.hi))


@pytest.mark.parametrize("params", ALL, ids=lambda p: f"{p.rounding}[{p.lo},{p.hi}]")
def test_spikes_are_integers_within_bounds_for_any_input(params):
    z = (RNG.standard_cauchy(size=(6, 200)) * 10).astype(np.float32)
    spikes = run(z, params)
    assert np.all(spikes == np.round(spikes))
    assert spikes.min() >= params.lo and spikes.max() <= params.hi


@pytest.mark.parametrize("params", ALL, ids=lambda p: f"{p.rounding}[{p.lo},{p.hi}]")
def test_membrane_stays_within_one_level_when_the_cap_is_not_hit(params):
    u = initial_membrane((300,), params)
    for _ in range(10):
        z = RNG.uniform(-0.9, 0.9, size=300).astype(np.float32)
        if params.lo == 0:
            z = np.abs(z)
        u, _ = step(u, z, params)
        low, high = (0.0, 1.0) if params.rounding == "floor" else (-0.5, 0.5)
        assert np.all(u >= low) and np.all(u <= high)


def test_reset_is_by_subtraction_so_the_residue_carries_over():
    p = NeuronParams(lo=-1, hi=1, v_init=0.0, rounding="floor")
    spikes = run(np.full((4, 1), 0.6, dtype=np.float32), p)[:, 0]
    np.testing.assert_array_equal(spikes, [0, 1, 0, 1])


@pytest.mark.parametrize(
    "kwargs",
    [dict(lo=1, hi=2), dict(lo=-1, hi=-1), dict(lo=0.5, hi=1), dict(rounding="ceil"), dict(v_init=float("nan"))],
)
def test_invalid_parameters_are_refused(kwargs):
    base = dict(lo=-1, hi=1, v_init=0.5, rounding="floor")
    with pytest.raises(ValueError):
        NeuronParams(**{**base, **kwargs})


@pytest.mark.parametrize("lo, hi", [(0, 3), (-3, 0), (-2, 2)])
@pytest.mark.parametrize("rounding", ["floor", "half_even"])
@pytest.mark.parametrize("membrane", [-0.0, -0.3])
def test_a_zero_spike_is_plus_zero_whatever_the_sign_of_the_membrane(lo, hi, rounding, membrane):
    """ai.pmsm version 3: a zero spike is +0.0, as DequantizeLinear gives for the zero point's level
    (numpy's rint(-0.3) is -0.0, and numpy 1's clip at a bound of 0 gives +0.0 where numpy 2's gives -0.0)."""
    if rounding == "floor" and membrane == -0.3:
        membrane = -0.0  # floor(-0.3) is -1
    params = NeuronParams(lo=lo, hi=hi, v_init=-0.0, rounding=rounding)
    _, spikes = step(np.array([-0.0], np.float32), np.array([membrane], np.float32), params)
    assert spikes[0] == 0 and not np.signbit(spikes[0])
