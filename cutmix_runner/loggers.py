"""What a run shows while it trains, besides metrics.jsonl: the example grid of each stage's
mixed batch (`examples_STAGE.png`, always), and TensorBoard event files when
`trainer.logger=tensorboard` (the optional `tensorboard` extra).

The grid answers "what does a mild and a strong stage do to images?": 16 training images passed
through the stage's regularizer, each tile titled with its soft label ("cat 0.83 / dog 0.17").
A copy of the regularizer mixes them with its probability set to 1 (the grid shows a *mixed*
batch even at prob 0.2), so the run's own regularizer and its random draws are untouched and a
run's numbers do not depend on the grid.
"""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path
from typing import Any

import torch

from cutmix_runner.config import StageConfig
from cutmix_runner.data import Splits
from cutmix_runner.mixing import Regularizer, one_hot
from cutmix_runner.rundir import RunDir

TENSORBOARD_HINT = "pip install 'cutmix-runner[tensorboard]' (or pip install tensorboard)"


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def soft_label(target: torch.Tensor, classes: tuple[str, ...]) -> str:
    """The two largest label weights, e.g. "cat 0.83 / dog 0.17"; one name when unmixed."""
    weights, index = torch.topk(target, 2)
    if weights[1] < 1e-3:
        return classes[int(index[0])]
    return " / ".join(f"{classes[int(i)]} {float(w):.2f}" for w, i in zip(weights, index,
                                                                         strict=True))


def mixed_examples(regularizer: Regularizer, images: torch.Tensor, labels: torch.Tensor,
                   num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch as this stage's regularizer mixes it when its coin says yes (0-1 floats, soft
    targets). A copy does the mixing, so the run's regularizer and its random state are
    untouched."""
    preview = copy.deepcopy(regularizer)
    preview.prob = 1.0  # also when a ramp starts at 0; `none` leaves images as they are anyway
    mix = preview.apply(images.float() / 255, one_hot(labels, num_classes))
    return mix.images.clamp(0, 1), mix.targets


def grid_figure(images: torch.Tensor, targets: torch.Tensor, classes: tuple[str, ...],
                title: str) -> Any:
    from cutmix_runner.plots import pyplot

    plt = pyplot()
    columns = 4
    rows = math.ceil(len(images) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, target in zip(axes.flat, images, targets, strict=False):
        ax.imshow(image.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        ax.set_title(soft_label(target, classes), fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


class RunLogger:
    """Writes the example grids; the TensorBoard subclass adds event files."""

    def __init__(self, out_dir: Path, classes: tuple[str, ...]) -> None:
        self.out_dir, self.classes = out_dir, classes

    def stage_examples(self, name: str, stage: StageConfig, regularizer: Regularizer,
                       data: Splits, global_step: int, count: int = 16) -> None:
        """The first `count` training images, mixed as this stage mixes them."""
        images, labels = data.train_x[:count].cpu(), data.train_y[:count].cpu()
        if len(images) == 0:
            return
        mixed, targets = mixed_examples(regularizer, images, labels, len(self.classes))
        reg = stage.regularizer
        fig = grid_figure(mixed, targets, self.classes,
                          f"stage '{name}': {reg.name}, applied with prob {reg.prob} "
                          f"(the grid shows it applied)")
        fig.savefig(RunDir(self.out_dir).examples(name), dpi=100)
        self.figure(f"examples/{name}", fig, global_step)
        from cutmix_runner.plots import pyplot

        pyplot().close(fig)

    def figure(self, tag: str, fig: Any, global_step: int) -> None:
        pass

    def step(self, global_step: int, loss: float, optimizer: torch.optim.Optimizer) -> None:
        pass

    def epoch(self, record: dict[str, Any]) -> None:
        pass

    def finish(self, config: dict[str, Any], summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        """Release files without a summary (a run stopped early, e.g. a pruned search trial)."""


class TensorBoardLogger(RunLogger):
    """Event files in RUN_DIR/tensorboard: per-step loss and learning rates (at each loss
    read-back, every `trainer.sync_every` steps), per-epoch metrics, the example grids, and
    the run's hparams with its final metrics."""

    def __init__(self, out_dir: Path, classes: tuple[str, ...]) -> None:
        super().__init__(out_dir, classes)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(RunDir(out_dir).tensorboard))

    def figure(self, tag: str, fig: Any, global_step: int) -> None:
        self.writer.add_figure(tag, fig, global_step, close=False)

    def step(self, global_step: int, loss: float, optimizer: torch.optim.Optimizer) -> None:
        self.writer.add_scalar("train/loss_step", loss, global_step)
        for group in optimizer.param_groups:
            self.writer.add_scalar(f"lr/{group['name']}", group["lr"], global_step)

    def epoch(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, record["global_epoch"])
        self.writer.flush()

    def finish(self, config: dict[str, Any], summary: dict[str, Any]) -> None:
        """The run's config as hparams, next to its final metrics; closes the files."""
        metrics = {f"hparam/{k}": summary[k] for k in ("test_accuracy",
                   "test_accuracy_single_view", "final_test_accuracy") if k in summary}
        metrics["hparam/best_val_accuracy"] = summary["best"]["val_accuracy"]
        self.writer.add_hparams(flat_hparams(config), metrics, run_name=".")
        self.close()

    def close(self) -> None:
        self.writer.close()


class Silent(RunLogger):
    """The logger of DDP ranks other than 0, which write nothing."""

    def stage_examples(self, *args: Any, **kwargs: Any) -> None:
        pass


def build(kind: str, out_dir: Path, classes: tuple[str, ...], writer: bool = True) -> RunLogger:
    """`trainer.logger`: "none" (example grids only) or "tensorboard"; Silent unless `writer`."""
    if not writer:
        return Silent(out_dir, classes)
    if kind == "tensorboard":
        return TensorBoardLogger(out_dir, classes)
    return RunLogger(out_dir, classes)


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as TensorBoard hparams: dotted keys, scalars only (lists as text)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif value is None or isinstance(value, list | tuple):
            flat[name] = str(value)
        else:
            flat[name] = value
    return flat
