"""Options every learner shares (PocketFlow's AbstractLearner flags plus PyTorch needs)."""
from __future__ import annotations

from dataclasses import dataclass

from deployment.formats import export_choices
from training.trainer import AMP_DTYPES
from utils.config import check, option


@dataclass
class LearnerConfig:
    learner: str = option("full-prec", "learner name (see README for the list)", run_only=True)
    exec_mode: str = option("train", "train: train/compress; eval: evaluate a saved model",
                            choices=["train", "eval"], run_only=True)
    device: str = option("auto", "auto picks CUDA when available", choices=["auto", "cpu", "cuda"],
                         run_only=True)
    seed: int = option(0, "random seed (weights, data order, augmentation)")
    resume: bool = option(False, "continue an interrupted run from the checkpoint at save_path "
                                 "(refused when it belongs to another learner or other settings; "
                                 "run without --resume to start over)", run_only=True)
    save_path: str = option("./models/model.ckpt", "training checkpoint (resumable state)",
                            run_only=True)
    save_path_eval: str = option("./models_eval/model.ckpt",
                                 "final model artifact (architecture + weights); report.json beside it",
                                 run_only=True)
    log_dir: str = option("./logs", "TensorBoard log directory ('' disables TensorBoard)",
                          run_only=True)
    debug: bool = option(False, "log at DEBUG level (PocketFlow's debugging information)",
                         run_only=True)
    summ_step: int = option(100, "log lr, loss, accuracy and images/s every this many steps",
                            run_only=True)
    save_step: int = option(1000, "save a checkpoint and evaluate every this many steps "
                                  "(a checkpoint is written only when its evaluation is finite)",
                            run_only=True)
    nan_check_step: int = option(0, "check the training loss for NaN/inf every this many steps "
                                    "and stop at the first non-finite one (0: every summ_step)",
                                 run_only=True)
    # how the training step runs, not what it trains (like --device): a run may be resumed
    # with other values; bit-identical resume needs the same ones (docs/speed.md)
    channels_last: bool = option(False, "train with the model and each batch in the "
                                        "channels_last (NHWC) memory format; the saved model is "
                                        "unchanged; not with Horovod on several processes "
                                        "(docs/speed.md)", run_only=True)
    amp_dtype: str = option("none", "autocast the training forward to this dtype (CPU or CUDA "
                                    "bfloat16); the loss, backward, optimizer step and evaluation "
                                    "stay float32. float16 is not offered: it would need a "
                                    "gradient scaler (docs/speed.md)",
                            choices=list(AMP_DTYPES), run_only=True)
    compile: bool = option(False, "torch.compile the training forward (the first step compiles; "
                                  "state_dict keys unchanged; if compilation fails, one warning "
                                  "and training goes on in eager mode) (docs/speed.md)",
                           run_only=True)
    momentum: float = option(0.9, "momentum of the SGD optimizer")
    enbl_dst: bool = option(False, "add a knowledge-distillation loss from a teacher model")
    loss_w_dst: float = option(4.0, "weight of the distillation loss")
    tempr_dst: float = option(4.0, "distillation temperature")
    dst_model_path: str = option("", "teacher model artifact for distillation (any architecture); "
                                     "default: the pre-trained model of this helper", run_only=True)
    enbl_warm_start: bool = option(False, "initialise from a saved model artifact")
    warm_start_path: str = option("", "model artifact to warm-start from "
                                      "(default: the helper's pre-trained model, save_path_eval)",
                                  run_only=True)
    enbl_multi_gpu: bool = option(False, "train with several processes (set by run_local.sh -n=N)",
                                  run_only=True)
    mgw_backend: str = option("auto", "multi-process backend", choices=["auto", "horovod", "torch"],
                              run_only=True)
    mgw_timeout_s: float = option(1800.0, "torch.distributed: seconds a collective may wait (other "
                                          "ranks wait while rank 0 searches or selects)",
                                  run_only=True)
    export_format: str = option("auto", "deployment files of the result, each checked in its "
                                        "runtime: pte (ExecuTorch/XNNPACK), onnx (onnxruntime), "
                                        "both, none, or a format added with deployment.formats."
                                        "register_format; auto: onnx when installed",
                                run_only=True)
    deploy_eval_batches: int = option(0, "eval-set batches the deployment files are checked on "
                                         "(0: the whole eval set)", run_only=True)
    allow_parity_failure: bool = option(False, "finish with exit status 0 when a deployment "
                                               "file does not reproduce the model (report."
                                               "json's parity section says which); by default "
                                               "the run writes every output, then fails with "
                                               "exit status 3", run_only=True)
    report_latency: bool = option(True, "measure CPU latency of the models in the report",
                                  run_only=True)
    cpu_threads: int = option(0, "intra-op CPU threads: 0 follows the cores other processes "
                                 "leave free, re-read every few seconds (at most "
                                 "OMP_NUM_THREADS when set); N > 0 fixes N (runs repeat bit for "
                                 "bit whatever else the machine does)", run_only=True)

    def __post_init__(self) -> None:
        check(self.summ_step > 0, "summ_step", f"must be positive, got {self.summ_step}")
        check(self.cpu_threads >= 0, "cpu_threads", f"must be >= 0, got {self.cpu_threads}")
        check(self.save_step > 0, "save_step", f"must be positive, got {self.save_step}")
        check(self.nan_check_step >= 0, "nan_check_step", f"must be >= 0, got {self.nan_check_step}")
        check(self.amp_dtype in AMP_DTYPES, "amp_dtype",
              f"must be one of {', '.join(AMP_DTYPES)}, got {self.amp_dtype!r}")
        check(self.loss_w_dst >= 0, "loss_w_dst", f"must be >= 0, got {self.loss_w_dst}")
        check(self.tempr_dst > 0, "tempr_dst", f"must be positive, got {self.tempr_dst}")
        check(self.mgw_timeout_s > 0, "mgw_timeout_s", f"must be positive, got {self.mgw_timeout_s}")
        check(self.deploy_eval_batches >= 0, "deploy_eval_batches", "must be >= 0")
        check(self.export_format in export_choices(), "export_format",
              f"unknown export format {self.export_format!r}; valid: {', '.join(export_choices())}")
        check(0.0 <= self.momentum < 1.0, "momentum", f"must be in [0, 1), got {self.momentum}")


@dataclass
class OutputOptions:
    save_path: str = option("./models_{prefix}/model.ckpt", "training checkpoint (resumable state)")
    save_path_eval: str = option("./models_{prefix}_eval/model.ckpt",
                                 "final model (report.json and the files derived from it beside "
                                 "it)")
