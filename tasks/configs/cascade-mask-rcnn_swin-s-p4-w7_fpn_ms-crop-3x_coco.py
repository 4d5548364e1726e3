# Cascade Mask R-CNN with a Swin-S backbone: the Swin-T config with Swin-S depths.
# No published mmdet weights: pass --checkpoint.
_base_ = './cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
model = dict(backbone=dict(depths=[2, 2, 18, 2], drop_path_rate=0.3))
