"""`predict --onnx`: an exported folder's model.onnx run by ONNX Runtime, with the folder's preprocessing.

An ONNX file is a download like any other: it is checked before ONNX Runtime sees it. Parsing the
protobuf runs no code, and ONNX Runtime runs only its built-in operators unless a custom-op library is
registered (msa-dist registers none); what remains is what the file can point at:
- operators outside ONNX's and ONNX Runtime's own domains (a custom op would need a library) and
  `EPContext` nodes (they name a compiled blob on disk for a hardware provider) are refused;
- external data (weights in side files) must lie inside the model's folder: a `location` that is
  absolute, climbs out with `..`, or resolves through a link to elsewhere is refused.
The checked model is handed to ONNX Runtime as bytes, so the file is read once, as it was checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from msa_dist.common.errors import MsaDistError
from msa_dist.common.jsonfile import read_run_bytes
from msa_dist.common.labels import LABELS
from msa_dist.engine.batch import model_inputs
from msa_dist.inference.onnx_export import ONNX_FILE, onnx_input_names
from msa_dist.inference.predictor import Predictor, read_card

MAX_ONNX_BYTES = 2 << 30  # protobuf's limit for one message: larger models keep their weights in side files
BUILT_IN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")  # ONNX's operators and ONNX Runtime's own


@dataclass
class OnnxPredictor(Predictor):
    """A `Predictor` whose logits come from an ONNX Runtime session (`model` is None)."""

    session: object = None

    def logits(self, batch: dict) -> torch.Tensor:
        inputs = model_inputs(batch, torch.device("cpu"), self.modality)
        feed = {i.name: inputs[i.name].numpy() for i in self.session.get_inputs()}
        return torch.from_numpy(self.session.run(["logits"], feed)[0]).float()


def _subgraphs(nodes) -> Iterator:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield attr.g
            yield from attr.graphs


def _graphs(model) -> Iterator:
    """The main graph and every subgraph (If/Loop/Scan bodies), in functions too."""
    pending = [model.graph, *_subgraphs(n for f in model.functions for n in f.node)]
    while pending:
        graph = pending.pop()
        yield graph
        pending.extend(_subgraphs(graph.node))


def _tensors(graph) -> Iterator:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            yield from ([attr.t] if attr.HasField("t") else [])
            yield from attr.tensors


def _check_operators(model, where: Path) -> None:
    local = {(f.domain, f.name) for f in model.functions}  # functions defined in the file, made of checked nodes
    nodes = [n for g in _graphs(model) for n in g.node] + [n for f in model.functions for n in f.node]
    for node in nodes:
        if node.op_type == "EPContext" or (
            node.domain not in BUILT_IN_DOMAINS and (node.domain, node.op_type) not in local
        ):
            raise MsaDistError(
                f"{where}: operator {node.domain or 'ai.onnx'}.{node.op_type} is not one of ONNX Runtime's built-in "
                "operators; msa-dist loads no custom-op libraries"
            )


def _check_external_data(model, where: Path) -> bool:
    """True when some tensor's data lies in a side file; each must be a file inside the model's folder."""
    import onnx

    folder = where.parent.resolve()
    external = False
    for tensor in (t for g in _graphs(model) for t in _tensors(g)):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        external = True
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder) or not target.is_file():
            raise MsaDistError(
                f"{where}: tensor {tensor.name!r} keeps its data in {location!r}, which is not a file inside "
                f"{folder}: refused"
            )
    return external


def checked_onnx_bytes(path: str | Path) -> bytes:
    """The model at `path` as bytes for ONNX Runtime, after the checks above (one-line errors)."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        data = read_run_bytes(path, MAX_ONNX_BYTES)  # a regular file, not a link, of bounded size
        model = onnx.load_from_string(data)
    except OSError as exc:
        raise MsaDistError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise MsaDistError(f"{path} is not an ONNX model: {str(exc).strip()[:200] or type(exc).__name__}") from None
    _check_operators(model, path)
    if not _check_external_data(model, path):
        return data
    onnx.load_external_data_for_model(model, str(path.parent.resolve()))
    return model.SerializeToString()


def load_onnx_model(path: str | Path, adjust: bool = False) -> OnnxPredictor:
    """An exported folder (`msa-dist export --onnx`) as a predictor running model.onnx on ONNX Runtime."""
    path = Path(path)
    if not (path / ONNX_FILE).is_file():
        raise MsaDistError(
            f"--onnx: {path / ONNX_FILE} not found: export the run with `msa-dist export --run RUN --out DIR --onnx`"
        )
    try:
        import onnxruntime
    except ImportError:
        raise MsaDistError("--onnx needs onnxruntime: pip install 'msa-dist[onnx]'") from None
    from msa_dist.models.tokenizer import load_pretrained_tokenizer

    card, cfg, preprocessing = read_card(path)
    data = checked_onnx_bytes(path / ONNX_FILE)
    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors (Fail, InvalidGraph, ...) share no public base class
        raise MsaDistError(f"ONNX Runtime cannot load {path / ONNX_FILE}: {str(exc).strip()[:200]}") from None
    names, expected = [i.name for i in session.get_inputs()], list(onnx_input_names(cfg.model.modality))
    if names != expected:
        raise MsaDistError(
            f"{path / ONNX_FILE} takes inputs {names}, but a model.modality={cfg.model.modality} model takes {expected}"
        )
    offsets = torch.tensor(card["logit_offsets"]) if adjust and card.get("logit_offsets") else None
    return OnnxPredictor(
        None,
        load_pretrained_tokenizer(str(path / "tokenizer")),
        cfg.model.modality,
        preprocessing,
        card.get("labels", list(LABELS)),
        torch.device("cpu"),
        offsets,
        session,
    )
