"""Saved files, one owner: every file a run writes as or beside its artifact, written and
rebuilt here, and the one table of their suffixes.

    from compression.artifacts import save_model, load_model, path_of
    save_model("models_eval/model.ckpt", model, spec, meta)      # architecture spec + weights
    model, obj = load_model("models_eval/model.ckpt", base=None)  # rebuilt from the file alone
    export_quantized(path_of(stem, "quant"), model, spec)        # the bit-packed copy

``load_model`` refuses what is not a model artifact (a directory, a missing file, a
deployment program) with what it is and what to do instead. The encoders stay with their
mechanisms (``compression.sparsity.sparse_format``: COO / CSR;
``compression.quantization.packed_format``: bit packing, quantizer codes); the registry of
architecture transforms is ``utils.model_io``.

Modules:

- ``files``: the table (``ArtifactFile`` rows: suffix, role, what it is, its runtime), lookups
  by name (``suffix``, ``path_of``) and by path (``file_of``, ``runtime_for``), and
  ``register_file`` for a new runtime's files (``deployment.formats.register_format``);
- ``model``: the model artifact: ``save_model``, ``build_model``, ``load_model``,
  ``load_weights_from`` and the refusals (``NotAModelArtifact``);
- ``sparse``: the sparse copies (COO, CSR): ``save_sparse_model``, ``load_sparse_model``,
  ``export_sparse_files``;
- ``incomplete``: the ``INCOMPLETE`` mark of a result folder a run has not finished writing;
- ``packed``: the bit-packed copy: ``save_quantized_model``, ``load_quantized_model``,
  ``export_quantized``.
"""
from utils.lazy import lazy_exports

_EXPORTS = {
    "ArtifactFile": "files", "FLOAT_TWIN": "files", "register_file": "files", "check_file": "files",
    "artifact_file": "files", "rows": "files", "suffix": "files", "path_of": "files",
    "model_suffixes": "files", "derived_suffixes": "files", "file_of": "files",
    "runtime_for": "files", "is_deployment_file": "files",
    "save_model": "model", "build_model": "model", "load_model": "model",
    "load_weights_from": "model", "check_model_path": "model", "NotAModelArtifact": "model",
    "save_sparse_model": "sparse", "load_sparse_model": "sparse", "export_sparse_files": "sparse",
    "save_quantized_model": "packed", "load_quantized_model": "packed",
    "export_quantized": "packed",
    "mark_incomplete": "incomplete", "mark_complete": "incomplete",
    "check_complete": "incomplete", "IncompleteResult": "incomplete",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
