# The micro segmentor: mmseg's own UperNet with its own VisionTransformer backbone, as in
# mmseg::vit/vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py but small (4 blocks of width 96,
# patches of 8) for 128x128 canvases of Fashion-MNIST items. The task adapter fills in data_root.
_base_ = [
    'mmseg::_base_/models/upernet_vit-b16_ln_mln.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
]
classes = ('background', 't-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag',
           'boot')
image_size = 128
embed_dims = 96
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(mean=[72.93] * 3, std=[90.0] * 3, size=(image_size, image_size)),
    pretrained=None,
    backbone=dict(img_size=(image_size, image_size), patch_size=8, embed_dims=embed_dims, num_layers=4,
                  num_heads=3, out_indices=(0, 1, 2, 3), drop_path_rate=0.1),
    neck=dict(in_channels=[embed_dims] * 4, out_channels=embed_dims, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[embed_dims] * 4, channels=64, num_classes=len(classes), norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=embed_dims, channels=32, num_classes=len(classes), norm_cfg=norm_cfg))

dataset = dict(type='BaseSegDataset', metainfo=dict(classes=classes), img_suffix='.png', seg_map_suffix='.png',
               reduce_zero_label=False, data_root=None)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, **dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
val_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, **dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation')))
test_dataloader = val_dataloader

max_iters = 1500
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters + 1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters, eta_min=1e-5),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'pos_embed': dict(decay_mult=0.), 'cls_token': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
