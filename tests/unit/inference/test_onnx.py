"""`export --onnx` and `predict --onnx` (inference/onnx_export.py, onnx_model.py): parity with PyTorch on
real val pairs, dynamic batch and text length, and the checks that keep a downloaded ONNX file from
reaching outside its folder or asking for custom operators."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from run_utils import tiny_config

import msa_dist
from msa_dist.cli import main
from msa_dist.common.errors import MsaDistError
from msa_dist.data.shards import build_shards
from msa_dist.engine.trainer import train
from msa_dist.inference.onnx_model import checked_onnx_bytes, load_onnx_model

REAL = Path(__file__).resolve().parents[4] / "shared" / "data" / "mvsa"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model trained 4 steps on 120 real labelled pairs, exported with --onnx; (run, folder, val pairs)."""
    if not (REAL / "train.txt").is_file():
        pytest.skip(f"real data not found at {REAL} (../shared/data/mvsa beside the repo)")
    root = tmp_path_factory.mktemp("onnx")
    (root / "raw" / "data").mkdir(parents=True)
    labelled = (REAL / "train.txt").read_text().splitlines()[1:121]
    for line in labelled:
        guid = line.split(",")[0]
        for ext in ("jpg", "txt"):
            (root / "raw" / "data" / f"{guid}.{ext}").symlink_to(REAL / "data" / f"{guid}.{ext}")
    (root / "raw" / "train.txt").write_text("guid,tag\n" + "\n".join(labelled) + "\n")
    (root / "raw" / "test_without_label.txt").write_text("guid,tag\n")
    build_shards(root / "raw", root / "shards", val_fraction=0.25, seed=0, shard_size=40)
    val = [k for f in sorted((root / "shards").glob("val-*.idx.json")) for k in json.loads(f.read_text())["keys"]]
    run, out = root / "run", root / "exported"
    train(tiny_config(root / "shards", "train.epochs=1", "train.max_steps_per_epoch=4"), run)
    assert main(["export", "--run", str(run), "--out", str(out), "--onnx"]) == 0
    pairs = [((REAL / "data" / f"{g}.jpg").read_bytes(), _text(g)) for g in val]
    return run, out, pairs


def _text(guid: str) -> str:
    from msa_dist.data.raw import decode_text

    return decode_text((REAL / "data" / f"{guid}.txt").read_bytes())[0].strip()


@pytest.mark.slow
def test_onnx_gives_pytorch_s_class_and_probabilities_on_every_real_val_pair(exported):
    run, out, pairs = exported
    assert len(pairs) == 30
    images, texts = [p[0] for p in pairs], [p[1] for p in pairs]
    reference = msa_dist.load_model(run).predict_proba(images, texts)  # the run's PyTorch model
    onnx_model = load_onnx_model(out)
    probs = onnx_model.predict_proba(images, texts)  # one batch of 30, padded to its longest text
    assert torch.equal(probs.argmax(dim=1), reference.argmax(dim=1))
    assert (probs - reference).abs().max().item() <= 1e-4
    # other batch sizes and text lengths: the axes are dynamic
    for i in (0, 7):
        single = onnx_model.predict_proba(images[i : i + 1], texts[i : i + 1])
        assert (single - reference[i : i + 1]).abs().max().item() <= 1e-4
    assert [i.name for i in onnx_model.session.get_inputs()] == ["input_ids", "attention_mask", "images"]


@pytest.mark.slow
def test_predict_onnx_writes_the_classes_predict_writes(exported, tmp_path):
    run, out, pairs = exported
    data = tmp_path / "pairs"
    data.mkdir()
    with (data / "pairs.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image", "text"])
        for i, (image, text) in enumerate(pairs[:12]):
            (data / f"{i}.jpg").write_bytes(image)
            writer.writerow([i, f"{i}.jpg", text])
    a, b = tmp_path / "torch.csv", tmp_path / "onnx.csv"
    assert main(["predict", "--run", str(run), "--inputs", str(data / "pairs.csv"), "--out", str(a)]) == 0
    assert main(["predict", "--run", str(out), "--inputs", str(data / "pairs.csv"), "--out", str(b), "--onnx"]) == 0
    rows_a, rows_b = (list(csv.reader(p.open())) for p in (a, b))
    assert [r[:2] for r in rows_a] == [r[:2] for r in rows_b] and len(rows_b) == 13
    assert (
        max(abs(float(x) - float(y)) for ra, rb in zip(rows_a[1:], rows_b[1:]) for x, y in zip(ra[2:], rb[2:])) <= 1e-4
    )
    assert main(["predict", "--run", str(run), "--inputs", str(data / "pairs.csv"), "--out", str(b), "--onnx"]) == 2


def _tiny_onnx(path: Path, domain: str = "", op: str = "Relu", external: str | None = None) -> Path:
    """A one-node graph y = op(x + w); `external`: w's data lives in that side file."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    if external is not None:
        weight.ClearField("float_data")
        weight.data_location = TensorProto.EXTERNAL
        entry = weight.external_data.add()
        entry.key, entry.value = "location", external
    nodes = [helper.make_node("Add", ["x", "w"], ["s"]), helper.make_node(op, ["s"], ["y"], domain=domain)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [weight],
    )
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def test_a_plain_onnx_file_passes_and_external_data_inside_the_folder_is_read(tmp_path):
    assert onnx.load_from_string(checked_onnx_bytes(_tiny_onnx(tmp_path / "a.onnx"))).graph.node[1].op_type == "Relu"
    (tmp_path / "w.bin").write_bytes(torch.tensor([1.0, 2.0]).numpy().tobytes())
    model = onnx.load_from_string(checked_onnx_bytes(_tiny_onnx(tmp_path / "b.onnx", external="w.bin")))
    assert onnx.numpy_helper.to_array(model.graph.initializer[0]).tolist() == [1.0, 2.0]


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname", "link.bin", "missing.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 8)
    (folder / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(MsaDistError) as err:
        checked_onnx_bytes(_tiny_onnx(folder / "m.onnx", external=location))
    assert "which is not a file inside" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("domain", "op"), [("com.example.custom", "Relu"), ("com.microsoft", "EPContext")])
def test_custom_operators_are_refused(tmp_path, domain, op):
    with pytest.raises(MsaDistError, match="is not one of ONNX Runtime's built-in operators"):
        checked_onnx_bytes(_tiny_onnx(tmp_path / "m.onnx", domain=domain, op=op))


def test_a_link_or_a_non_onnx_file_is_one_line(tmp_path):
    (tmp_path / "link.onnx").symlink_to(_tiny_onnx(tmp_path / "a.onnx"))
    with pytest.raises(MsaDistError, match="cannot read"):
        checked_onnx_bytes(tmp_path / "link.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(MsaDistError, match="is not an ONNX model"):
        checked_onnx_bytes(tmp_path / "junk.onnx")
