"""The data of each training step: random views of the prepared subjects, as batches.

Every step draws pairs of random views (:mod:`mmreg.methods.keymorph.augment`) of the
prepared training subjects (:class:`~mmreg.methods.keymorph.data.Source`) and renders
them; what a pair is depends on the step's phase (``pretrain``: two views of one subject;
``unsupervised``: half of the steps, views of two subjects in one contrast for the
image MSE; ``supervised``: label maps too, for the soft Dice).

A step's batch is a pure function of ``(seed, step)`` (its views are drawn from
``numpy.random.default_rng([seed, step])``), so a worker process can render batches
ahead (:class:`BatchStream`) and a resumed run sees the batches it would have seen.

Example:
    >>> import numpy as np, torch
    >>> from mmreg.imaging.image import Image
    >>> from mmreg.methods.keymorph.data import TrainingSubject, prepare_source
    >>> from mmreg.methods.keymorph.train import KeyMorphTrainSettings
    >>> yy, xx = np.mgrid[:40, :40]
    >>> blob = ((yy - 20) ** 2 / 150 + (xx - 18) ** 2 / 90 < 1).astype(np.float32)
    >>> subject = TrainingSubject("s0", {"T1w": Image(blob, np.diag([2.0, 2.0, 1.0, 1.0]))})
    >>> settings = KeyMorphTrainSettings(
    ...     batch_size=2, n_keypoints=4, input_size=16, input_mm=96.0, width=2, levels=3)
    >>> maker = BatchMaker([prepare_source(subject, settings=settings)], settings)
    >>> batch = maker.make_batch(0)
    >>> batch.mode, tuple(batch.x.shape)
    ('consistency', (4, 1, 16, 16))
    >>> torch.equal(batch.x, maker.make_batch(0).x)
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmreg.methods.keymorph.augment import (
    AugmentSettings,
    View,
    random_lut,
    random_view,
    render_view,
    sample_view,
)
from mmreg.methods.keymorph.data import Source
from mmreg.methods.keymorph.losses import one_hot
from mmreg.methods.keymorph.sampling import normalize_input
from mmreg.methods.keymorph.synth import skull_strip, synth_intensity

if TYPE_CHECKING:  # the settings live with the loop, which imports this module
    from mmreg.methods.keymorph.train import KeyMorphTrainSettings

__all__ = [
    "Batch",
    "BatchMaker",
    "BatchStream",
    "draw_view",
    "render_source",
]


@dataclass(frozen=True)
class Batch:
    """One step's inputs: ``x`` holds the a-views then the b-views, ``(2B, 1, *S)``."""

    step: int
    mode: str  # consistency, mse or dice
    phase: str
    x: torch.Tensor
    views_a: list[View]
    views_b: list[View]
    subjects_a: list[int]
    subjects_b: list[int]
    labels_a: torch.Tensor | None
    labels_b: torch.Tensor | None
    fit_seed: int  # draws the transform kind and TPS lambdas of the image/label losses


def draw_view(
    src: Source,
    rng: np.random.Generator,
    settings: KeyMorphTrainSettings,
    *,
    difficulty: float = 1.0,
    rotation: str | None = None,
) -> View:
    """A random view of ``src`` on the detector's grid (see :func:`random_view`)."""
    return random_view(
        rng,
        src.center,
        size=settings.input_size,
        spacing=settings.input_mm / settings.input_size,
        settings=settings.augment,
        rotation=rotation,
        difficulty=difficulty,
    )


def render_source(
    src: Source,
    modality: int,
    view: View,
    rng: np.random.Generator,
    settings: KeyMorphTrainSettings,
    augment: AugmentSettings | None,
) -> torch.Tensor:
    """One image of ``src`` seen through ``view`` with a random contrast (``augment``).

    With ``--synth-from-labels`` the contrast is sometimes synthesised from the label
    map instead, and the view sometimes brain-extracted.
    """
    if augment is None:
        return render_view(src.images[modality], src.affine, view, rng, None)
    synth = settings.synth
    image = src.images[modality]
    if src.classes is not None and rng.random() < synth.prob:
        assert src.reference is not None
        lut = random_lut(rng, augment)
        image = synth_intensity(src.classes, src.images[0], src.reference, rng, synth, lut)
        # The contrast is drawn already; the label map's edges are sharp.
        augment = replace(augment, lut_prob=0.0, blur_prob=max(augment.blur_prob, 0.6))
    strip = src.brain is not None and rng.random() < synth.skullstrip_prob
    # A brain-extracted scan has no neck or face to paint around it.
    x = render_view(image, src.affine, view, rng, augment, centre=None if strip else src.center)
    if strip:
        assert src.brain is not None
        brain = sample_view(src.brain[None], src.affine, view)[0]
        x = normalize_input(skull_strip(x, brain, rng))
    return x


