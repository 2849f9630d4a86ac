"""pocketflow-torch: model compression for PyTorch CNNs (PocketFlow, rebuilt)."""
from setuptools import find_packages, setup

# The tools, beside ``python -m tools.<name>`` (docs/tools.md); each function is the tool's ``cli``.
CONSOLE_SCRIPTS = [
    "pocketflow-summary = tools.summary:cli",
    "pocketflow-draw = tools.draw:cli",
    "pocketflow-export-onnx = tools.export_onnx:cli",
    "pocketflow-latency = tools.latency:cli",
    "pocketflow-deploy = tools.deploy:cli",
    "pocketflow-sensitivity = tools.sensitivity:cli",
    "pocketflow-integer-only = tools.integer_only:cli",
]

setup(
    name="pocketflow-torch",
    version="0.1.0",
    description="Model compression framework for PyTorch: pruning, quantization, distillation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # examples/ and benchmarks/ are read from a checkout, not installed as top-level packages
    packages=find_packages(include=["learners*", "nets*", "datasets*", "utils*", "training*",
                                    "compression*", "deployment*", "tools*"]),
    py_modules=["pocketflow_torch"],
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    install_requires=[
        "torch>=2.4,<2.15",
        "absl-py>=1.0",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-learn>=1.2",
        "pillow>=9.0",
        "tensorboard>=2.12",
        "pyyaml>=6.0",
        "tqdm>=4.60",
    ],
    extras_require={
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.5"],
        # int8 QAT (torchao PT2E) and ExecuTorch/XNNPACK export; executorch pulls torchao
        "int8": ["executorch>=1.5,<1.6"],
        # the tools' plots and spreadsheets (sensitivity PNG, summary xlsx)
        "tools": ["matplotlib>=3.7", "openpyxl>=3.1"],
        "dev": ["pytest>=7.0", "ruff>=0.5", "onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.5",
                "executorch>=1.5,<1.6",
                "matplotlib>=3.7", "openpyxl>=3.1", "tfrecord>=1.14"],
        "horovod": ["horovod==0.28.1"],
        "bench": ["torch-pruning"],
    },
)
