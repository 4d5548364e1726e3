"""mmdet's SwinTransformer backbone (Cascade Mask R-CNN Swin): tasks/families/mm_swin.py."""
from mmdet.models.backbones.swin import SwinBlock, SwinTransformer, WindowMSA
from mmdet.models.layers import PatchMerging

from tasks.families.mm_swin import register_swin

register_swin("mmdet", WindowMSA, SwinBlock, PatchMerging, SwinTransformer)
