"""Options every learner shares (PocketFlow's AbstractLearner flags plus PyTorch needs)."""
from __future__ import annotations

from dataclasses import dataclass

from deployment.formats import EXPORT_CHOICES
from utils.config import check, option


@dataclass
class LearnerConfig:
    learner: str = option("full-prec", "learner name (see README for the list)")
    exec_mode: str = option("train", "train: train/compress; eval: evaluate a saved model",
                            choices=["train", "eval"])
    device: str = option("auto", "auto picks CUDA when available", choices=["auto", "cpu", "cuda"])
    seed: int = option(0, "random seed (weights, data order, augmentation)")
    resume: bool = option(False, "continue an interrupted run from the checkpoint at save_path")
    save_path: str = option("./models/model.ckpt", "training checkpoint (resumable state)")
    save_path_eval: str = option("./models_eval/model.ckpt",
                                 "final model artifact (architecture + weights); report.json beside it")
    log_dir: str = option("./logs", "TensorBoard log directory ('' disables TensorBoard)")
    summ_step: int = option(100, "log lr, loss, accuracy and images/s every this many steps")
    save_step: int = option(1000, "save a checkpoint and evaluate every this many steps")
    momentum: float = option(0.9, "momentum of the SGD optimizer")
    enbl_dst: bool = option(False, "add a knowledge-distillation loss from a teacher model")
    loss_w_dst: float = option(4.0, "weight of the distillation loss")
    tempr_dst: float = option(4.0, "distillation temperature")
    dst_model_path: str = option("", "teacher model artifact for distillation (any architecture); "
                                     "default: the pre-trained model of this helper")
    enbl_warm_start: bool = option(False, "initialise from a saved model artifact")
    warm_start_path: str = option("", "model artifact to warm-start from "
                                      "(default: the helper's pre-trained model, save_path_eval)")
    enbl_multi_gpu: bool = option(False, "train with several processes (set by run_local.sh -n=N)")
    mgw_backend: str = option("auto", "multi-process backend", choices=["auto", "horovod", "torch"])
    mgw_timeout_s: float = option(1800.0, "torch.distributed: seconds a collective may wait (other "
                                          "ranks wait while rank 0 searches or selects)")
    export_format: str = option("auto", "deployment files of the result, each checked in its "
                                        "runtime: pte (ExecuTorch/XNNPACK), onnx (onnxruntime), "
                                        "both, none; auto: onnx when installed",
                                choices=list(EXPORT_CHOICES))
    deploy_eval_batches: int = option(0, "eval-set batches the deployment files are checked on "
                                         "(0: the whole eval set)")
    report_latency: bool = option(True, "measure CPU latency of the models in the report")

    def __post_init__(self) -> None:
        check(self.summ_step > 0, "summ_step", f"must be positive, got {self.summ_step}")
        check(self.save_step > 0, "save_step", f"must be positive, got {self.save_step}")
        check(self.tempr_dst > 0, "tempr_dst", f"must be positive, got {self.tempr_dst}")
        check(self.mgw_timeout_s > 0, "mgw_timeout_s", f"must be positive, got {self.mgw_timeout_s}")
        check(self.deploy_eval_batches >= 0, "deploy_eval_batches", "must be >= 0")
        check(0.0 <= self.momentum < 1.0, "momentum", f"must be in [0, 1), got {self.momentum}")
