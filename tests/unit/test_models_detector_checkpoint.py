"""Real-checkpoint path for detectors: `taxonstream models install detr` on STAND-IN checkpoints.

The checkpoints here are tiny, randomly initialised transformers models of the real families (DETR with a
transformers ResNet backbone, YOLOS), seeded and saved with save_pretrained the way published checkpoints
are. They detect nothing; the converter, the wrapper's conventions and the written repository entry are
what is tested, on the same code path a downloaded facebook/detr-resnet-50 or a fine-tune of it takes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

from google.protobuf import text_format  # noqa: E402
from PIL import Image  # noqa: E402
from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil  # noqa: E402

from taxonstream.models.detector_checkpoints import (  # noqa: E402
    build_wrapper,
    input_convention,
    install_detector,
    load_detector,
    resolve_labels,
)
from taxonstream.models.preprocess import detector_pixels  # noqa: E402

SIZE = 96
CLASSES = {0: "insect", 1: "label", 2: "ruler"}
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]  # not ImageNet's: shows the folder's own numbers are used


def tiny_detr_config(**overrides):
    backbone = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic", out_features=["stage4"]
    )
    settings = dict(
        backbone_config=backbone,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=12,
        id2label=CLASSES,
        label2id={v: k for k, v in CLASSES.items()},
    )
    return transformers.DetrConfig(**(settings | overrides))


def _spread(model, seed: int) -> None:
    """transformers' small init makes every query answer alike (scores equal to 1e-4); LeCun-scaled
    weights and unit query embeddings make queries differ, so the comparisons below mean something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "backbone" in name:
                continue
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / parameter[0].numel() ** 0.5)
            elif name.endswith("bias"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        model.model.query_position_embeddings.weight.copy_(
            torch.randn(model.model.query_position_embeddings.weight.shape, generator=generator)
        )


@pytest.fixture(scope="module")
def detr_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """STAND-IN: a 3-class DETR (ResNet backbone, 1+1 layers, 12 queries), seed 11, with a preprocessor."""
    torch.manual_seed(11)
    model = transformers.DetrForObjectDetection(tiny_detr_config()).eval()
    _spread(model, 11)
    folder = tmp_path_factory.mktemp("detr-standin")
    model.save_pretrained(folder)
    DetrImageProcessorPil(
        image_mean=MEAN, image_std=STD, size={"shortest_edge": SIZE, "longest_edge": 160}
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def installed(detr_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("repo") / "models"
    return out, install_detector(detr_checkpoint, out, target="cluster", name="detr")


def _image(seed: int = 3, size: tuple[int, int] = (150, 110)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_convention_comes_from_the_preprocessor_config(detr_checkpoint: Path, tmp_path: Path) -> None:
    convention = input_convention(detr_checkpoint)
    assert (convention.image_size, convention.scale) == (SIZE, pytest.approx(1.0))
    assert convention.mean == pytest.approx(tuple(MEAN)) and convention.std == pytest.approx(tuple(STD))
    assert input_convention(detr_checkpoint, image_size=64).image_size == 64
    bare = input_convention(tmp_path)  # no preprocessor_config.json: DETR's defaults
    assert (bare.image_size, bare.mean, bare.std) == (800, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"do_normalize": False, "size": {"height": 640, "width": 640}})
    )  # RT-DETR-style: rescale only
    square = input_convention(tmp_path)
    assert (square.image_size, square.mean, square.std) == (640, None, None)


def test_labels_resolve_by_name_or_id() -> None:
    assert resolve_labels(CLASSES) is None  # multi-class, nothing chosen: any class but no-object
    assert resolve_labels(CLASSES, ["Ruler", "0"]) == [0, 2]
    assert resolve_labels({0: "specimen"}) == [0]  # a one-class detector's class is the specimen
    with pytest.raises(ValueError, match="not a class"):
        resolve_labels(CLASSES, ["beetle"])


def test_install_writes_the_triton_entry(installed: tuple[Path, dict]) -> None:
    out, entry = installed
    assert entry["parity"] < 1e-4 and entry["standin"] is False and entry["family"] == "detr"
    assert entry["input_size"] == [SIZE, SIZE] and entry["queries"] == 12 and entry["specimen_classes"] == "any"
    config = text_format.Parse((out / "detr" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "detr" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
    assert config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("images", [3, SIZE, SIZE])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("boxes", [12, 4]), ("scores", [12])]
    assert json.loads((out / "detr" / "model.json").read_text())["settings"] == {
        "TAXONSTREAM_DETECTOR_MODEL": "detr",
        "TAXONSTREAM_DETECTOR_MODEL_VERSION": "1",
    }
    assert not (out / "detr" / "1" / "model.py").exists()  # cluster: Triton's onnxruntime backend, no Python


def test_local_target_and_a_chosen_label(detr_checkpoint: Path, tmp_path: Path) -> None:
    entry = install_detector(
        detr_checkpoint, tmp_path / "models", target="local", name="bugs", version="3", labels=["insect"], image_size=64
    )
    config = text_format.Parse(
        (tmp_path / "models" / "bugs" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.backend == "python" and [list(t.dims) for t in config.input] == [[3, 64, 64]]
    assert (tmp_path / "models" / "bugs" / "3" / "model.py").is_file()
    assert entry["specimen_classes"] == {"0": "insect"} and entry["model_id"] == "bugs/3"


def test_onnx_equals_torch_on_random_batches(detr_checkpoint: Path, installed: tuple[Path, dict]) -> None:
    out, _ = installed
    wrapper = build_wrapper(load_detector(detr_checkpoint), input_convention(detr_checkpoint))
    session = onnxruntime.InferenceSession(str(out / "detr" / "1" / "model.onnx"))
    for seed, batch in ((1, 1), (2, 5)):
        images = np.random.default_rng(seed).random((batch, 3, SIZE, SIZE), dtype=np.float32)
        boxes, scores = session.run(["boxes", "scores"], {"images": images})
        with torch.no_grad():
            expected_boxes, expected_scores = wrapper(torch.from_numpy(images))
        np.testing.assert_allclose(boxes, expected_boxes.numpy(), atol=1e-4)
        np.testing.assert_allclose(scores, expected_scores.numpy(), atol=1e-4)
        assert scores.shape == (batch, 12) and scores.min() >= 0.0 and scores.max() <= 1.0


def test_outputs_are_transformers_post_processing(detr_checkpoint: Path, installed: tuple[Path, dict]) -> None:
    """Same image two ways: our pixels through the ONNX graph, and transformers' own image processor
    (rescale + its mean/std) through the torch model and `post_process_object_detection`."""
    out, _ = installed
    original = _image()
    squashed = original.resize((SIZE, SIZE), Image.Resampling.BILINEAR)  # as the contract squashes
    pixels, (width, height) = detector_pixels(squashed, SIZE)
    session = onnxruntime.InferenceSession(str(out / "detr" / "1" / "model.onnx"))
    boxes, scores = (a[0] for a in session.run(["boxes", "scores"], {"images": pixels[None]}))

    processor = DetrImageProcessorPil.from_pretrained(str(detr_checkpoint))
    model = load_detector(detr_checkpoint)
    inputs = processor(images=[squashed], do_resize=False, do_pad=False, return_tensors="pt")
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"])
    # threshold -1 keeps every query, in query order; boxes scaled to the ORIGINAL image's pixels
    (result,) = processor.post_process_object_detection(
        outputs, threshold=-1.0, target_sizes=[(original.height, original.width)]
    )
    np.testing.assert_allclose(scores, result["scores"].numpy(), atol=1e-5)
    cx, cy, w, h = boxes.T
    ours = np.stack(
        [
            (cx - w / 2) * original.width,
            (cy - h / 2) * original.height,
            (cx + w / 2) * original.width,
            (cy + h / 2) * original.height,
        ],
        axis=1,
    )
    np.testing.assert_allclose(ours, result["boxes"].numpy(), atol=1e-3)
    assert (width, height) == (SIZE, SIZE)
    assert scores.max() - scores.min() > 0.02  # distinct per-query scores, not one value twelve times

    # With --label ruler the score is that class's own probability.
    wrapper = build_wrapper(model, input_convention(detr_checkpoint), ["ruler"])
    with torch.no_grad():
        _, ruler = wrapper(torch.from_numpy(pixels[None]))
    np.testing.assert_allclose(ruler[0].numpy(), outputs.logits.softmax(-1)[0, :, 2].numpy(), atol=1e-5)


def test_yolos_checkpoint(tmp_path: Path) -> None:
    """STAND-IN YOLOS (2-layer ViT, 5 detection tokens, seed 12): ViT family, same head and conventions."""
    torch.manual_seed(12)
    config = transformers.YolosConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=[64, 64],
        patch_size=16,
        num_detection_tokens=5,
        id2label={0: "specimen"},
        label2id={"specimen": 0},
    )
    transformers.YolosForObjectDetection(config).eval().save_pretrained(tmp_path / "yolos")
    entry = install_detector(tmp_path / "yolos", tmp_path / "models", target="cluster", name="yolos", image_size=SIZE)
    assert entry["family"] == "yolos" and entry["queries"] == 5 and entry["parity"] < 1e-4
    assert entry["specimen_classes"] == {"0": "specimen"}


def test_unsupported_family_and_missing_weights_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rt_detr"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not supported"):
        load_detector(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="neither"):
        load_detector(tmp_path)


def _install_detr_args(checkpoint: Path, out: Path, *flags: str):
    """`taxonstream models install detr --checkpoint C --out O FLAGS…`, parsed by the CLI's own parser."""
    from taxonstream.cli.main import parser

    command = ["models", "install", "detr", "--checkpoint", str(checkpoint), "--out", str(out)]
    return parser().parse_args([*command, *flags])


def test_cli_installs_a_detr_folder(detr_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from taxonstream.fetching.inputs import InputError

    flags = ["--name", "specimens", "--version", "2", "--label", "insect", "--label", "2", "--image-size", "64"]
    args = _install_detr_args(detr_checkpoint, tmp_path / "models", *flags)
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "specimens/2" in printed and "specimen = insect, ruler" in printed
    assert "TAXONSTREAM_DETECTOR_MODEL=specimens TAXONSTREAM_DETECTOR_MODEL_VERSION=2" in printed
    assert (tmp_path / "models" / "specimens" / "2" / "model.onnx").is_file()
    args = _install_detr_args(detr_checkpoint, tmp_path / "models", "--label", "beetle")
    with pytest.raises(InputError, match="not a class"):
        args.run(args)


# timm's ResNet parameter names, written from its layout (conv1/bn1 stem, layerN.B.convK/bnK, downsample.0/1),
# mapped to transformers' ResNet names: how the main revision of facebook/detr-resnet-50 stores its backbone.
def _hf_to_timm(key: str) -> str:
    import re

    rules = [
        (r"embedder\.embedder\.convolution\.(.+)", lambda m: f"conv1.{m[1]}"),
        (r"embedder\.embedder\.normalization\.(.+)", lambda m: f"bn1.{m[1]}"),
        (
            r"encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.(.+)",
            lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.{m[4]}",
        ),
        (
            r"encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.(.+)",
            lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.{m[4]}",
        ),
        (
            r"encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.(.+)",
            lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.{m[3]}",
        ),
        (
            r"encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.(.+)",
            lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.{m[3]}",
        ),
    ]
    for pattern, rename in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return rename(match)
    raise AssertionError(key)


def test_a_timm_backbone_checkpoint_loads_without_timm(tmp_path: Path) -> None:
    """STAND-IN DETR with ResNet-50's real backbone geometry (random, seed 13; 1+1 small transformer layers),
    saved the way timm-backbone checkpoints are: config `use_timm_backbone: true, backbone: resnet50` and
    timm parameter names. It must load and compute exactly what the same weights do on transformers' ResNet."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(13)
    backbone = transformers.ResNetConfig(
        embedding_size=64,
        hidden_sizes=[256, 512, 1024, 2048],
        depths=[3, 4, 6, 3],
        layer_type="bottleneck",
        out_features=["stage4"],
    )
    reference = transformers.DetrForObjectDetection(tiny_detr_config(backbone_config=backbone)).eval()
    with torch.no_grad():  # non-trivial frozen batch-norm statistics, so a misplaced one shows
        for name, buffer in reference.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.copy_(torch.rand(buffer.shape) * 0.5 + (0.75 if name.endswith("var") else -0.25))
    reference.save_pretrained(tmp_path / "hf")
    prefix = "model.backbone.conv_encoder.model."
    state = {
        (prefix + _hf_to_timm(k[len(prefix) :]) if k.startswith(prefix) else k): v
        for k, v in load_file(str(tmp_path / "hf" / "model.safetensors")).items()
    }
    state[prefix + "fc.weight"] = torch.zeros(1000, 2048)  # timm's classifier: not part of DETR, dropped
    timm_folder = tmp_path / "timm"
    timm_folder.mkdir()
    save_file(state, str(timm_folder / "model.safetensors"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["backbone_config"]
    config |= {"use_timm_backbone": True, "backbone": "resnet50", "use_pretrained_backbone": True, "dilation": False}
    (timm_folder / "config.json").write_text(json.dumps(config))

    converted = load_detector(timm_folder)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected, got = reference(pixel_values=pixels), converted(pixel_values=pixels)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.pred_boxes, expected.pred_boxes, rtol=0, atol=1e-6)

    config["dilation"] = True
    (timm_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="needs timm"):
        load_detector(timm_folder)
