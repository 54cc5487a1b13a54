"""Model sources: a CLIP exported in immich's folder layout (tests/support/clip_export.py writes
one to its conventions, with random weights: plumbing, not quality) loads, and gives the vectors
open_clip itself gives for the same weights, images and words; a broken folder is refused with
the file named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lookalike.embedding import onnx_runtime
from lookalike.embedding.descriptors import descriptor_name
from lookalike.embedding.encoder import ImageEncoder
from lookalike.embedding.images import prepare
from lookalike.embedding.models import get_model
from lookalike.errors import ConfigurationError, InvalidParameter, TextSearchUnavailable
from lookalike.settings import ImageLimits, ModelSettings

from .support.clip_export import SIZE, write_immich_clip
from harness.images import CLASSES, draw, encode


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_immich_clip(tmp_path_factory.mktemp("models") / "Tiny-ViT__random")


def _settings(folder: Path, **more) -> ModelSettings:
    return ModelSettings(name="immich-clip", weights=str(folder), **more)


def _copy(clip, tmp_path: Path) -> Path:
    folder = tmp_path / clip.folder.name
    shutil.copytree(clip.folder, folder)
    return folder


def test_an_immich_export_gives_open_clips_own_vectors(clip):
    encoder = ImageEncoder(_settings(clip.folder)).load()
    assert (encoder.dim, encoder.input_size, encoder.runtime, encoder.has_text) == (32, SIZE, "onnx", True)
    # Real images through the one preprocessing; five at once through a graph fixed at batch 1.
    pixels = np.stack([prepare(encode(draw(*c, seed=3)), SIZE, ImageLimits()).pixels for c in list(CLASSES.values())[:5]])
    ours, theirs = encoder.encode(pixels), clip.reference_image(pixels)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert (ours * theirs).sum(axis=1).min() >= 0.999
    texts = ["a photo of a red circle", "Blue  STRIPES", "a bicycle on the house with a zebra"]  # zebra: unknown
    ours, theirs = encoder.encode_text(texts), clip.reference_text(texts)
    assert (ours * theirs).sum(axis=1).min() >= 0.999
    assert (ours[0] @ ours[1]) < 0.999  # different words, different vectors
    assert encoder.describe()["text"] is True
    assert not encoder.text_engine.cut  # immich's graph is fixed at the context length: run as it is


def test_the_collection_records_which_export(clip):
    assert descriptor_name(_settings(clip.folder), ImageLimits(fit="crop")) == "immich-clip:Tiny-ViT__random/embedding/crop"
    assert get_model(_settings(clip.folder)).name == "immich-clip:Tiny-ViT__random"


def test_an_export_without_a_text_tower_searches_by_image_only(clip, tmp_path):
    folder = _copy(clip, tmp_path)
    shutil.rmtree(folder / "textual")
    encoder = ImageEncoder(_settings(folder)).load()
    assert not encoder.has_text and not get_model(_settings(folder)).has_text
    assert encoder.encode(np.zeros((1, SIZE, SIZE, 3), np.uint8)).shape == (1, 32)
    with pytest.raises(TextSearchUnavailable, match="Tiny-ViT__random has no text tower"):
        encoder.encode_text(["a cat"])
    with pytest.raises(TextSearchUnavailable, match="efficientnet-lite0 has no text tower"):
        ImageEncoder(ModelSettings(class_words=False)).encode_text(["a cat"])


@pytest.mark.parametrize("breakage, named", [
    (lambda f: (f / "visual" / "model.onnx").unlink(), "visual/model.onnx"),
    (lambda f: (f / "config.json").write_text("{not json"), "config.json"),
    (lambda f: (f / "config.json").write_text(json.dumps({"vision_cfg": {}})), "config.json has no embed_dim"),
    (lambda f: (f / "visual" / "preprocess_cfg.json").write_text(json.dumps({"size": 64})), "has no mean, std"),
    (lambda f: (f / "textual" / "tokenizer_config.json").unlink(), "textual/tokenizer_config.json"),
    (lambda f: (f / "textual" / "tokenizer.json").write_text(""), "textual/tokenizer.json is empty"),
])
def test_a_broken_folder_is_refused_naming_the_file(clip, tmp_path, breakage, named):
    folder = _copy(clip, tmp_path)
    breakage(folder)
    with pytest.raises(ConfigurationError, match=named.replace("/", r"[/\\]")):
        get_model(_settings(folder))


@pytest.mark.parametrize("file, named", [("visual/model.onnx", "onnxruntime cannot load .*visual/model.onnx"),
                                         ("textual/model.onnx", "onnxruntime cannot load .*textual/model.onnx"),
                                         ("textual/tokenizer.json", "cannot read .*textual/tokenizer.json")])
def test_a_file_that_does_not_load_is_refused_at_load_naming_it(clip, tmp_path, file, named):
    folder = _copy(clip, tmp_path)
    (folder / file).write_bytes(b"\x08\x01garbage, not what it should be")
    with pytest.raises(ConfigurationError, match=named):
        ImageEncoder(_settings(folder)).load()


def test_a_folder_model_needs_the_folder_and_onnx():
    with pytest.raises(ConfigurationError, match="needs model.weights set to the export's folder"):
        get_model(ModelSettings(name="immich-clip"))
    with pytest.raises(ConfigurationError, match="choose one of .*immich-clip"):
        get_model(ModelSettings(name="clip"))


def test_export_folder_refuses_the_torch_runtime(clip):
    with pytest.raises(ConfigurationError, match="an ONNX export: model.runtime must be onnx or auto"):
        ImageEncoder(_settings(clip.folder, runtime="torch")).load()


class _FixedGraph:
    """A graph whose batch dimension is fixed (as immich's exports are): it refuses any other."""

    def __init__(self, batch: int | str):
        self.batch, self.calls = batch, []

    def get_inputs(self):
        return [type("Input", (), {"shape": [self.batch, 3]})()]

    def run(self, _, inputs):
        x = inputs["x"]
        assert isinstance(self.batch, str) or len(x) == self.batch
        self.calls.append(len(x))
        return [x * 2]


@pytest.mark.parametrize("batch, calls", [(1, [1] * 5), (2, [2, 2, 2]), ("batch", [5])])
def test_a_fixed_batch_graph_runs_in_chunks_of_its_size(batch, calls):
    graph, rows = _FixedGraph(batch), np.arange(15, dtype=np.float32).reshape(5, 3)
    assert np.array_equal(onnx_runtime.run_in_batches(graph, {"x": rows}), rows * 2)
    assert graph.calls == calls


# -- open_clip by name, and the exporter ------------------------------------------------------
TINY_ARCH = "Tiny-CLIP-test"  # registered with open_clip for these tests: CLIP's real 49,408-token vocabulary


@pytest.fixture(scope="module")
def open_clip_checkpoint(tmp_path_factory):
    """A tiny open_clip architecture registered by name, and a checkpoint file of random weights."""
    import open_clip
    import torch

    from .support.clip_export import VISION_CFG

    root = tmp_path_factory.mktemp("open_clip")
    config = {"embed_dim": 32, "vision_cfg": VISION_CFG,
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (root / f"{TINY_ARCH}.json").write_text(json.dumps(config))
    open_clip.add_model_config(root / f"{TINY_ARCH}.json")
    torch.manual_seed(1)
    model = open_clip.create_model(TINY_ARCH).eval()
    torch.save(model.state_dict(), root / "tiny.pt")
    return model, root / "tiny.pt"


def test_the_exported_tokenizer_splits_text_as_open_clip_does():
    """CLIP's BPE (its vocabulary ships inside open_clip) written as a tokenizers file gives
    open_clip's own ids: case, punctuation, contractions, digits, accents, other scripts."""
    import open_clip

    from lookalike.embedding.clip_export import clip_tokenizer

    tokenizer = clip_tokenizer()
    texts = ["a photo of a Red  bicycle!", "It's 3 o'clock, isn't it?", "naïve café — résumé", "東京の猫",
             "dogs & cats; 42 apples", "   leading\tand\ntrailing  ", "emoji 🚲 bike", "UPPER lower MiXeD"]
    for text, theirs in zip(texts, open_clip.tokenize(texts).numpy()):
        assert tokenizer.encode(text).ids == [int(i) for i in theirs if i], text


def test_open_clip_by_name_is_exported_once_and_gives_its_own_vectors(open_clip_checkpoint, tmp_path):
    import open_clip
    import torch

    model, checkpoint = open_clip_checkpoint
    settings = ModelSettings(name=f"open-clip:{TINY_ARCH}", weights=str(checkpoint), cache_dir=str(tmp_path))
    spec = get_model(settings)  # read without loading: what the ingress knows
    assert (spec.name, spec.dim, spec.input_size, spec.has_text) == (f"open-clip:{TINY_ARCH}:tiny.pt", 32, SIZE, True)
    assert descriptor_name(settings, ImageLimits()) == f"open-clip:{TINY_ARCH}:tiny.pt/embedding/pad"
    encoder = ImageEncoder(settings).load()
    pixels = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), np.uint8)
    x = (pixels / 255 - np.array(open_clip.OPENAI_DATASET_MEAN)) / np.array(open_clip.OPENAI_DATASET_STD)
    texts = ["a red bicycle", "Two dogs, playing!", "a photo of a cat"]
    with torch.no_grad():
        theirs = model.encode_image(torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32), normalize=True)
        their_text = model.encode_text(open_clip.tokenize(texts), normalize=True)
    assert (encoder.encode(pixels) * theirs.numpy()).sum(axis=1).min() >= 0.999
    assert (encoder.encode_text(texts) * their_text.numpy()).sum(axis=1).min() >= 0.999  # one batch, 3 lengths
    # Its text graph runs a query at the query's length (start, a, red, bicycle, end), not the context's.
    assert encoder.text_engine.cut and encoder.text_engine.tokens(["a red bicycle"])["text"].shape == (1, 5)
    exports = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(exports) == 1 and encoder.spec.folder.path == exports[0]
    assert isinstance(encoder.engine.session.get_inputs()[0].shape[0], str)  # ours batch: a dynamic axis
    written = (exports[0] / "visual" / "model.onnx").stat().st_mtime_ns
    ImageEncoder(settings).load()  # the same weights: the cached export, not another
    assert (exports[0] / "visual" / "model.onnx").stat().st_mtime_ns == written
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == exports


