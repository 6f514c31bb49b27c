"""Static figures for the group report: metric box plots and alignment overlays.

Everything here draws on a bare :class:`matplotlib.figure.Figure` with the Agg
canvas, never through ``pyplot``: no global figure registry to leak memory
across hundreds of figures, no display needed, and safe to call from worker
threads. Every public function returns PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image as PILImage

from mmreg.imaging.display import (
    PLANES,
    canonical,
    checkerboard,
    edge_map,
    plane_slices,
    resample_to,
    robust_normalise,
)
from mmreg.imaging.image import Image

#: Resolution of every PNG: small files, still legible in a browser.
DPI = 90

#: The eight bytes every PNG file starts with.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Columns that identify a registration pair (one initial value per pair).
PAIR_KEYS = ("subject", "session", "fixed", "moving")

#: Colour of the values before registration.
INITIAL_COLOUR = "#9e9e9e"
_METHOD_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)


def method_colour(index: int) -> str:
    """The colour of the ``index``-th method (ten colours, cycling)."""
    return _METHOD_COLOURS[index % len(_METHOD_COLOURS)]


def to_png(fig: Figure, *, dpi: int = DPI, palette: bool = False) -> bytes:
    """Render ``fig`` to PNG bytes.

    The ``Software`` metadata is dropped so that the bytes do not depend on
    the installed matplotlib version.

    Args:
        fig: The figure.
        dpi: Resolution.
        palette: Store as 8-bit palette PNG (256 colours): image panels of
            grey values plus one overlay colour lose nothing visible and the
            file is about half the size, which matters with hundreds of
            figures embedded in one report.
    """
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    if not palette:
        return buf.getvalue()
    rgb = PILImage.open(io.BytesIO(buf.getvalue())).convert("RGB")
    quantised = rgb.quantize(
        colors=256, method=PILImage.Quantize.MEDIANCUT, dither=PILImage.Dither.NONE
    )
    out = io.BytesIO()
    quantised.save(out, format="PNG", optimize=True)
    return out.getvalue()


def initial_column(df: pd.DataFrame, column: str) -> str | None:
    """The ``initial_*`` column matching ``column`` (before registration), if any."""
    name = f"initial_{column}"
    return name if name in df.columns else None


def _finite(values: pd.Series | npt.ArrayLike) -> npt.NDArray[np.float64]:
    arr = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    return arr[np.isfinite(arr)]


def _ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    if "status" not in df.columns:
        return df
    return df[df["status"].astype(str) == "ok"]


def boxplot_by_method(
    df: pd.DataFrame,
    column: str,
    *,
    title: str | None = None,
    ylabel: str | None = None,
    initial: str | None = None,
    logscale: bool = False,
    dpi: int = DPI,
) -> bytes:
    """One box per method (successful rows only), the individual values on top.

    Where an ``initial_<column>`` column exists, a grey "initial" box of the
    values before registration comes first. Initial values are taken once per
    pair (they are repeated on every method's row). With several fixed/moving
    pairs in ``df``, boxes are grouped per pair.

    Args:
        df: Evaluation rows with at least ``method`` and ``column``.
        column: Metric to plot, e.g. ``"dice_mean"``.
        title: Axes title; defaults to ``column``.
        ylabel: Y-axis label; defaults to ``column``.
        initial: Column of the values before registration; defaults to
            ``initial_<column>`` when present. Pass ``""`` to leave it out.
        logscale: Logarithmic y axis (for runtimes spanning orders of magnitude);
            ignored unless all values are positive.
        dpi: PNG resolution.

    Returns:
        PNG bytes. A metric without any finite value gives a figure that says so.
    """
    initial = initial_column(df, column) if initial is None else (initial or None)
    groups: list[tuple[str, npt.NDArray[np.float64], str]] = []
    ok = _ok_rows(df)
    pair_cols = [c for c in ("fixed", "moving") if c in df.columns]
    pairs = sorted(df.groupby(pair_cols, sort=True).groups) if pair_cols else [()]
    several = len(pairs) > 1
    for pair in pairs:
        pair = pair if isinstance(pair, tuple) else (pair,)
        mask_all = np.ones(len(df), dtype=bool)
        for col, val in zip(pair_cols, pair, strict=False):
            mask_all &= (df[col] == val).to_numpy()
        sub_all = df[mask_all]
        sub_ok = ok[ok.index.isin(sub_all.index)]
        suffix = f"\n{pair[1]}→{pair[0]}" if several and len(pair) == 2 else ""
        if initial and initial in sub_all.columns:
            keys = [k for k in PAIR_KEYS if k in sub_all.columns]
            once = sub_all.drop_duplicates(subset=keys) if keys else sub_all
            values = _finite(once[initial])
            if values.size:
                groups.append((f"initial{suffix}", values, INITIAL_COLOUR))
        methods = sorted(sub_all["method"].astype(str).unique()) if len(sub_all) else []
        for i, method in enumerate(methods):
            values = (
                _finite(sub_ok.loc[sub_ok["method"].astype(str) == method, column])
                if column in sub_ok.columns
                else np.empty(0)
            )
            groups.append((f"{method}{suffix}", values, method_colour(i)))

    return boxplot_groups(
        groups, title=title or column, ylabel=ylabel or column, logscale=logscale, dpi=dpi
    )


def boxplot_groups(
    groups: Sequence[tuple[str, npt.ArrayLike, str]],
    *,
    title: str,
    ylabel: str,
    logscale: bool = False,
    dpi: int = DPI,
) -> bytes:
    """Boxes with the individual values jittered on top, one per ``(label, values, colour)``.

    A group without values keeps its place, labelled "(no data)". ``logscale`` is
    ignored unless all values are positive.

    Returns:
        PNG bytes. Groups without any finite value give a figure that says so.
    """
    finite = [(label, _finite(values), colour) for label, values, colour in groups]
    width = min(11.0, max(4.0, 1.0 + 0.9 * len(finite)))
    fig = Figure(figsize=(width, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=9)
    if not any(v.size for _, v, _ in finite):
        ax.text(
            0.5,
            0.5,
            "no finite values",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="#666666",
        )
        ax.set_xticks([])
        ax.set_yticks([])
        fig.tight_layout()
        return to_png(fig, dpi=dpi)

    # A fixed seed: the jitter of the points is part of the figure's bytes.
    rng = np.random.default_rng(0)
    for pos, (_, values, colour) in enumerate(finite, start=1):
        if not values.size:
            continue
        ax.boxplot(
            [values],
            positions=[pos],
            widths=0.55,
            showfliers=False,
            patch_artist=True,
            boxprops={"facecolor": colour, "alpha": 0.35, "edgecolor": colour},
            medianprops={"color": "black"},
            whiskerprops={"color": colour},
            capprops={"color": colour},
        )
        jitter = rng.uniform(-0.12, 0.12, size=values.size)
        ax.scatter(
            pos + jitter, values, s=10, color=colour, edgecolors="none", alpha=0.9, zorder=3
        )
    labels = [label if values.size else f"{label}\n(no data)" for label, values, _ in finite]
    ax.set_xticks(range(1, len(finite) + 1))
    # About 12 characters of 8-pt text fit per inch: slanted labels when one would not fit
    # its slot, so neighbours never overlap.
    longest = max(len(line) for label in labels for line in label.split("\n"))
    slanted = longest > 12.0 * width / len(finite) * 0.9
    ax.set_xticklabels(
        labels, fontsize=8, rotation=30 if slanted else 0, ha="right" if slanted else "center"
    )
    ax.set_xlim(0.4, len(finite) + 0.6)
    everything = np.concatenate([v for _, v, _ in finite if v.size])
    if logscale and np.all(everything > 0):
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return to_png(fig, dpi=dpi)


# --- alignment overlays ---------------------------------------------------------------------


def _show_grey(ax: Any, slice2d: npt.NDArray, extent: tuple[float, float, float, float]) -> None:
    """A normalised slice, (h, v) indexed, in grey with the display conventions of the report."""
    ax.imshow(
        slice2d.T,
        cmap="gray",
        origin="lower",
        extent=extent,
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )


def flicker_frames(fixed: Image, warped: Image, *, dpi: int = DPI) -> tuple[bytes, bytes]:
    """Two PNGs of identical geometry, the fixed and the warped image's mid slices.

    Shown one on top of the other and alternated (the report's before/after toggle, as
    fMRIPrep's flickering SVGs), misalignment is seen as motion. Three orthogonal planes
    (one for 2D) in one row, large enough to judge, with the fixed image's edges on both.
    """
    warped = resample_to(warped, fixed)
    f3, spacing = canonical(robust_normalise(fixed.data), fixed.affine)
    m3, _ = canonical(robust_normalise(warped.data), fixed.affine)
    planes = plane_slices(f3, m3, spacing)
    frames = []
    for which in (1, 2):
        fig = Figure(figsize=(3.6 * len(planes), 3.8))
        for col, (name, f2, m2, (width, height)) in enumerate(planes):
            ax = fig.add_subplot(1, len(planes), col + 1)
            extent = (0.0, width, 0.0, height)
            _show_grey(ax, f2 if which == 1 else m2, extent)
            # The fixed image's edges on both frames: a fixed frame of reference.
            edges = edge_map(f2)
            rgba = np.zeros((*edges.T.shape, 4), dtype=np.float32)
            rgba[..., 1], rgba[..., 2] = 0.8, 1.0
            rgba[..., 3] = edges.T * 0.6
            ax.imshow(rgba, origin="lower", extent=extent, interpolation="nearest")
            ax.set_title(f"{name}: {'fixed' if which == 1 else 'warped moving'}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        frames.append(to_png(fig, dpi=dpi, palette=True))
    return frames[0], frames[1]


def overlay_figure(
    fixed: Image,
    warped: Image,
    *,
    title: str | None = None,
    tiles: int = 8,
    dpi: int = DPI,
) -> bytes:
    """Fixed image with the warped image's edges, and a fixed/warped checkerboard.

    Three orthogonal mid slices (axial, coronal, sagittal, in RAS display
    orientation: subject's right on the right, anterior/superior up) for a 3D
    image, the image's one plane for 2D. Top row: the fixed image in grey
    with the strongest edges of the warped moving image in colour. Bottom
    row: a checkerboard alternating the fixed and the warped image. Each
    image's intensities are normalised between its 1st and 99th percentiles.

    Args:
        fixed: The fixed (reference) image.
        warped: The moving image after registration; resampled onto the fixed
            grid first if it is not already on it.
        title: Figure title.
        tiles: Checkerboard squares along each side.
        dpi: PNG resolution.

    Returns:
        PNG bytes.

    Raises:
        ValueError: If the images differ in dimensionality.
    """
    warped = resample_to(warped, fixed)
    f3, spacing = canonical(robust_normalise(fixed.data), fixed.affine)
    m3, _ = canonical(robust_normalise(warped.data), fixed.affine)
    planes = plane_slices(f3, m3, spacing)
    ncol = len(planes)
    fig = Figure(figsize=(2.3 * ncol + 0.2, 4.9))
    for col, (name, f2, m2, (width, height)) in enumerate(planes):
        extent = (0.0, width, 0.0, height)
        top = fig.add_subplot(2, ncol, col + 1)
        _show_grey(top, f2, extent)
        edges = edge_map(m2)
        rgba = np.zeros((*edges.T.shape, 4), dtype=np.float32)
        rgba[..., 0], rgba[..., 1], rgba[..., 2] = 1.0, 0.25, 0.1
        rgba[..., 3] = edges.T
        top.imshow(rgba, origin="lower", extent=extent, interpolation="nearest")
        top.set_title(name if ncol > 1 else "fixed + warped edges", fontsize=8)
        bottom = fig.add_subplot(2, ncol, ncol + col + 1)
        _show_grey(bottom, checkerboard(f2, m2, tiles=tiles), extent)
        if ncol == 1:
            bottom.set_title("checkerboard fixed / warped", fontsize=8)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    if ncol > 1:
        fig.axes[0].set_ylabel("fixed + warped edges", fontsize=8)
        fig.axes[1].set_ylabel("checkerboard", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return to_png(fig, dpi=dpi, palette=True)


def _canonical_points(
    points: npt.ArrayLike, affine: npt.NDArray, shape: tuple[int, ...]
) -> npt.NDArray[np.float64]:
    """World points (RAS mm) -> (N, 3) voxel indices of the reoriented data
    (:func:`~mmreg.imaging.display.canonical`)."""
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))[:, :3]
    shape3 = tuple(shape) if len(shape) == 3 else (*shape, 1)
    ijk = nib.affines.apply_affine(np.linalg.inv(affine), pts)
    ornt = nib.orientations.io_orientation(affine)
    out = np.empty_like(ijk)
    for vox_axis, (world_axis, flip) in enumerate(ornt):
        values = ijk[:, vox_axis]
        if flip < 0:
            values = shape3[vox_axis] - 1 - values
        out[:, int(world_axis)] = values
    return out


def keypoints_figure(
    fixed: Image,
    moving: Image,
    fixed_points: npt.ArrayLike,
    moving_points: npt.ArrayLike,
    *,
    title: str | None = None,
    dpi: int = DPI,
) -> bytes:
    """Keypoints over the fixed (top) and the moving image (bottom), each in its own space.

    Every keypoint is drawn on every plane, projected onto it; its colour is its index, so
    corresponding keypoints of the two images share a colour. Points within 6 mm of the
    displayed slice are drawn large and opaque, the others small and faint.

    Returns:
        PNG bytes.
    """
    from matplotlib import colormaps

    rows = []
    for image, points in ((fixed, fixed_points), (moving, moving_points)):
        data, spacing = canonical(robust_normalise(image.data), image.affine)
        idx = _canonical_points(points, image.affine, image.shape)
        rows.append((data, spacing, idx))
    n_points = len(rows[0][2])
    colours = colormaps["hsv"](np.linspace(0, 1, max(n_points, 1), endpoint=False))
    flat = [axis for axis in range(3) if rows[0][0].shape[axis] == 1]
    planes = [p for p in PLANES if not flat or p[1] == flat[0]]
    fig = Figure(figsize=(2.3 * len(planes) + 0.2, 4.9))
    for r, (data, spacing, idx) in enumerate(rows):
        for c, (name, axis, (h, v)) in enumerate(planes):
            ax = fig.add_subplot(2, len(planes), r * len(planes) + c + 1)
            index = data.shape[axis] // 2
            extent = (0.0, data.shape[h] * spacing[h], 0.0, data.shape[v] * spacing[v])
            _show_grey(ax, np.take(data, index, axis=axis), extent)
            near = np.abs(idx[:, axis] - index) * spacing[axis] <= 6.0
            x, y = (idx[:, h] + 0.5) * spacing[h], (idx[:, v] + 0.5) * spacing[v]
            ax.scatter(x[~near], y[~near], s=4, c=colours[~near], alpha=0.35, linewidths=0)
            ax.scatter(x[near], y[near], s=16, c=colours[near], edgecolors="white", linewidths=0.4)
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and len(planes) > 1:
                ax.set_title(name, fontsize=8)
        fig.axes[r * len(planes)].set_ylabel(("fixed", "moving")[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return to_png(fig, dpi=dpi)
