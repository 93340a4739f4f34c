"""Names of the spiking ONNX format (docs/spiking-onnx.md), shared by every module that writes or reads it."""

NEURON_DOMAIN = "ai.pmsm"
NEURON_DOMAIN_VERSION = 2  # version 2: the neuron is one timestep, MultiSpikeNeuron(z, u) -> (s, u_next)
NEURON_OP = "MultiSpikeNeuron"
NEURON_ATTRIBUTES = ("lo", "hi", "v_init", "rounding")
TIMESTEPS_INPUT = "timesteps"
TIME_LOOP = "pmsm_time/loop"  # the Loop node over timesteps
TIME_PREFIX = "pmsm_time/"  # every node and tensor the time representation adds
SPIKING_ONNX_FORMAT = "spiking-onnx/2"


def is_neuron(node) -> bool:
    """Whether an ONNX node (``onnx.NodeProto``) is a PMSM neuron."""
    return node.domain == NEURON_DOMAIN and node.op_type == NEURON_OP
