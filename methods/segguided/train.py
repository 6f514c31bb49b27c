"""``mmreg train segguided``: the four stages of Demir & Niethammer (MIDL 2024).

1. **Augmentation** (``augment``): every labelled image is registered (``augment_method``,
   mmreg's own ``mind-io`` by default, in place of the paper's GradICON network) onto
   other images of its modality; each result is a real image with moved labels, a new
   training sample. ``elastic`` instead deforms the labelled images randomly during
   training (the paper's baseline); ``both`` does both.
2. **Source segmenter** S_S (MONAI residual U-Net, Dice + cross-entropy) on those samples,
   half of them given a random synthetic contrast (``contrast``), so that S_S, and S_T
   which starts from it, do not depend on one modality's intensities.
3. **Domain adaptation**: a CycleGAN (ResNet generators, PatchGAN discriminators, LSGAN)
   with semantic consistency (``1 - Dice``): frozen S_S must find the source labels in
   source images translated to the target look, and the same structures in target images
   before and after translation back (so translation changes the look, not the anatomy);
   S_T, initialised from S_S, learns the source labels on the translated images and S_S's
   reading of translated-back target images. ``lambda_gan = 1``, ``lambda_cycle = 10``,
   ``lambda_sem = 5``. Trained on random patches (``patch``), which the fully
   convolutional networks allow, to fit CPUs.
4. **Registration of segmentations**: a U-Net from both images' predicted class
   probabilities to a displacement field, trained with ``1 - Dice`` in both directions plus
   the GradICON penalty (``lambda_gradicon = 1.5``), on each subject's pair pre-aligned with
   ``prealign`` (as the chain ``ants-rigid+segguided`` will be at test time) and on
   cross-subject pairs, with random smooth deformations.

Only the labels of the modality named by ``labels_from`` are read, whatever else the
ground truth holds; the log says so. Each stage's result is kept in ``<out>.stages/``
(stage 1: the samples; 2-4: the networks) and reused when the data and settings match;
``--stages 3,4`` reruns a subset. Inside a stage, :func:`mmreg.training.fit` writes a
resumable state at every validation. The checkpoint holds every network (one file, one
sha256) and the per-stage training times.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmreg.errors import InputError, UsageError
from mmreg.methods.segguided.grid import auto_spacing, one_hot, onto, unit_tensor, working_grid
from mmreg.methods.segguided.losses import (
    gradicon_penalty,
    lsgan,
    random_contrast,
    random_deformation,
    soft_dice,
)
from mmreg.methods.segguided.model import FAMILY, SegGuidedConfig, SegGuidedNets

__all__ = ["STAGES", "SegGuidedTrainSettings", "train_segguided"]

LOG = logging.getLogger("mmreg.train.segguided")

#: The stages, in order.
STAGES = ("augment", "source", "adapt", "register")
#: Augmentation modes (stage 1).
AUGMENTATIONS = ("registration", "elastic", "both")


@dataclass(frozen=True)
class SegGuidedTrainSettings:
    """Settings of ``mmreg train segguided`` (each field is a ``--option``)."""

    labels_from: str = field(
        default="", metadata={"help": "the modality suffix whose labels are used (required)"}
    )
    labelled: int = field(
        default=0, metadata={"help": "use the labels of only this many images (0: all)"}
    )
    stages: str = field(
        default="", metadata={"help": "rerun these stages, e.g. 3,4 (default: what is missing)"}
    )
    size: int = field(
        default=0, metadata={"help": "working grid voxels per axis (0: 64 in 3D, 128 in 2D)"}
    )
    spacing: float = field(
        default=0.0, metadata={"help": "working grid spacing, mm (0: the median FOV fits)"}
    )
    prealign: str = field(
        default="ants-rigid", metadata={"help": "method pre-aligning training pairs, or none"}
    )
    augment: str = field(
        default="both",
        metadata={"help": "stage 1: registration, elastic or both", "choices": AUGMENTATIONS},
    )
    augment_method: str = field(
        default="mind-io", metadata={"help": "stage 1: the within-modality registration"}
    )
    augment_pairs: int = field(default=40, metadata={"help": "stage 1: registered samples"})
    source_steps: int = field(default=1500, metadata={"help": "stage 2 steps"})
    adapt_steps: int = field(default=2000, metadata={"help": "stage 3 steps"})
    register_steps: int = field(default=2000, metadata={"help": "stage 4 steps"})
    patch: int = field(
        default=0, metadata={"help": "stage 3 patch size (0: size / 2, at least 32)"}
    )
    lr: float = field(default=1e-3, metadata={"help": "learning rate (stage 3: a fifth)"})
    lambda_gan: float = 1.0
    lambda_cycle: float = 10.0
    lambda_sem: float = 5.0
    lambda_gradicon: float = 1.5
    contrast: float = field(
        default=0.5,
        metadata={"help": "stage 2: share of samples given a random synthetic contrast"},
    )
    elastic_voxels: float = field(
        default=2.0, metadata={"help": "std of random deformations, working-grid voxels"}
    )
    val_fraction: float = 0.2
    validate_every: int = 300
    log_every: int = 50
    max_minutes: float = field(
        default=0.0, metadata={"help": "time limit of each of stages 2-4, minutes (0: none)"}
    )
    seed: int = 0

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}")
        if self.labelled < 0 or self.size < 0 or self.spacing < 0 or self.patch < 0:
            raise ValueError("labelled, size, spacing and patch must not be negative")
        self.stage_numbers()

    def stage_numbers(self) -> tuple[int, ...]:
        """``--stages`` as numbers 1-4 (empty: none forced)."""
        if not self.stages.strip():
            return ()
        try:
            numbers = tuple(sorted({int(s) for s in self.stages.replace(" ", "").split(",")}))
        except ValueError:
            raise ValueError(
                f"stages must be numbers 1-4 separated by commas: {self.stages!r}"
            ) from None
        if not set(numbers) <= {1, 2, 3, 4}:
            raise ValueError(f"stages must be within 1-4, got {self.stages!r}")
        return numbers


# ---------------------------------------------------------------- data


@dataclass(eq=False)
class Side:
    """One image on its working grid: ``x`` (1, 1, *shape) in [0, 1], ``y`` one-hot or None."""

    subject: str
    image: Any  # the canonical Image (for registration)
    x: torch.Tensor
    y: torch.Tensor | None = None


@dataclass(eq=False)
class Data:
    """Everything the stages read."""

    config: SegGuidedConfig
    labelled: dict[str, Side]  # subject -> image of the labelled modality
    other: dict[str, Side]  # subject -> image of the other modality
    train: list[str]
    val: list[str]
    with_labels: list[str]  # training subjects whose labels are used
    info: dict[str, Any]


def _labelled_side(records: Sequence[Mapping[str, Any]], suffix: str) -> str:
    if not suffix:
        raise UsageError("segguided needs --labels-from SUFFIX: the modality whose labels it uses")
    want = suffix.lower()
    first = records[0]
    for side in ("fixed", "moving"):
        if str(first.get(f"{side}_label", "")).lower().startswith(want):
            return side
    raise UsageError(
        f"--labels-from {suffix}: neither image of the pairs is a {suffix} "
        f"(fixed {first.get('fixed_label')}, moving {first.get('moving_label')})"
    )


def _subject(rec: Mapping[str, Any]) -> str:
    return str(rec["subject"]) + (f"_ses-{rec['session']}" if rec.get("session") else "")


def load_data(records: Sequence[Mapping[str, Any]], settings: SegGuidedTrainSettings) -> Data:
    """Both images of every pair on their working grids, the labelled modality's labels."""
    from mmreg.imaging.image import load_image, load_labels
    from mmreg.imaging.preprocess import reorient_canonical
    from mmreg.methods.features.suits_train import label_groups
    from mmreg.training import split_items

    side = _labelled_side(records, settings.labels_from)
    other = "moving" if side == "fixed" else "fixed"
    LOG.info(
        "segguided uses ONLY the labels of the %s images (--labels-from %s); labels of the "
        "%s images in the ground truth are never read",
        records[0][f"{side}_label"],
        settings.labels_from,
        records[0][f"{other}_label"],
    )
    by_subject: dict[str, Mapping[str, Any]] = {}
    for rec in records:
        by_subject.setdefault(_subject(rec), rec)
    images: dict[str, tuple[Any, Any, Any]] = {}
    for subject, rec in sorted(by_subject.items()):
        lab_img = reorient_canonical(load_image(rec[side]))
        oth_img = reorient_canonical(load_image(rec[other], ndim=lab_img.ndim))
        labels = None
        if rec.get(f"{side}_dseg"):
            labels = reorient_canonical(
                load_labels(rec[f"{side}_dseg"], ndim=lab_img.ndim, image=rec[side])
            )
        images[subject] = (lab_img, oth_img, labels)
    ndim = next(iter(images.values()))[0].ndim
    size = settings.size or (64 if ndim == 3 else 128)
    shape = (size,) * ndim
    grids = [g.grid for a, b, _ in images.values() for g in (a, b)]
    spacing = settings.spacing or auto_spacing(grids, shape)
    train, val = split_items(list(images), settings.val_fraction, settings.seed)
    have = [s for s in train if images[s][2] is not None]
    if not have:
        raise InputError(
            f"no training image of {settings.labels_from} has a label map (*_dseg) in the "
            "ground truth; give --ground-truth DIR"
        )
    with_labels = have[: settings.labelled] if settings.labelled else have
    maps = [np.asarray(images[s][2].data) for s in with_labels]
    groups = label_groups(maps, 10)
    config = SegGuidedConfig(
        ndim=ndim,
        n_classes=len(groups),
        shape=shape,
        spacing=spacing,
        labelled_side=side,
        labelled_suffix=str(records[0][f"{side}_label"]),
        other_suffix=str(records[0][f"{other}_label"]),
        groups=groups,
    )
    lab_sides: dict[str, Side] = {}
    oth_sides: dict[str, Side] = {}
    for subject, (lab_img, oth_img, labels) in images.items():
        grid = working_grid(lab_img.grid, shape, spacing)
        on = onto(lab_img, grid)
        use = labels is not None and (subject in with_labels or subject in val)
        y = one_hot(onto(labels, grid, labels=True).data, groups) if use else None
        lab_sides[subject] = Side(subject, lab_img, unit_tensor(on.data), y)
        grid_o = working_grid(oth_img.grid, shape, spacing)
        oth_sides[subject] = Side(subject, oth_img, unit_tensor(onto(oth_img, grid_o).data))
    info = {
        "subjects": {"train": train, "val": val, "with_labels": with_labels},
        "labels_from": settings.labels_from,
        "label_groups": [list(g) for g in groups],
        "working_grid": {"shape": list(shape), "spacing_mm": spacing},
    }
    LOG.info(
        "%d subject(s): %d for training (%d with labels), %d for validation; working grid "
        "%s at %.2f mm; %d class(es)",
        len(images),
        len(train),
        len(with_labels),
        len(val),
        "x".join(map(str, shape)),
        spacing,
        len(groups),
    )
    return Data(config, lab_sides, oth_sides, train, val, with_labels, info)


