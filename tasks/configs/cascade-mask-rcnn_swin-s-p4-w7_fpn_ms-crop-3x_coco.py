# Cascade Mask R-CNN with a Swin-S backbone: the Swin-T config with Swin-S depths, matching the
# published weights of configs/swin/cascade_mask_rcnn_swin_small_patch4_window7_mstrain_480-800_
# giou_4conv1f_adamw_3x_coco.py (SwinTransformer/Swin-Transformer-Object-Detection).
_base_ = './cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
published_weights = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.2/cascade_mask_rcnn_swin_small_patch4_window7.pth'
model = dict(backbone=dict(depths=[2, 2, 18, 2], drop_path_rate=0.3))