class BatchMaker:
    """Renders the batch of any step from the training sources (see :meth:`make_batch`)."""

    def __init__(self, sources: Sequence[Source], settings: KeyMorphTrainSettings) -> None:
        self.sources = list(sources)
        self.s = settings
        # One label set for every one-hot map; supervised steps need labels everywhere.
        with_labels = [src.labels for src in self.sources if src.labels is not None]
        self.n_classes = (
            int(max(int(lab.max()) for lab in with_labels)) + 1
            if len(with_labels) == len(self.sources)
            else 0
        )

    def difficulty_at(self, step: int) -> float:
        """Curriculum position of ``step`` (1: full range of rotations and offsets)."""
        if self.s.init:
            return 1.0
        ramp = self.s.curriculum * max(1, self.s.pretrain_steps)
        return min(1.0, step / max(1.0, ramp))

    def phase_at(self, step: int) -> str:
        return "pretrain" if step < self.s.pretrain_steps else self.s.variant

    def _labels(self, src: Source, view: View) -> torch.Tensor:
        assert src.labels is not None
        lab = sample_view(src.labels[None].float(), src.affine, view, mode="nearest")[0]
        return one_hot(lab[None], self.n_classes)[0]

    def make_batch(self, step: int) -> Batch:
        """The views of step ``step`` (0-based): a pure function of ``(seed, step)``."""
        s = self.s
        rng = np.random.default_rng([s.seed, step])
        difficulty = self.difficulty_at(step)
        phase = self.phase_at(step)
        if phase == "pretrain" or (phase == "unsupervised" and rng.random() < 0.5):
            mode = "consistency"
        elif phase == "unsupervised":
            mode = "mse"
        else:
            mode = "dice"
        if mode == "dice" and self.n_classes < 2:
            mode = "consistency"
        pairs = []
        for _ in range(s.batch_size):
            i = int(rng.integers(len(self.sources)))
            same = mode == "consistency" or len(self.sources) == 1
            if mode == "dice":
                same = same or rng.random() < s.same_subject_prob
            j = i if same else int(rng.choice([k for k in range(len(self.sources)) if k != i]))
            src_a, src_b = self.sources[i], self.sources[j]
            ma = int(rng.integers(len(src_a.images)))
            mb = int(rng.integers(len(src_b.images)))
            if mode == "mse" and src_a.modalities[ma] in src_b.modalities:
                mb = src_b.modalities.index(src_a.modalities[ma])
            # View a is often upright, like a fixed image; view b in any pose.
            small = "small" if rng.random() < 0.5 else None
            va = draw_view(src_a, rng, s, difficulty=difficulty, rotation=small)
            vb = draw_view(src_b, rng, s, difficulty=difficulty)
            if mode == "mse":
                # Same contrast draw for both images, so intensities are comparable.
                seed = int(rng.integers(2**31))
                xa = render_source(src_a, ma, va, np.random.default_rng(seed), s, s.augment)
                xb = render_source(src_b, mb, vb, np.random.default_rng(seed), s, s.augment)
            else:
                xa = render_source(src_a, ma, va, rng, s, s.augment)
                xb = render_source(src_b, mb, vb, rng, s, s.augment)
            pairs.append((i, j, va, vb, xa, xb))
        labels_a = labels_b = None
        if mode == "dice":
            labels_a = torch.stack([self._labels(self.sources[p[0]], p[2]) for p in pairs])
            labels_b = torch.stack([self._labels(self.sources[p[1]], p[3]) for p in pairs])
        return Batch(
            step=step,
            mode=mode,
            phase=phase,
            x=torch.stack([p[4] for p in pairs] + [p[5] for p in pairs])[:, None],
            views_a=[p[2] for p in pairs],
            views_b=[p[3] for p in pairs],
            subjects_a=[p[0] for p in pairs],
            subjects_b=[p[1] for p in pairs],
            labels_a=labels_a,
            labels_b=labels_b,
            fit_seed=int(rng.integers(2**31)),
        )


class _Steps(torch.utils.data.IterableDataset):
    """Batches for steps ``start..stop`` (a worker process renders them ahead)."""

    def __init__(self, maker: BatchMaker, start: int, stop: int) -> None:
        super().__init__()
        self.maker, self.start, self.stop = maker, start, stop

    def __iter__(self) -> Iterator[Batch]:
        for step in range(self.start, self.stop):
            yield self.maker.make_batch(step)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class BatchStream:
    """The batches of steps ``0..total - 1`` in order, rendered ahead by ``workers`` processes.

    ``stream(step)`` returns step ``step``'s batch; the stream (re)starts wherever it
    is first asked, e.g. at a resumed run's next step. :meth:`close` stops the workers.
    """

    def __init__(self, maker: BatchMaker, total: int, workers: int) -> None:
        self.maker, self.total, self.workers = maker, int(total), int(workers)
        self._batches: Iterator[Batch] | None = None
        self._next = -1

    def _start(self, step: int) -> Iterator[Batch]:
        workers = self.workers
        loader = torch.utils.data.DataLoader(
            _Steps(self.maker, step, self.total),
            batch_size=None,
            num_workers=workers,
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=2 if workers else None,
            multiprocessing_context="fork" if workers else None,
        )
        return iter(loader)

    def __call__(self, step: int) -> Batch:
        if self._batches is None or step != self._next:
            self.close()
            self._batches = self._start(step)
        batch = next(self._batches)
        self._next = step + 1
        return batch

    def close(self) -> None:
        self._batches = None  # the DataLoader's iterator shuts its workers down when freed

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
