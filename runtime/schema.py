"""Names of the spiking ONNX format (docs/spiking-onnx.md), shared by every module that writes or reads it."""

NEURON_DOMAIN = "ai.pmsm"
NEURON_OP = "MultiSpikeNeuron"
NEURON_ATTRIBUTES = ("lo", "hi", "v_init", "rounding")
TIMESTEPS_INPUT = "timesteps"
FOLD_PREFIX = "pmsm_fold/"
READOUT_PREFIX = "pmsm_readout/"
FORMAT = "spiking-onnx/1"
