"""Quantization: fake quantizers for training, and the integer forms a model is delivered in.

    from compression.quantization import UniformWeightQuantizer, attach_weight_quantizers
    attach_weight_quantizers(model, names, lambda name: UniformWeightQuantizer(bits=4))
    # ... fine-tune; then detach_weight_quantizers(model) bakes the grid values in

Modules:

- ``quantizers``: buckets, the uniform grid, ``UniformWeightQuantizer``, the weight-quantizer
  registry (``register_weight_quantizer``) and attaching / detaching them;
- ``codebook``: ``CodebookQuantizer`` (non-uniform: 2^k trainable centres per bucket);
- ``activations``: ``ActivationQuantizer`` on a module's output; ``spec``: the ``act_quant``
  spec transform that rebuilds them;
- ``dorefa_pact``: DoReFa and PACT clipped quantizers (Distiller's schedules);
- ``packed_format``: bit packing and the quantizers' codes of a quantized model (the layout of
  the bit-packed copy, which ``compression.artifacts.packed`` writes and reads);
- ``int8_qat``: 8-bit QAT with torchao's PT2E flow, converted to a real int8 program;
- ``integer_only``: integer-only inference programs (fixed-point requantization, YAML).
"""
from utils.lazy import lazy_exports

_EXPORTS = {
    "UniformWeightQuantizer": "quantizers", "attach_weight_quantizers": "quantizers",
    "detach_weight_quantizers": "quantizers", "quantizers_of": "quantizers",
    "register_weight_quantizer": "quantizers", "quantize_codes": "quantizers",
    "dequantize": "quantizers",
    "CodebookQuantizer": "codebook",
    "ActivationQuantizer": "activations", "attach_activation_quantizers": "activations",
    "act_quant_entry": "spec",
    "DorefaWeightQuantizer": "dorefa_pact", "DorefaActivation": "dorefa_pact",
    "PactActivation": "dorefa_pact",
    "pack_bits": "packed_format", "unpack_bits": "packed_format",
    "encode_quantized": "packed_format", "decode_quantized": "packed_format",
    "prepare_qat": "int8_qat", "convert_int8": "int8_qat",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
