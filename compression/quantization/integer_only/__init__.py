"""Integer-only inference of a quantized CNN (PocketFlow issue "Tools", item 6; seed 004).

From a float model (eval mode) and calibration batches, ``build_program`` produces an
``IntegerProgram`` over a torch.fx trace: int8-style (``weight_bits``, ``act_bits`` in [2, 8])
per-channel symmetric weights, per-tensor asymmetric unsigned activations, int32 biases, and
requantization by fixed-point multipliers ``(M0, shift)`` in integer arithmetic only.

    program = build_program(model.eval(), calib_images, weight_bits=8, act_bits=8)
    codes = program.run(program.quantize_input(images))     # int64 codes, integer ops only
    logits = program.dequantize(codes)                      # scale * (codes - zero_point)
    fake = FakeQuantModel(program)                          # float reference, same scales
    report = compare(program, eval_batches, float_model)    # one-LSB agreement + accuracies
    export_yaml(program, "model.yml", sparse="csr")         # dense | coo | csr weights
    program = load_yaml("model.yml")

Modules: ``fixed_point`` (multipliers, requantize, qparams), ``lowering`` (fx trace -> float
ops, BN folding, activation fusion), ``program`` (calibration, quantization, the program),
``integer_ops`` (the integer executor), ``fake_quant`` (the float reference), ``evaluate``
(parity), ``yaml_io`` (the YAML format), ``yaml_text`` (fast YAML text for long int lists).
"""
from compression.quantization.integer_only.evaluate import agreement, compare
from compression.quantization.integer_only.fake_quant import FakeQuantModel
from compression.quantization.integer_only.fixed_point import (ROUNDINGS, IntegerOverflowError,
                                                               multiplier_value,
                                                               quantize_multiplier, requantize)
from compression.quantization.integer_only.lowering import UnsupportedOpError
from compression.quantization.integer_only.program import IntegerProgram, QNode, build_program
from compression.quantization.integer_only.yaml_io import IntegerYamlError, export_yaml, load_yaml

__all__ = ["FakeQuantModel", "IntegerOverflowError", "IntegerProgram", "IntegerYamlError", "QNode",
           "ROUNDINGS", "UnsupportedOpError", "agreement", "build_program", "compare", "export_yaml",
           "load_yaml", "multiplier_value", "quantize_multiplier", "requantize"]
