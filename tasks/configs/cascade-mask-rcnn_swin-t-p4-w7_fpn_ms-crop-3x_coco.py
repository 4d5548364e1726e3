# Cascade Mask R-CNN with a Swin-T backbone (the paper's COCO detector). mmdet 3.3 ships no such
# config, so it is composed from mmdet's own: its Cascade Mask R-CNN 3x recipe with the backbone
# of mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py. No published mmdet weights:
# pass --checkpoint (an mmdet 3.x state dict of this architecture).
_base_ = 'mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_ms-3x_coco.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=True),
    neck=dict(in_channels=[96, 192, 384, 768]))