def test_open_clip_on_torch_is_the_librarys_own_model_and_exports_nothing(open_clip_checkpoint, tmp_path):
    """What a GPU runs (``auto`` picks torch there; asked for here on the CPU, in fp32): open_clip's
    encode_image / encode_text and its own tokenizer, with the vectors of the CPU's export."""
    import open_clip
    import torch

    model, checkpoint = open_clip_checkpoint
    settings = ModelSettings(name=f"open-clip:{TINY_ARCH}", weights=str(checkpoint), cache_dir=str(tmp_path),
                             runtime="torch", precision="fp32")
    encoder = ImageEncoder(settings).load()
    assert (encoder.runtime, encoder.device, encoder.precision) == ("torch", "cpu", "fp32")
    assert not any(tmp_path.iterdir())  # nothing exported
    pixels = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), np.uint8)
    x = (pixels / 255 - np.array(open_clip.OPENAI_DATASET_MEAN)) / np.array(open_clip.OPENAI_DATASET_STD)
    texts = ["a red bicycle", "Two dogs, playing!"]
    with torch.no_grad():
        theirs = model.encode_image(torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32), normalize=True)
        their_text = model.encode_text(open_clip.tokenize(texts), normalize=True)
    assert (encoder.encode(pixels) * theirs.numpy()).sum(axis=1).min() >= 0.999
    assert (encoder.encode_text(texts) * their_text.numpy()).sum(axis=1).min() >= 0.999
    exported = ImageEncoder(settings.model_copy(update={"runtime": "auto"})).load()  # the CPU's way: its export
    assert exported.runtime == "onnx"
    assert (exported.encode(pixels) * encoder.encode(pixels)).sum(axis=1).min() >= 0.999


