"""The one table of saved files: every file a run writes as or beside its artifact, by suffix.

A row (:class:`ArtifactFile`) names a kind of file, its suffix, its role, what it is (for
messages) and the runtime that runs it, where one does:

- ``model``: the model artifact (architecture spec + weights, ``.ckpt``; ``.pt`` / ``.pth``
  are accepted as model artifacts too), rebuilt by ``compression.artifacts.load_model``;
- ``sparse`` / ``packed``: copies of an artifact written beside it, ``<stem>.coo.pt``,
  ``<stem>.csr.pt`` (``compression.artifacts.sparse``) and ``<stem>.quant.pt``
  (``compression.artifacts.packed``);
- ``deployment``: programs for a runtime (``deployment.formats``), never a model artifact:
  ``.onnx``, ``.pte``, uniform-tf's int8 ``.pt2``, and the float twins of an int8 result
  (``<stem>_fp32.onnx``, ``<stem>_fp32.pte``: the float model deployed under the stem
  ``<stem>`` + ``FLOAT_TWIN``), and the int8 QDQ model ``<stem>.int8.onnx`` that
  ``tools.export_onnx --int8`` writes beside an ``.onnx``.

Everything that needs a suffix reads it here (``suffix``, ``path_of``, ``file_of``,
``runtime_for``, ``derived_suffixes``); ``deployment.formats.register_format`` adds the rows
of a new runtime (``register_file``).
"""
from __future__ import annotations

from dataclasses import dataclass

ROLES = ("model", "sparse", "packed", "deployment")
FLOAT_TWIN = "_fp32"   # stem tag of the float programs deployed beside an int8 result


@dataclass(frozen=True)
class ArtifactFile:
    name: str                  # "ckpt", "coo", "onnx", "onnx_fp32"...
    suffix: str                # ".ckpt", ".coo.pt", "_fp32.onnx"...
    role: str                  # one of ROLES
    what: str                  # "an ExecuTorch program": how messages name such a file
    runtime: str | None = None  # what runs it ("torch", "onnxruntime"...), None: not run as is

    @property
    def derived(self) -> bool:
        """Written beside the artifact from it (and removed when its run is redone)."""
        return self.role != "model"


_FILES: dict[str, ArtifactFile] = {}   # name -> row, in table order


def check_file(row: ArtifactFile) -> None:
    """Raise ValueError unless ``row`` can join the table (a known role, a lower-case suffix
    starting with '.' or '_' that no other row has)."""
    if row.role not in ROLES:
        raise ValueError(f"unknown role {row.role!r} of file {row.name!r}; valid: {', '.join(ROLES)}")
    if not row.suffix or row.suffix[0] not in "._" or row.suffix != row.suffix.lower():
        raise ValueError(f"file {row.name!r}: a suffix starts with '.' or '_' and is lower case, "
                         f"got {row.suffix!r}")
    taken = [r.name for r in _FILES.values() if r.suffix == row.suffix and r.name != row.name]
    if taken:
        raise ValueError(f"suffix {row.suffix!r} is already the file {taken[0]!r}")


def register_file(row: ArtifactFile) -> ArtifactFile:
    """Add (or replace, by name) a row; a suffix belongs to one row only."""
    check_file(row)
    _FILES[row.name] = row
    return row


def _row(name: str, suffix: str, role: str, what: str, runtime: str | None = None) -> None:
    register_file(ArtifactFile(name, suffix, role, what, runtime))


_ARTIFACT = "a model artifact (architecture spec and weights)"
_row("ckpt", ".ckpt", "model", _ARTIFACT, "torch")
_row("pt", ".pt", "model", _ARTIFACT, "torch")
_row("pth", ".pth", "model", _ARTIFACT, "torch")
_row("onnx", ".onnx", "deployment", "an ONNX model", "onnxruntime")
_row("pte", ".pte", "deployment", "an ExecuTorch program", "executorch")
_row("pt2", ".pt2", "deployment", "an exported int8 program", "torch.export")
_row("onnx_fp32", FLOAT_TWIN + ".onnx", "deployment",
     "an ONNX model (the float twin of an int8 result)", "onnxruntime")
_row("pte_fp32", FLOAT_TWIN + ".pte", "deployment",
     "an ExecuTorch program (the float twin of an int8 result)", "executorch")
_row("coo", ".coo.pt", "sparse", "a sparse copy of a model artifact (COO layout)")
_row("csr", ".csr.pt", "sparse", "a sparse copy of a model artifact (CSR layout)")
_row("quant", ".quant.pt", "packed", "a bit-packed copy of a quantized model artifact")
_row("onnx_int8", ".int8.onnx", "deployment", "an int8 QDQ ONNX model (tools.export_onnx --int8)",
     "onnxruntime")


def artifact_file(name: str) -> ArtifactFile:
    """The row called ``name``."""
    if name not in _FILES:
        raise KeyError(f"no saved file is called {name!r}; known: {', '.join(_FILES)}")
    return _FILES[name]


def rows(*roles: str) -> list[ArtifactFile]:
    """The rows (in table order), of these roles only when given."""
    return [row for row in _FILES.values() if not roles or row.role in roles]


def suffix(name: str) -> str:
    return artifact_file(name).suffix


def path_of(stem: str, name: str) -> str:
    """``<stem><suffix>`` of the file ``name``."""
    return stem + suffix(name)


def model_suffixes() -> tuple[str, ...]:
    """Suffixes of model artifacts (``.ckpt`` first)."""
    return tuple(row.suffix for row in rows("model"))


def derived_suffixes() -> tuple[str, ...]:
    """Suffixes of every file derived from an artifact ``<stem>.<ext>`` (``<stem><suffix>``)."""
    return tuple(row.suffix for row in _FILES.values() if row.derived)


def file_of(path: str) -> ArtifactFile | None:
    """The row whose suffix ends ``path`` (the longest one: ``m.coo.pt`` is a sparse copy,
    ``m_fp32.pte`` a float twin), None for a file of no known kind."""
    lowered = str(path).lower()
    rows = [row for row in _FILES.values() if lowered.endswith(row.suffix)]
    return max(rows, key=lambda row: len(row.suffix)) if rows else None


def runtime_for(path: str) -> str | None:
    """The runtime of ``path`` by its longest suffix that has one (a sparse copy ``.coo.pt``
    has none of its own: it is read as a ``.pt``, and refused by ``load_model``)."""
    lowered = str(path).lower()
    rows = [row for row in _FILES.values() if row.runtime and lowered.endswith(row.suffix)]
    return max(rows, key=lambda row: len(row.suffix)).runtime if rows else None


def is_deployment_file(path: str) -> bool:
    row = file_of(path)
    return row is not None and row.role == "deployment"
