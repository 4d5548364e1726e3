# Cascade Mask R-CNN with a Swin-T backbone, the paper's COCO detector: the architecture of the
# published Swin detection weights (SwinTransformer/Swin-Transformer-Object-Detection,
# configs/swin/cascade_mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_3x_coco.py):
# three 4conv1f bbox heads (4 shared convs with BN, 1 fc, class-specific GIoU-trained decoded
# regression), one FCN mask head per stage. mmdet 3.3 ships no such config, so it is composed from
# mmdet's Cascade Mask R-CNN 3x recipe. The published file has mmdet 2.x / Swin-repository keys:
# tasks/swin_keys.py converts them when it is loaded. SyncBN of the training recipe is BN here
# (the same maths at test time, and no process group needed).
_base_ = 'mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_ms-3x_coco.py'
published_weights = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.2/cascade_mask_rcnn_swin_tiny_patch4_window7.pth'


def _bbox_head(stds):
    return dict(
        type='ConvFCBBoxHead', num_shared_convs=4, num_shared_fcs=1, in_channels=256, conv_out_channels=256,
        fc_out_channels=1024, roi_feat_size=7, num_classes=80,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
        reg_class_agnostic=False, reg_decoded_bbox=True, norm_cfg=dict(type='BN', requires_grad=True),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0))


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
    neck=dict(in_channels=[96, 192, 384, 768]),
    roi_head=dict(bbox_head=[_bbox_head([0.1, 0.1, 0.2, 0.2]), _bbox_head([0.05, 0.05, 0.1, 0.1]),
                             _bbox_head([0.033, 0.033, 0.067, 0.067])]))
# The Swin detection repository scores box and mask AP (its configs/_base_/datasets/coco_instance.py,
# mmdet 2.x: evaluation = dict(metric=['bbox', 'segm'])); mmdet 3.3's common/ms_3x_coco-instance.py,
# the base here, scores boxes only.
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = dict(metric=['bbox', 'segm'])