def _text_length(folder: Path):
    import onnx

    graph = onnx.load(str(folder / "textual" / "model.onnx"))
    return graph.graph.input[0].type.tensor_type.shape.dim[1].dim_value or "dynamic", \
        {p.key: p.value for p in graph.metadata_props}


def test_a_text_tower_is_cut_to_its_length_only_where_that_gives_the_same_vectors(open_clip_checkpoint, tmp_path,
                                                                                   monkeypatch, caplog):
    """Causal and pooled at the end token: cut (the export checks it against encode_text). A
    tower without the causal mask (as SigLIP's), or an export that would not match or fails,
    keeps the context's length and says nothing."""
    import open_clip
    import torch

    from lookalike.embedding import clip_export

    model, _ = open_clip_checkpoint
    config = open_clip.get_model_config(TINY_ARCH)
    assert _text_length(clip_export.write_layout(model, config, tmp_path / "causal")) == (
        "dynamic", {"lookalike.text_length": "cut"})
    bidirectional = open_clip.create_model(TINY_ARCH).eval()
    bidirectional.attn_mask = None
    assert not clip_export.cuts_to_length(bidirectional)
    assert _text_length(clip_export.write_layout(bidirectional, config, tmp_path / "bidirectional")) == (77, {})
    export = torch.onnx.export

    def dynamo_fails(*args, dynamo=False, **kwargs):  # as the dynamo exporter does on what it cannot trace
        if dynamo:
            raise RuntimeError("torch.export could not trace the model")
        return export(*args, dynamo=dynamo, **kwargs)

    with monkeypatch.context() as patched:  # an export that fails: the fixed length, not no model
        patched.setattr(torch.onnx, "export", dynamo_fails)
        assert _text_length(clip_export.write_layout(model, config, tmp_path / "failed")) == (77, {})
        assert "cannot be exported at any length" in caplog.text
    monkeypatch.setattr(clip_export, "_gives_encode_text", lambda *args: False)
    assert _text_length(clip_export.write_layout(model, config, tmp_path / "mismatch")) == (77, {})


