"""mmseg's SwinTransformer backbone (UPerNet Swin): tasks/families/mm_swin.py."""
from mmseg.models.backbones.swin import SwinBlock, SwinTransformer, WindowMSA
from mmseg.models.utils.embed import PatchMerging

from tasks.families.mm_swin import register_swin

register_swin("mmseg", WindowMSA, SwinBlock, PatchMerging, SwinTransformer)