# ---------------------------------------------------------------- stage results on disk


def _fingerprint(data: Data, settings: SegGuidedTrainSettings, stage: int) -> str:
    """What a stage's result depends on: the data, the settings up to that stage."""
    values = asdict(replace(settings, stages="", max_minutes=0.0))
    blob = json.dumps({"info": data.info, "settings": values, "stage": stage}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _stage_path(out: Path, stage: int) -> Path:
    return out.with_name(out.name + ".stages") / f"stage{stage}-{STAGES[stage - 1]}.pt"


def _load_stage(path: Path, fingerprint: str) -> Any:
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a broken file is redone
        return None
    return saved["value"] if saved.get("fingerprint") == fingerprint else None


def _save_stage(path: Path, fingerprint: str, value: Any) -> None:
    from mmreg.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"fingerprint": fingerprint, "value": value}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


# ---------------------------------------------------------------- helpers


def _deform(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``x`` (images or class probabilities) warped by the voxel field ``u`` (bilinear)."""
    from mmreg.methods.features.optimise import warp

    return warp(x, u, mode="bilinear")


def _crop(tensors: Sequence[torch.Tensor], size: int, g: torch.Generator) -> list[torch.Tensor]:
    shape = tensors[0].shape[2:]
    starts = [int(torch.randint(0, s - size + 1, (1,), generator=g)) for s in shape]
    index = (slice(None), slice(None), *(slice(a, a + size) for a in starts))
    return [t[index] for t in tensors]


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _time_limit(settings: SegGuidedTrainSettings) -> float | None:
    return settings.max_minutes * 60 if settings.max_minutes > 0 else None


#: What each trained stage's progress bar says.
_BARS = {2: "stage 2/4 S_S", 3: "stage 3/4 CycleGAN", 4: "stage 4/4 registration"}


def _fit(
    module: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    step: Callable[[int], Mapping[str, float]],
    validate: Callable[[], Mapping[str, float]],
    *,
    stage: int,
    settings: SegGuidedTrainSettings,
    out: Path,
    fingerprint: str,
    generator: torch.Generator,
    progress: bool,
) -> dict[str, Any]:
    """One trained stage (2-4) on the shared engine; its best weights and history."""
    from mmreg.training import fit

    steps = (settings.source_steps, settings.adapt_steps, settings.register_steps)[stage - 2]
    state = out.with_name(f"{out.name}.stage{stage}.state")
    best = fit(
        module,
        optimiser,
        step,
        validate,
        steps=steps,
        validate_every=settings.validate_every,
        log_every=settings.log_every,
        progress=progress,
        state_path=state,
        fingerprint={"stage": fingerprint},
        generator=generator,
        log=LOG,
        desc=_BARS[stage],
        time_limit_s=_time_limit(settings),
    )
    best.restore()
    state.unlink(missing_ok=True)
    return {"state": best.state, "history": best.history}


# ---------------------------------------------------------------- stage 1


def stage_augment(data: Data, settings: SegGuidedTrainSettings, progress: bool) -> dict[str, Any]:
    """Labelled images registered onto other images of their modality: ``{"x", "y", "runtime_s"}``
    (stacked samples, originals first)."""
    from tqdm.auto import tqdm

    from mmreg.imaging.image import Image
    from mmreg.methods import get_method

    originals = [data.labelled[s] for s in data.with_labels]
    xs = [s.x for s in originals]
    ys = [s.y for s in originals]
    started = time.perf_counter()
    if settings.augment in ("registration", "both") and settings.augment_pairs > 0:
        targets = [s for s in data.train if s in data.labelled]
        pairs = [(a, b) for a in data.with_labels for b in targets if a != b]
        rng = np.random.default_rng(settings.seed)
        pairs = [pairs[i] for i in rng.permutation(len(pairs))][: settings.augment_pairs]
        method = get_method(settings.augment_method)
        shape, spacing = data.config.shape, data.config.spacing
        for a, b in tqdm(pairs, desc="stage 1/4 augment", disable=not progress):
            src, dst = data.labelled[a], data.labelled[b]
            grid_a = working_grid(src.image.grid, shape, spacing)
            grid_b = working_grid(dst.image.grid, shape, spacing)
            moving = Image(src.x[0, 0].numpy(), grid_a.affine)
            fixed = Image(dst.x[0, 0].numpy(), grid_b.affine)
            result = method.register(fixed, moving, seed=settings.seed)
            assert src.y is not None
            classes = Image(src.y[0].argmax(0).numpy().astype(np.int32), grid_a.affine)
            moved = result.transform.apply(classes, fixed, interpolation="nearest")
            groups = tuple((k,) for k in range(data.config.n_classes))
            xs.append(dst.x)
            ys.append(one_hot(moved.data, groups))
        LOG.info(
            "stage 1: %d registered sample(s) from %d labelled image(s) with %s in %.0f s",
            len(xs) - len(originals),
            len(originals),
            settings.augment_method,
            time.perf_counter() - started,
        )
    return {
        "x": torch.cat(xs),
        "y": torch.cat([y for y in ys if y is not None]),
        "runtime_s": round(time.perf_counter() - started, 1),
    }


# ---------------------------------------------------------------- stage 2


def stage_source(
    nets: SegGuidedNets,
    samples: Mapping[str, torch.Tensor],
    data: Data,
    settings: SegGuidedTrainSettings,
    *,
    out: Path,
    fingerprint: str,
    generator: torch.Generator,
    progress: bool,
) -> dict[str, Any]:
    """Train S_S; returns its weights and the validation history."""
    from monai.losses import DiceCELoss

    net = nets.seg_source
    loss_fn = DiceCELoss(softmax=True)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
    x_all, y_all = samples["x"], samples["y"]
    dev = _device(net)
    elastic = settings.augment in ("elastic", "both")
    val = [data.labelled[s] for s in data.val if data.labelled[s].y is not None]

    def step(i: int) -> dict[str, float]:
        idx = torch.randint(0, len(x_all), (2,), generator=generator)
        x, y = x_all[idx].to(dev), y_all[idx].to(dev)
        if elastic:
            # A random translation too: otherwise the U-Net learns where the labels
            # usually are (a few subjects), not what they look like.
            shape = x.shape[2:]
            u = (
                random_deformation(
                    shape, settings.elastic_voxels, generator, affine=0.03, shift=0.08 * shape[0]
                )
                .to(dev)
                .expand(len(idx), -1, *shape)
            )
            x, y = _deform(x, u), _deform(y, u)
        if float(torch.rand((), generator=generator)) < settings.contrast:
            x = random_contrast(x, generator)
        loss = loss_fn(net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return {"loss": float(loss.detach())}

    def validate() -> dict[str, float]:
        if not val:
            return {"score": 0.0}
        scores = [
            float(soft_dice(_onehot_pred(net(s.x.to(dev))), s.y.to(dev)))
            for s in val
            if s.y is not None
        ]
        return {"score": float(np.mean(scores)), "val_dice": float(np.mean(scores))}

    return _fit(
        net,
        optimiser,
        step,
        validate,
        stage=2,
        settings=settings,
        out=out,
        fingerprint=fingerprint,
        generator=generator,
        progress=progress,
    )


def _onehot_pred(logits: torch.Tensor) -> torch.Tensor:
    """Hard one-hot of a prediction (for Dice as the evaluation measures it)."""
    k = logits.shape[1]
    return F.one_hot(logits.argmax(1), k).movedim(-1, 1).float()


# ---------------------------------------------------------------- stage 3


class _Adapt(torch.nn.Module):
    """The trainable part of stage 3 (generators, discriminators, S_T)."""

    def __init__(self, nets: SegGuidedNets) -> None:
        super().__init__()
        self.gen_st, self.gen_ts = nets.gen_st, nets.gen_ts
        self.disc_source, self.disc_target = nets.disc_source, nets.disc_target
        self.seg_target = nets.seg_target


def stage_adapt(
    nets: SegGuidedNets,
    samples: Mapping[str, torch.Tensor],
    data: Data,
    settings: SegGuidedTrainSettings,
    *,
    out: Path,
    fingerprint: str,
    generator: torch.Generator,
    progress: bool,
) -> dict[str, Any]:
    """CycleGAN with semantic consistency; S_T starts from S_S, S_S stays frozen."""
    nets.seg_target.load_state_dict(nets.seg_source.state_dict())
    for p in nets.seg_source.parameters():
        p.requires_grad_(False)
    nets.seg_source.eval()
    module = _Adapt(nets)
    g_params = [
        *nets.gen_st.parameters(),
        *nets.gen_ts.parameters(),
        *nets.seg_target.parameters(),
    ]
    d_params = [*nets.disc_source.parameters(), *nets.disc_target.parameters()]
    optimiser = torch.optim.Adam(
        [{"params": g_params}, {"params": d_params}], lr=settings.lr / 5, betas=(0.5, 0.999)
    )
    x_s, y_s = samples["x"], samples["y"]
    targets = torch.cat([data.other[s].x for s in data.train])
    dev = _device(nets)
    size = min(settings.patch or max(32, data.config.shape[0] // 2), data.config.shape[0])
    s = settings

    def step(i: int) -> dict[str, float]:
        a = int(torch.randint(0, len(x_s), (1,), generator=generator))
        b = int(torch.randint(0, len(targets), (1,), generator=generator))
        xs, ys = (t.to(dev) for t in _crop([x_s[a : a + 1], y_s[a : a + 1]], size, generator))
        xt = _crop([targets[b : b + 1]], size, generator)[0].to(dev)
        fake_t, fake_s = nets.gen_st(xs), nets.gen_ts(xt)
        # generators and S_T
        for p in d_params:
            p.requires_grad_(False)
        gan = lsgan(nets.disc_target(fake_t), True) + lsgan(nets.disc_source(fake_s), True)
        cycle = (nets.gen_ts(fake_t) - xs).abs().mean() + (nets.gen_st(fake_s) - xt).abs().mean()
        # Semantic consistency (1 - Dice), with S_S frozen: S_S, trained on random synthetic
        # contrasts, must find the source labels in the translated source images and the
        # same structures in target images before and after translation, so the
        # generators change the look, never the anatomy's place. S_T learns the source
        # labels on the translated images and S_S's reading of target images translated
        # back; neither S_T term trains the generators.
        with torch.no_grad():
            p_t_source = torch.softmax(nets.seg_source(xt), 1)
        sem_g = (1.0 - soft_dice(torch.softmax(nets.seg_source(fake_t), 1), ys)) + (
            1.0 - soft_dice(torch.softmax(nets.seg_source(fake_s), 1), p_t_source)
        )
        p_back = torch.softmax(nets.seg_source(fake_s.detach()), 1).detach()
        sem_t = (1.0 - soft_dice(torch.softmax(nets.seg_target(fake_t.detach()), 1), ys)) + (
            1.0 - soft_dice(torch.softmax(nets.seg_target(xt), 1), p_back)
        )
        loss_g = s.lambda_gan * gan + s.lambda_cycle * cycle + s.lambda_sem * (sem_t + sem_g)
        optimiser.zero_grad(set_to_none=True)
        loss_g.backward()
        optimiser.step()
        # discriminators
        for p in d_params:
            p.requires_grad_(True)
        loss_d = 0.5 * (
            lsgan(nets.disc_target(xt), True)
            + lsgan(nets.disc_target(fake_t.detach()), False)
            + lsgan(nets.disc_source(xs), True)
            + lsgan(nets.disc_source(fake_s.detach()), False)
        )
        optimiser.zero_grad(set_to_none=True)
        loss_d.backward()
        for p in g_params:  # only the discriminators move in this half-step
            p.grad = None
        optimiser.step()
        return {
            "gan": float(gan.detach()),
            "cycle": float(cycle.detach()),
            "sem_t": float(sem_t.detach()),
            "sem_g": float(sem_g.detach()),
            "disc": float(loss_d.detach()),
        }

    val_targets = [data.other[v].x.to(dev) for v in data.val] or [targets[:1].to(dev)]

    def validate() -> dict[str, float]:
        # No label of the target modality may be used: the score is the agreement of S_T
        # with frozen S_S on target images translated back to the source look.
        agree = [
            float(
                soft_dice(
                    _onehot_pred(nets.seg_target(x)), _onehot_pred(nets.seg_source(nets.gen_ts(x)))
                )
            )
            for x in val_targets
        ]
        return {"score": float(np.mean(agree)), "val_agreement": float(np.mean(agree))}

    return _fit(
        module,
        optimiser,
        step,
        validate,
        stage=3,
        settings=settings,
        out=out,
        fingerprint=fingerprint,
        generator=generator,
        progress=progress,
    )


# ---------------------------------------------------------------- stage 4


def _pair_probabilities(
    nets: SegGuidedNets, data: Data, subjects: Sequence[str], settings: SegGuidedTrainSettings
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each subject's (fixed, moving) class probabilities on the fixed working grid, the
    moving image pre-aligned with ``prealign`` first (as the chain does at test time)."""
    from mmreg.imaging.transform import Transform
    from mmreg.methods import get_method
    from mmreg.methods.segguided.register import probabilities

    config = data.config
    out = []
    for subject in subjects:
        lab, oth = data.labelled[subject].image, data.other[subject].image
        fixed, moving = (lab, oth) if config.labelled_side == "fixed" else (oth, lab)
        if settings.prealign and settings.prealign != "none":
            start = get_method(settings.prealign).register(fixed, moving, seed=settings.seed)
            transform = start.transform
        else:
            transform = Transform.identity(fixed.ndim)
        grid = working_grid(fixed.grid, config.shape, config.spacing)
        resampled = transform.apply(moving, grid)
        p_f = probabilities(nets, onto(fixed, grid).data, fixed_side=True)
        p_m = probabilities(nets, resampled.data, fixed_side=False)
        out.append((p_f, p_m))
    return out


def stage_register(
    nets: SegGuidedNets,
    data: Data,
    settings: SegGuidedTrainSettings,
    *,
    out: Path,
    fingerprint: str,
    generator: torch.Generator,
    progress: bool,
) -> dict[str, Any]:
    """Train the registration U-Net on predicted segmentations (Dice both ways + GradICON)."""
    from mmreg.methods.features.register import folding_percent
    from mmreg.methods.segguided.register import predict_field

    started = time.perf_counter()
    nets.eval()
    with torch.no_grad():
        train_pairs = _pair_probabilities(nets, data, data.train, settings)
        val_pairs = _pair_probabilities(nets, data, data.val, settings)
    LOG.info(
        "stage 4: %d training and %d validation pair(s) pre-aligned with %s in %.0f s",
        len(train_pairs),
        len(val_pairs),
        settings.prealign,
        time.perf_counter() - started,
    )
    net = nets.reg
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
    fixed_all = [p for p, _ in train_pairs]
    moving_all = [m for _, m in train_pairs]
    n = len(train_pairs)

    def step(i: int) -> dict[str, float]:
        a = int(torch.randint(0, n, (1,), generator=generator))
        # Half of the steps pair a subject's fixed image with another subject's moving one.
        cross = n > 1 and float(torch.rand((), generator=generator)) < 0.5
        b = (a + 1 + int(torch.randint(0, n - 1, (1,), generator=generator))) % n if cross else a
        p_a, p_b = fixed_all[a], moving_all[b]
        u = random_deformation(p_b.shape[2:], settings.elastic_voxels, generator, affine=0.03)
        u = u.to(p_b.device)
        p_b = _deform(p_b, u)
        u_ab = net(torch.cat([p_a, p_b], 1))
        u_ba = net(torch.cat([p_b, p_a], 1))
        dice = 0.5 * (
            (1 - soft_dice(_deform(p_b, u_ab), p_a)) + (1 - soft_dice(_deform(p_a, u_ba), p_b))
        )
        reg = gradicon_penalty(u_ab, u_ba)
        loss = dice + settings.lambda_gradicon * reg
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return {
            "loss": float(loss.detach()),
            "dice": float(dice.detach()),
            "gradicon": float(reg.detach()),
        }

    def validate() -> dict[str, float]:
        pairs = val_pairs or train_pairs[:1]
        scores, folds = [], []
        for p_f, p_m in pairs:
            u = predict_field(net, p_f, p_m)
            scores.append(float(soft_dice(_onehot_pred(_deform(p_m, u)), _onehot_pred(p_f))))
            folds.append(folding_percent(u))
        return {
            "score": float(np.mean(scores)),
            "val_dice": float(np.mean(scores)),
            "val_folding_pct": float(np.mean(folds)),
        }

    return _fit(
        net,
        optimiser,
        step,
        validate,
        stage=4,
        settings=settings,
        out=out,
        fingerprint=fingerprint,
        generator=generator,
        progress=progress,
    )


# ---------------------------------------------------------------- the command


def train_segguided(
    pairs: Sequence[Mapping[str, Any]],
    *,
    out: Path,
    settings: SegGuidedTrainSettings | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """``mmreg train segguided`` entry point: BIDS pair records -> checkpoint file."""
    import platform

    from mmreg.models import save_checkpoint
    from mmreg.training import SEED_PROTOCOL, seed_everything

    settings = settings or SegGuidedTrainSettings()
    started = time.perf_counter()
    generator = seed_everything(settings.seed)
    data = load_data(pairs, settings)
    nets = SegGuidedNets(data.config).to(torch.device(device))
    forced = settings.stage_numbers()
    times: dict[str, float] = {}
    histories: dict[str, Any] = {}
    redo = False  # a rerun stage invalidates the ones after it
    samples: Any = None
    for number, name in enumerate(STAGES, start=1):
        fingerprint = _fingerprint(data, settings, number)
        path = _stage_path(out, number)
        saved = None if (number in forced or redo) else _load_stage(path, fingerprint)
        began = time.perf_counter()
        if saved is not None:
            LOG.info("stage %d (%s): reusing %s", number, name, path)
        else:
            redo = True
            generator = seed_everything(settings.seed + number)
            if number == 1:
                saved = stage_augment(data, settings, progress)
            else:
                # The training stages: the same data, settings and run context each.
                stage: Callable[..., dict[str, Any]] = {
                    2: functools.partial(stage_source, nets, samples),
                    3: functools.partial(stage_adapt, nets, samples),
                    4: functools.partial(stage_register, nets),
                }[number]
                saved = stage(
                    data,
                    settings,
                    out=out,
                    fingerprint=fingerprint,
                    generator=generator,
                    progress=progress,
                )
            saved["wall_time_s"] = round(time.perf_counter() - began, 1)
            _save_stage(path, fingerprint, saved)
        if number == 1:
            samples = saved
        elif number == 2:
            nets.seg_source.load_state_dict(saved["state"])
        elif number == 3:
            _Adapt(nets).load_state_dict(saved["state"])
        else:
            nets.reg.load_state_dict(saved["state"])
        times[name] = float(saved.get("wall_time_s", 0.0))
        histories[name] = saved.get("history", [])
        LOG.info("stage %d (%s) took %.0f s", number, name, times[name])
    nets = nets.to("cpu").eval()
    metadata = {
        "training": {
            "stage_wall_time_s": times,
            "history": histories,
            "wall_time_s": round(time.perf_counter() - started, 1),
            "device": device,
            "settings": asdict(settings),
            "seed": settings.seed,
            "seed_protocol": SEED_PROTOCOL,
            "torch_version": str(torch.__version__),
            "python_version": platform.python_version(),
            "parameters": sum(p.numel() for p in nets.parameters()),
            "training_data": {
                "bids_dirs": sorted({str(p.get("bids_dir")) for p in pairs if p.get("bids_dir")}),
                "samples": len(samples["x"]) if samples else 0,
                **data.info,
            },
        }
    }
    save_checkpoint(
        out,
        method=FAMILY,
        config=data.config.to_dict(),
        state_dict=nets.state_dict(),
        metadata=metadata,
    )
    LOG.info("segguided stage times: %s", ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    return out