def test_a_hugging_face_tokenizer_is_exported_and_tokenises_as_open_clip_does(tmp_path):
    """A SigLIP-like model (no causal mask, pooled at the last position, text canonicalised,
    a Hugging Face tokenizer named in its config): the export saves that tokenizer through
    transformers, and the service's vectors for words are open_clip's own (its HFTokenizer)."""
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.tokenizer import HFTokenizer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from lookalike.embedding.clip_export import write_layout

    from .support.clip_export import VISION_CFG, WORDS

    words = {"<pad>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}, "</s>": len(WORDS) + 2}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizers.NFKC(), pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", words["</s>"])])
    hf_dir = tmp_path / "hf-tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>",
                            eos_token="</s>").save_pretrained(hf_dir)
    text_cfg = {"context_length": 16, "vocab_size": len(words), "width": 32, "heads": 2, "layers": 2,
                "hf_tokenizer_name": str(hf_dir), "tokenizer_kwargs": {"clean": "canonicalize"},
                "no_causal_mask": True, "pool_type": "last"}
    torch.manual_seed(3)
    model = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(**VISION_CFG), text_cfg=CLIPTextCfg(**text_cfg)).eval()
    folder = write_layout(model, {"embed_dim": 32, "vision_cfg": VISION_CFG, "text_cfg": text_cfg}, tmp_path / "siglip")
    assert _text_length(folder)[0] == 16  # every position counts: never cut
    encoder = ImageEncoder(_settings(folder)).load()
    texts = ["A photo of a RED bicycle!", "two  cats,on_the  house", "dog"]
    theirs = HFTokenizer(str(hf_dir), context_length=16, clean="canonicalize")(texts)
    assert encoder.text_engine.tokens(texts)["text"].tolist() == theirs.tolist()
    with torch.no_grad():
        their_vectors = model.encode_text(theirs, normalize=True).numpy()
    assert (encoder.encode_text(texts) * their_vectors).sum(axis=1).min() >= 0.999


