"""Training and inference of the 2D segmentation U-Net on (image, label map) arrays.

Arrays in, weights out, on the shared training engine (:func:`mmreg.training.fit_epochs`:
seeding, the epoch loop, best-validation weights, progress, resumable state). Where the
labels come from (registration of another modality's labels) is the caller's business
(see ``transfer.py``).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> images = [rng.random((1, 16, 16)).astype(np.float32) for _ in range(4)]
    >>> labels = [(im[0] > 0.5).astype(np.int64) for im in images]
    >>> settings = SegmenterTrainSettings(epochs=1, width=4, depth=2, batch_size=2)
    >>> result = train_segmenter(images, labels, n_classes=2, settings=settings, progress=False)
    >>> predict(result.model, images[0]).shape
    (16, 16)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from mmreg.segmentation.unet import UNet2d, UNetConfig
from mmreg.training import digest, fit_epochs, seed_everything, split_items

__all__ = [
    "SegmenterTrainSettings",
    "TrainedSegmenter",
    "dice_per_class",
    "predict",
    "predict_proba",
    "soft_dice_loss",
    "train_segmenter",
    "validation_count",
]


@dataclass(frozen=True)
class SegmenterTrainSettings:
    """Hyperparameters of U-Net training (fields become ``mmreg train`` options)."""

    epochs: int = field(default=40, metadata={"help": "passes over the training images"})
    batch_size: int = field(default=4, metadata={"help": "images per step"})
    learning_rate: float = field(default=2e-3, metadata={"help": "Adam step size"})
    width: int = field(default=16, metadata={"help": "U-Net channels at full resolution"})
    depth: int = field(default=4, metadata={"help": "U-Net downsamplings"})
    val_fraction: float = field(default=0.2, metadata={"help": "share of subjects held out"})
    augment: bool = field(default=True, metadata={"help": "random flips of intensity/shift"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and shuffling"})

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")


@dataclass
class TrainedSegmenter:
    """The best model (by validation Dice) and the training history."""

    model: UNet2d
    config: UNetConfig
    history: list[dict[str, float]]
    best_epoch: int
    best_val_dice: float


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-6
) -> torch.Tensor:
    """``1 - mean over foreground classes of 2|P∩T| / (|P| + |T|)`` with softmax P.

    Classes absent from both prediction and target in the batch count as perfect
    (their terms are 1), so a label missing from a crop does not push the loss.
    """
    n_classes = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (total + eps)
    return 1 - dice[1:].mean()


def dice_per_class(pred: npt.NDArray, truth: npt.NDArray, n_classes: int) -> list[float]:
    """Hard Dice per foreground class (NaN where a class is in neither map)."""
    out = []
    for c in range(1, n_classes):
        a, b = pred == c, truth == c
        denom = a.sum() + b.sum()
        out.append(float(2 * (a & b).sum() / denom) if denom else math.nan)
    return out


def validation_count(n: int, fraction: float) -> int:
    """Items :func:`mmreg.training.split_items` holds out of ``n`` for ``fraction``: at
    least one, and never all of them.

    Example:
        >>> validation_count(10, 0.2), validation_count(1, 0.2), validation_count(10, 0.0)
        (2, 0, 0)
    """
    return len(split_items(range(n), fraction, seed=0)[1])


def _augment(
    x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    # Contrast/brightness jitter and a small shift: transferred labels are slightly off anyway.
    scale = 1 + 0.2 * (torch.rand(x.shape[0], 1, 1, 1, generator=gen) - 0.5) * 2
    offset = 0.1 * (torch.rand(x.shape[0], 1, 1, 1, generator=gen) - 0.5) * 2
    x = x * scale + offset
    dy, dx = (int(v) for v in torch.randint(-4, 5, (2,), generator=gen))
    return torch.roll(x, (dy, dx), dims=(2, 3)), torch.roll(y, (dy, dx), dims=(1, 2))


def _stack(items: Sequence[npt.NDArray], dtype: torch.dtype) -> torch.Tensor:
    shape = tuple(max(s) for s in zip(*(a.shape for a in items), strict=True))
    out = np.zeros((len(items), *shape), dtype=np.float32 if dtype.is_floating_point else np.int64)
    for k, a in enumerate(items):
        index: tuple[int | slice, ...] = (k, *(slice(0, s) for s in a.shape))
        out[index] = a
    return torch.from_numpy(out).to(dtype)


def train_segmenter(
    images: Sequence[npt.NDArray],
    labels: Sequence[npt.NDArray],
    *,
    n_classes: int,
    settings: SegmenterTrainSettings,
    device: str = "cpu",
    progress: bool = True,
    n_val: int | None = None,
    state_path: Path | None = None,
) -> TrainedSegmenter:
    """Train a U-Net on ``images`` ``(C, H, W)`` with integer ``labels`` ``(H, W)``.

    Validation items: the last ``n_val`` (the caller's own split, e.g. by subject), by
    default a :func:`mmreg.training.split_items` split of the positions (``val_fraction``,
    ``seed``). The epoch with the best mean validation Dice is kept (without validation
    items, the training items are scored). ``state_path``: a resumable training state
    (:func:`mmreg.training.fit`; ``None``: none is kept).
    """
    if len(images) != len(labels) or not images:
        raise ValueError("need as many label maps as images, and at least one")
    generator = seed_everything(settings.seed)
    n = len(images)
    if n_val is None:
        train_idx, val_idx = split_items(range(n), settings.val_fraction, settings.seed)
    elif 0 <= n_val < n:
        train_idx, val_idx = list(range(n - n_val)), list(range(n - n_val, n))
    else:
        raise ValueError(f"n_val must leave at least one training item, got {n_val}")
    config = UNetConfig(
        in_channels=int(images[0].shape[0]),
        n_classes=n_classes,
        width=settings.width,
        depth=settings.depth,
    )
    model = config.build().to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)

    def train_step(step: int, batch: list[int]) -> dict[str, float]:
        x = _stack([images[train_idx[i]] for i in batch], torch.float32)
        y = _stack([labels[train_idx[i]] for i in batch], torch.int64)
        if settings.augment:
            x, y = _augment(x, y, generator)
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y) + soft_dice_loss(logits, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return {"loss": float(loss.detach())}

    def validate() -> dict[str, float]:
        scores = [
            np.nanmean(
                dice_per_class(predict(model, images[i], device=device), labels[i], n_classes)
            )
            for i in val_idx or train_idx
        ]
        return {"val_dice": float(np.nanmean(scores))}

    best = fit_epochs(
        model,
        optimiser,
        train_step,
        validate,
        epochs=settings.epochs,
        items=len(train_idx),
        batch_size=settings.batch_size,
        drop_last=False,
        generator=generator,
        score="val_dice",
        progress=progress,
        state_path=state_path,
        fingerprint={
            "settings": asdict(settings),
            "n_classes": n_classes,
            "val": val_idx,
            "data": digest(*images, *labels),
            "device": device,
        },
        desc="unet",
    )
    model.load_state_dict(best.state)  # on the training device, unlike best.restore()
    model.eval()
    return TrainedSegmenter(model, config, best.history, best.epoch, best.score)


@torch.no_grad()
def predict(model: UNet2d, image: npt.NDArray, *, device: str = "cpu") -> npt.NDArray[np.int64]:
    """Label map ``(H, W)`` for one image ``(C, H, W)``."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    return model(x).argmax(1)[0].cpu().numpy().astype(np.int64)


@torch.no_grad()
def predict_proba(
    model: UNet2d, image: npt.NDArray, *, device: str = "cpu"
) -> npt.NDArray[np.float32]:
    """Class probabilities ``(n_classes, H, W)`` for one image ``(C, H, W)``."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    return torch.softmax(model(x), dim=1)[0].cpu().numpy().astype(np.float32)
