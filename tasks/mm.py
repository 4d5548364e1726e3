"""What the mmdet and mmseg adapters share: an mm config plus a checkpoint -> a model, its
transformer backbone for the methods, and evaluation through mmengine's own Runner test loop
with the framework's own evaluator (nothing of either is re-implemented here).
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
from functools import cached_property
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from clamp.generate.contrastive import feature_contrastive_loss
from clamp.io import file_sha256
from clamp.task import RANDOM_WEIGHTS, InputSpec, fixed_init
from tasks.mm_cuda import route_nms_to_torchvision, use_torchvision_roi_align
from tasks.weights import WeightFile, url_file

MICRO_CONFIGS = Path(__file__).parent / "micro" / "configs"
CHECKPOINTS = Path(__file__).parent / "micro" / "checkpoints"


def _quiet_mmengine() -> None:
    logging.getLogger("mmengine").setLevel(logging.WARNING)


def published_weights(metafile: Path, config_name: str) -> str | None:
    """The URL of the published weights of ``config_name`` in an OpenMMLab metafile."""
    from mmengine.fileio import load

    if not metafile.is_file():
        return None
    for model in load(str(metafile)).get("Models", []):
        if Path(model.get("Config", "")).stem == config_name:
            return model.get("Weights")
    return None


class MMTask:
    """Base of the detection and segmentation adapters; subclasses set the class attributes and
    ``_set_data`` (where the config's dataloaders and evaluator find the data)."""

    name: str
    metric: str
    scope: str  # the mm registry scope: mmdet or mmseg
    package: str  # the package whose .mim/configs hold the paper-scale configs
    data_env: str
    data_what: str  # how the dataset folder must look, for the error message
    micro_models: tuple[str, ...]
    paper_models: tuple[str, ...]
    paper_input: int = 512  # side of the synthetic images at paper scale
    num_classes = None  # label-free: no generation prior
    quant_exclude: tuple[str, ...] = ()

    def __init__(self, model_id: str, *, checkpoint: str | None = None,
                 data_root: str | None = None, device: str | torch.device = "cpu", n_eval: int | None = None,
                 quant_neck: bool = False, batch_size: int = 8, workers: int = 4,
                 cfg_options: dict | None = None) -> None:
        _quiet_mmengine()
        self.model_id, self.device, self.n_eval = model_id, torch.device(device), n_eval
        # evaluation: batch_size applies to the micro models (same-size canvases); the paper models
        # are evaluated one image at a time as published (batching pads images: other numbers)
        self.quant_neck, self.batch_size, self.workers = quant_neck, batch_size, workers
        self.cfg_options = cfg_options or {}  # mmengine --cfg-options: dotted keys merged into the config
        self.micro = model_id in self.micro_models
        self.config_path = self._config_path(model_id)
        self._checkpoint_arg = checkpoint
        self.data_root = self._micro_data() if self.micro else self._data_root(data_root)
        self._model: nn.Module | None = None

    # ---- configuration ---------------------------------------------------------------------
    @classmethod
    def _package_configs(cls) -> Path:
        import importlib

        return Path(importlib.import_module(cls.package).__file__).parent / ".mim" / "configs"

    @classmethod
    def _config_path(cls, model_id: str) -> Path:
        """A model id is a config: a micro model, a config name of the package, or a .py path."""
        if model_id.endswith(".py"):
            if not Path(model_id).is_file():
                raise FileNotFoundError(f"config {model_id} does not exist: pass an existing mm config file")
            return Path(model_id)
        if model_id in cls.micro_models:
            return MICRO_CONFIGS / f"{model_id}.py"
        found = sorted(cls._package_configs().glob(f"*/{model_id}.py"))
        if not found:
            raise ValueError(f"unknown model {model_id!r}: use a {cls.package} config name such as "
                             f"{cls.paper_models[0]}, a micro model ({', '.join(cls.micro_models)}), "
                             "or the path of a config file")
        return found[0]

    @cached_property
    def checkpoint(self) -> Path:
        """--checkpoint, the committed micro checkpoint, or the published weights in torch hub's
        cache (downloaded first when online)."""
        if self._checkpoint_arg is not None:
            path = Path(self._checkpoint_arg)
        elif self.micro:
            path = CHECKPOINTS / f"{self.model_id}.pth"
        else:
            path = self.weight_file(self.model_id).fetch()
        if not path.is_file():
            hint = ("pass an existing file" if self._checkpoint_arg
                    else f"train it with `python -m tasks.micro.train_mm {self.model_id}`")
            raise FileNotFoundError(f"checkpoint {path} does not exist: {hint}")
        return path

    @classmethod
    def eval_size(cls, model_id: str) -> int | None:
        """Images in the whole evaluation split where the repo fixes it (the generated micro val
        split), else None (a user's COCO or ADE20K)."""
        from tasks.micro.canvas import CanvasSpec

        return CanvasSpec().n_val if model_id in cls.micro_models else None

    @classmethod
    def weight_file(cls, model_id: str) -> WeightFile | None:
        """The published weights of a config (its metafile's URL, or the config's own
        ``published_weights`` key); None for a micro model, whose checkpoint is committed."""
        from mmengine.config import Config

        if model_id in cls.micro_models:
            return None
        config = cls._config_path(model_id)
        url = (published_weights(config.parent / "metafile.yaml", config.stem)
               or published_weights(config.parent / "metafile.yml", config.stem)
               or Config.fromfile(str(config)).get("published_weights"))  # our configs name theirs
        if url is None:
            raise FileNotFoundError(f"no published weights for {config.stem}: pass --checkpoint PATH")
        return url_file(model_id, url)

    def check_data(self) -> None:
        """Nothing more to check: the constructor found the data folder (or built the micro one)."""

    def _micro_data(self) -> Path:
        from tasks.micro.canvas import dataset_root

        return dataset_root(self.name)

    def _data_root(self, data_root: str | None) -> Path:
        root = data_root or os.environ.get(self.data_env)
        if not root or not Path(root).is_dir():
            raise FileNotFoundError(f"{self.data_what.split(':')[0]} not found at {root!r}: pass --data-root or set "
                                    f"{self.data_env} to {self.data_what.split(': ', 1)[1]}")
        return Path(root)

    def _set_data(self, cfg, root: Path) -> None:
        raise NotImplementedError

    @cached_property
    def cfg(self):
        """The model's own config, pointed at the data, with nothing to download at build time."""
        from mmengine.config import Config

        cfg = Config.fromfile(str(self.config_path))
        cfg.merge_from_dict(self.cfg_options)
        cfg.model.pop("pretrained", None)
        cfg.model.backbone.pop("init_cfg", None)
        cfg.model.backbone.pop("pretrained", None)
        self._set_data(cfg, self.data_root)
        cfg.test_dataloader.update(num_workers=0 if self.micro else self.workers, persistent_workers=False,
                                   batch_size=self.batch_size if self.micro else 1)
        if self.device.type == "cuda":  # mmcv's ops are built for CPU only: tasks/mm_cuda.py
            use_torchvision_roi_align(cfg.model)
            route_nms_to_torchvision()
        return cfg

    # ---- the model -------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The FP model from its config and checkpoint (a plain state dict or an mm checkpoint), or
        at its random init (``random``)."""
        if self._model is None:
            from mmengine.registry import MODELS, init_default_scope
            from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model

            init_default_scope(self.scope)
            with fixed_init():
                model = MODELS.build(copy.deepcopy(self.cfg.model))
                if self._checkpoint_arg == RANDOM_WEIGHTS:
                    model.init_weights()
            if self._checkpoint_arg != RANDOM_WEIGHTS:
                try:
                    ckpt = _load_checkpoint(str(self.checkpoint), map_location="cpu")
                    state = self.convert_checkpoint(ckpt.get("state_dict", ckpt))
                    _load_checkpoint_to_model(model, state, strict=True, logger=logging.getLogger("mmengine"))
                except Exception as err:  # corrupt file, or weights of another model
                    raise RuntimeError(f"cannot load {self.checkpoint} into {self.model_id} "
                                       f"({str(err).splitlines()[0][:200]}): pass a matching --checkpoint") from err
            model = self.prepare(model)
            model.eval()  # mm modules override train() and may return None: not chained
            self._model = model.requires_grad_(False).to(self.device)
        return self._model

    def convert_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A hook for subclasses: published weights in another layout -> this config's keys."""
        return state

    def prepare(self, model: nn.Module) -> nn.Module:
        """A hook for subclasses: make the built model's attention quantizable (same maths)."""
        return model

    @cached_property
    def weights_id(self) -> str:
        if self._checkpoint_arg == RANDOM_WEIGHTS:
            return RANDOM_WEIGHTS
        return file_sha256(self.checkpoint)[:16]

    @property
    def input_spec(self) -> InputSpec:
        """Synthetic images: square, RGB, normalised as the model's data preprocessor does."""
        pre = self.cfg.model.data_preprocessor
        side = self.cfg.get("image_size", self.paper_input) if self.micro else self.paper_input
        return InputSpec((3, side, side), tuple(m / 255 for m in pre.mean), tuple(s / 255 for s in pre.std))

    def backbone(self, model: nn.Module) -> nn.Module:
        """What the methods generate from and quantize: the backbone, with the neck if asked."""
        return nn.Sequential(model.backbone, model.neck) if self.quant_neck else model.backbone

    def replace_backbone(self, model: nn.Module, net: nn.Module) -> nn.Module:
        """A copy of ``model`` running ``net``; its heads are copies, the FP model is untouched."""
        if self.quant_neck:
            memo = {id(model.backbone): net[0], id(model.neck): net[1]}
        else:
            memo = {id(model.backbone): net}
        return copy.deepcopy(model, memo)

    def output_loss(self, fp_out: tuple[torch.Tensor, ...], q_out: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Label-free L_O: the patch-level contrastive loss on every output feature map."""
        return feature_contrastive_loss(fp_out, q_out)

    # ---- data --------------------------------------------------------------------------------
    def train_images(self) -> Path:
        raise NotImplementedError

    def real_images(self, n: int, seed: int) -> torch.Tensor:
        """``n`` random training images as the model's test pipeline and data preprocessor see
        them (resized with their aspect kept, normalised), zero-padded (the mean colour, as the
        preprocessor pads) to one size."""
        from mmengine.dataset import Compose
        from mmengine.registry import init_default_scope

        files = sorted(p for p in self.train_images().iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if len(files) < n:
            raise FileNotFoundError(f"{self.train_images()} holds {len(files)} images, fewer than {n}")
        pick = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        init_default_scope(self.scope)
        pipeline = Compose([t for t in self.cfg.test_dataloader.dataset.pipeline if "Annotations" not in t["type"]])
        preprocessor = self.build_model().data_preprocessor
        images = []
        for i in pick.tolist():
            packed = pipeline(dict(img_path=str(files[i]), img_id=i, seg_fields=[], reduce_zero_label=False))
            batch = preprocessor({"inputs": [packed["inputs"]], "data_samples": [packed["data_samples"]]}, False)
            images.append(batch["inputs"][0])
        height, width = (max(x.shape[d] for x in images) for d in (1, 2))
        return torch.stack([F.pad(x, (0, width - x.shape[2], 0, height - x.shape[1])) for x in images]).to(self.device)

    # ---- evaluation --------------------------------------------------------------------------
    def test_config(self):
        """The config's test dataloader and evaluator, restricted to ``n_eval`` images."""
        return self.cfg.test_dataloader, self.cfg.test_evaluator

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The config's test loop through mmengine's Runner and the framework's evaluator. Under
        torch.distributed (torchrun) the Runner shards the images and gathers the metric."""
        from mmengine.runner import Runner

        dataloader, evaluator = self.test_config()
        launcher = "pytorch" if dist.is_initialized() else "none"
        # the Runner moves the model to mmengine's default device (runner.py, wrap_model:
        # model.to(get_device()), i.e. cuda:0 on any GPU machine); the requested device holds instead
        pin = mock.patch("mmengine.runner.runner.get_device", lambda: str(self.device))
        with tempfile.TemporaryDirectory(prefix="clamp-mm-") as work_dir, pin:
            runner = Runner(model=model, work_dir=work_dir, test_dataloader=copy.deepcopy(dataloader),
                            test_cfg=dict(type="TestLoop"), test_evaluator=copy.deepcopy(evaluator),
                            default_scope=self.scope, launcher=launcher, log_level="WARNING",
                            default_hooks=dict(logger=dict(type="LoggerHook", interval=50)),
                            env_cfg=dict(dist_cfg=dict(backend="nccl" if torch.cuda.is_available() else "gloo")),
                            visualizer=dict(type="Visualizer", vis_backends=[]),
                            # DDP refuses a model without trainable parameters; this wrapper skips them
                            cfg=dict(model_wrapper_cfg=dict(type="MMSeparateDistributedDataParallel",
                                                            broadcast_buffers=False)))
            metrics = runner.test()
            # the Runner's logger stays mmengine's current one: detach its file in the deleted work dir
            for handler in [h for h in runner.logger.handlers if isinstance(h, logging.FileHandler)]:
                runner.logger.removeHandler(handler)
                handler.close()
        return self.convert(metrics)

    def convert(self, metrics: dict) -> dict[str, float]:
        raise NotImplementedError