def test_models_export_then_check_from_the_command_line(open_clip_checkpoint, tmp_path, monkeypatch, capsys):
    from lookalike.cli import main

    _, checkpoint = open_clip_checkpoint
    out = tmp_path / "Tiny-CLIP__mine"
    assert main(["models", "export", TINY_ARCH, "--pretrained", str(checkpoint), "--out", str(out)]) == 0
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == {
        "config.json", "visual/model.onnx", "visual/preprocess_cfg.json", "textual/model.onnx",
        "textual/tokenizer.json", "textual/tokenizer_config.json"}
    assert main(["models", "export", TINY_ARCH, "--pretrained", str(checkpoint), "--out", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err
    monkeypatch.setenv("LOOKALIKE_MODEL__NAME", "immich-clip")
    monkeypatch.setenv("LOOKALIKE_MODEL__WEIGHTS", str(out))
    assert main(["models", "check"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["towers"] == ["image", "text"] and report["dim"] == 32 and report["runtime"] == "onnx"
    assert report["image_batch"]["ms"] > 0 and report["text_batch"]["ms"] > 0


# -- image-only sources: timm by name, any ONNX file --------------------------------------------
TIMM_ARCH = "mobilenetv3_small_050"  # small and quick; DINOv2 / ConvNeXt load the same way


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory):
    """A checkpoint as users have them: the whole classifier (head included), random weights."""
    import timm
    import torch

    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("timm") / "mnv3.pth"
    torch.save(timm.create_model(TIMM_ARCH, pretrained=False).state_dict(), path)
    return path


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_a_timm_model_by_name_gives_timms_own_vectors(timm_checkpoint, tmp_path, runtime):
    import timm
    import torch

    settings = ModelSettings(name=f"timm:{TIMM_ARCH}", weights=str(timm_checkpoint), runtime=runtime,
                             precision="fp32", cache_dir=str(tmp_path))
    spec = get_model(settings)
    assert (spec.dim, spec.input_size, spec.has_text) == (1024, 224, False)
    assert descriptor_name(settings, ImageLimits()) == f"timm:{TIMM_ARCH}:mnv3.pth/embedding/pad"
    theirs = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=0).eval()
    theirs.load_state_dict(torch.load(timm_checkpoint), strict=False)  # its head left out, as ours
    pixels = np.random.default_rng(1).integers(0, 256, (3, 224, 224, 3), np.uint8)
    x = (pixels / 255 - np.array(spec.mean)) / np.array(spec.std)
    with torch.no_grad():
        want = torch.nn.functional.normalize(theirs(torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32)))
    encoder = ImageEncoder(settings).load()
    assert encoder.runtime == runtime
    assert (encoder.encode(pixels) * want.numpy()).sum(axis=1).min() >= 0.999


def test_a_timm_checkpoint_of_another_model_is_refused(tmp_path):
    import torch

    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ConfigurationError, match="other.pth lacks .* a checkpoint of another model"):
        ImageEncoder(ModelSettings(name=f"timm:{TIMM_ARCH}", weights=str(other), cache_dir=str(tmp_path))).load()
    with pytest.raises(ConfigurationError, match="timm has no model 'no_such_net'"):
        get_model(ModelSettings(name="timm:no_such_net", weights=str(other)))


