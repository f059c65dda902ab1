"""cutmix-runner: staged CutMix fine-tuning experiments on CIFAR-10."""

__version__ = "0.1.0"
