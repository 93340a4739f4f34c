"""Names of the spiking ONNX format (docs/spiking-onnx.md), shared by every module that writes or reads it."""

NEURON_DOMAIN = "ai.pmsm"
NEURON_DOMAIN_VERSION = 3  # 2: the neuron is one timestep, MultiSpikeNeuron(z, u) -> (s, u_next); 3: a zero spike is +0.0
NEURON_OP = "MultiSpikeNeuron"
NEURON_ATTRIBUTES = ("lo", "hi", "v_init", "rounding")
TIMESTEPS_INPUT = "timesteps"
TIME_LOOP = "pmsm_time/loop"  # the Loop node over timesteps
TIME_PREFIX = "pmsm_time/"  # every node and tensor the time representation adds
SPIKING_ONNX_FORMAT = "spiking-onnx/3"  # 3: ai.pmsm version 3 (docs/spiking-onnx.md)


def is_neuron(node) -> bool:
    """Whether an ONNX node (``onnx.NodeProto``) is a PMSM neuron."""
    return node.domain == NEURON_DOMAIN and node.op_type == NEURON_OP