def test_any_onnx_image_encoder_file_with_its_json(clip, tmp_path):
    from .support.clip_export import OPENAI_MEAN, OPENAI_STD

    file = tmp_path / "encoder.onnx"
    shutil.copy(clip.folder / "visual" / "model.onnx", file)
    settings = ModelSettings(name="onnx-file", weights=str(file))
    with pytest.raises(ConfigurationError, match=r"lacks .*encoder\.json"):
        get_model(settings)
    (tmp_path / "encoder.json").write_text(json.dumps({"embed_dim": 32, "size": SIZE, "mean": OPENAI_MEAN,
                                                      "std": OPENAI_STD}))
    encoder = ImageEncoder(settings).load()
    assert (encoder.dim, encoder.has_text, encoder.spec.name) == (32, False, "onnx-file:encoder.onnx")
    assert descriptor_name(settings, ImageLimits()) == "onnx-file:encoder.onnx/embedding/pad"
    pixels = np.random.default_rng(2).integers(0, 256, (2, SIZE, SIZE, 3), np.uint8)
    assert (encoder.encode(pixels) * clip.reference_image(pixels)).sum(axis=1).min() >= 0.999


# -- words on the bundled model ------------------------------------------------------------------
def test_words_name_imagenet_classes_and_their_kinds():
    from lookalike.embedding.class_words import classes_for

    assert classes_for("a photo of birds") == ("bird", classes_for("bird")[1]) and len(classes_for("bird")[1]) == 59
    assert classes_for("musical instruments")[0] == "musical instrument"  # the longest phrase it knows
    assert classes_for("a red sports car")[0] == "sports car"  # a word it does not know (red) left out
    assert classes_for("cats and dogs")[0] == "cat, dog"
    assert set(classes_for("cats and dogs")[1]) == set(classes_for("cat")[1]) | set(classes_for("dog")[1])
    assert classes_for("strawberries")[0] == "strawberry" and classes_for("buses")[0] == "bus"
    with pytest.raises(InvalidParameter, match="knows no class named by 'stars and flags'.*near it: .*starfish"):
        classes_for("stars and flags")
    with pytest.raises(InvalidParameter, match="knows no class"):
        classes_for("the")


def test_class_words_search_along_the_centred_class_rows():
    from lookalike.embedding.class_words import ClassWords

    rows = np.eye(4, dtype=np.float32) * 2 + 1  # each row shares (1, 1, 1, 1); the shared part is taken out
    words = ClassWords(rows)
    d = words.direction([0, 1])
    assert np.isclose(np.linalg.norm(d), 1) and d[0] == d[1] > 0 > d[2] == d[3]


def test_the_bundled_model_takes_words_unless_turned_off():
    assert get_model(ModelSettings()).has_text and not get_model(ModelSettings(class_words=False)).has_text
    assert not get_model(ModelSettings(name="resnet50")).has_text
    encoder = ImageEncoder(ModelSettings())
    encoder.check_text("a clock")
    with pytest.raises(InvalidParameter, match="near it"):
        encoder.check_text("stars")
    vectors = encoder.encode_text(["a clock", "birds"])
    assert vectors.shape == (2, 1280) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_serve_refuses_a_broken_model_folder_before_starting_anything(clip, tmp_path, monkeypatch, capsys):
    from lookalike.cli import main

    folder = _copy(clip, tmp_path)
    (folder / "visual" / "preprocess_cfg.json").unlink()
    monkeypatch.setenv("LOOKALIKE_MODEL__NAME", "immich-clip")
    monkeypatch.setenv("LOOKALIKE_MODEL__WEIGHTS", str(folder))
    assert main(["serve"]) == 2
    assert f"lacks {folder / 'visual' / 'preprocess_cfg.json'}" in capsys.readouterr().err
