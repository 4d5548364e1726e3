"""The ``reference`` layout: activation quantizers where the published ViT PTQ tables put them.

PSAQ-ViT's quantized models (zkkli/PSAQ-ViT ``models/vit_quant.py``, ``models/swin_quant.py``,
``models/layers_quant.py``; CLAMP-ViT's FQ-ViT-derived models are the same in substance) quantize
layer OUTPUTS with per-tensor asymmetric min-max ``QuantAct`` modules and keep softmax,
LayerNorm and GELU in FP. Per model: the input image, the patch embedding output (before and
after its norm, when it has one), the class token concatenated to it, the position embedding,
their sum; per block: norm1, qkv, the scaled scores q·kᵀ, attn·v, proj, the first residual sum,
norm2, GELU, fc2, the second residual sum; Swin adds the relative-position-bias table, the
biased scores and the patch-merging norm and reduction; at the end the final norm (Swin), the
pooled features that feed the head, and the logits.

Sites are attached without copying models: a quantizer becomes a child of the module whose
output (or input) it quantizes, applied by a forward hook; residual sums, which no module
outputs, need the block's forward, so a block's class is swapped for a subclass that adds
them. Each model family registers its sites from its own module (tasks/families/), with the
helpers below; a model or block without an adapter fails with one line instead of running
partly in FP.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from clamp.quant.attention import QuantAttentionBase
from clamp.quant.quantizer import Quantizer

LAYERNORM_INPUTS = ("pos_sum", "res1", "res2")  # the sites whose values feed a LayerNorm: the residual stream
MakeQuantizer = Callable[[str], Quantizer]  # site name -> activation quantizer of that name
Sites = Callable[[nn.Module, str, MakeQuantizer], None]  # (module, its name, make) -> attach
MODEL_SITES: dict[type[nn.Module], Sites] = {}
BLOCK_SITES: dict[type[nn.Module], Sites] = {}


def register_model_sites(fp_type: type[nn.Module]) -> Callable[[Sites], Sites]:
    """Decorator: ``fn(model, name, make)`` attaches the model-level sites of ``fp_type``."""
    def wrap(fn: Sites) -> Sites:
        MODEL_SITES[fp_type] = fn
        return fn
    return wrap


def register_block_sites(fp_type: type[nn.Module]) -> Callable[[Sites], Sites]:
    """Decorator: ``fn(block, name, make)`` attaches the sites of one block of ``fp_type``."""
    def wrap(fn: Sites) -> Sites:
        BLOCK_SITES[fp_type] = fn
        return fn
    return wrap


def _quant_output(module: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
    return module.out_quant(out)


def _quant_input(module: nn.Module, args: tuple) -> tuple:
    return (module.in_quant(args[0]), *args[1:])


def quantize_output(module: nn.Module, quantizer: Quantizer) -> None:
    """Quantize ``module``'s output: the quantizer becomes its child ``out_quant``."""
    module.out_quant = quantizer
    module.register_forward_hook(_quant_output)


def quantize_input(module: nn.Module, quantizer: Quantizer) -> None:
    """Quantize ``module``'s first input: the quantizer becomes its child ``in_quant``."""
    module.in_quant = quantizer
    module.register_forward_pre_hook(_quant_input)


def swap_class(module: nn.Module, cls: type[nn.Module], **quantizers: Quantizer) -> None:
    """Turn ``module`` (of a base class of ``cls``) into a ``cls`` in place and add ``quantizers``
    as children: ``cls`` overrides ``forward`` only, so parameters and names stay as they were."""
    module.__class__ = cls
    for name, q in quantizers.items():
        setattr(module, name, q)


def join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def attention_sites(attn: nn.Module, name: str, make: MakeQuantizer, proj_out: bool = True) -> None:
    """qkv output, scaled scores, attn·v (the input of proj: per tensor, the same values as the
    product before its head merge) and proj output (unless the block quantizes the branch after a
    LayerScale instead); Swin also the bias table and biased scores. Records which sites the
    matmuls' operands come from (for their BOPS)."""
    if not isinstance(attn, QuantAttentionBase):
        raise ValueError(f"attention {type(attn).__name__} at {name} has no adapter: the reference layout "
                         "cannot quantize it")
    fp = attn.fp
    attn.matmul_qk.out_quant = make(join(name, "scores"))
    quantize_output(fp.qkv, make(join(name, "qkv.out")))
    # the operands' grids: q, k and v are slices of qkv's quantized output; the softmax is FP
    qkv = join(name, "qkv.out")
    attn.matmul_qk.feeders, attn.matmul_av.feeders = (qkv, qkv), (None, qkv)
    quantize_input(fp.proj, make(join(name, "av")))
    if proj_out:
        quantize_output(fp.proj, make(join(name, "proj.out")))
    if attn.windowed:
        attn.table_quant = make(join(name, "table"))
        attn.bias_quant = make(join(name, "scores_bias"))


def mlp_sites(act: nn.Module, fc2: nn.Module, name: str, make: MakeQuantizer) -> None:
    quantize_output(act, make(join(name, "act.out")))
    quantize_output(fc2, make(join(name, "fc2.out")))


def patch_embed_sites(patch_embed: nn.Module, name: str, make: MakeQuantizer, conv: str = "proj") -> None:
    """The image (input), the projection's output and, when there is one, the norm's output."""
    quantize_input(patch_embed, make(join(name, "input")))
    quantize_output(getattr(patch_embed, conv), make(join(name, conv, "out")))
    norm = getattr(patch_embed, "norm", None)
    if norm is not None and not isinstance(norm, nn.Identity):
        quantize_output(norm, make(join(name, "norm.out")))


def patch_merging_sites(merging: nn.Module, name: str, make: MakeQuantizer) -> None:
    """Swin's patch merging: its norm output (the reduction's input) and the reduction's output."""
    quantize_output(merging.norm, make(join(name, "norm.out")))
    quantize_output(merging.reduction, make(join(name, "reduction.out")))


def prenorm_block_sites(block: nn.Module, name: str, make: MakeQuantizer, ref: type[nn.Module]) -> None:
    """A pre-norm block (``norm1``, ``attn``, ``norm2``, ``mlp``; timm ViT or Swin): norm1, attention,
    norm2, MLP, and both residual sums, which ``ref`` (a subclass of the block's class) adds.

    With LayerScale (DINOv2, CaiT; PSAQ-ViT's models have none) each branch is quantized after its
    scale, where it joins the residual, instead of at proj's and fc2's outputs: the same as folding
    γ into proj and fc2, which per-channel symmetric weight quantization allows exactly."""
    scaled = not isinstance(getattr(block, "ls1", nn.Identity()), nn.Identity)
    quantize_output(block.norm1, make(join(name, "norm1.out")))
    attention_sites(block.attn, join(name, "attn"), make, proj_out=not scaled)
    if scaled:
        quantize_output(block.ls1, make(join(name, "ls1.out")))
    quantize_output(block.norm2, make(join(name, "norm2.out")))
    if scaled:
        quantize_output(block.mlp.act, make(join(name, "mlp.act.out")))
        quantize_output(block.ls2, make(join(name, "ls2.out")))
    else:
        mlp_sites(block.mlp.act, block.mlp.fc2, join(name, "mlp"), make)
    swap_class(block, ref, res1=make(join(name, "res1")), res2=make(join(name, "res2")))
