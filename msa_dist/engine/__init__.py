"""The training loop, checkpoints, metrics and the backends (single / ddp / deepspeed)."""
