"""Pydra task: validate and preprocess a pair, and pre-align it."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from fileformats.application import Json

from mmreg.imaging.image import save_channels, save_image
from mmreg.imaging.planar import PlanarPair, dixon_channels
from mmreg.imaging.preprocess import DEFAULT_PREALIGN, DEFAULT_SPACING, PreprocessOptions
from mmreg.pipeline import Failure, load_pair, prepare_loaded
from mmreg.tasks._manifest import Prepared
from mmreg.tasks.define import task


@task(outputs=["prepared"])
def PreparePair(
    pair: dict,
    spacing: float = DEFAULT_SPACING,
    normalize: bool = True,
    mask: bool = False,
    prealign: str = DEFAULT_PREALIGN,
    coronal_slice: bool = False,
    code: str = "",
) -> Json:
    """Validate, reorient, resample and normalise both images; pre-align them.

    Args:
        pair: A :class:`~mmreg.records.PairRecord` as JSON.
        spacing: Isotropic voxel size for registration, mm.
        normalize: Robust intensity normalisation to [0, 1].
        mask: Zero the background outside a foreground mask.
        prealign: ``auto`` (default), ``none``, ``com`` (centre of mass) or ``moments``;
            see :func:`mmreg.imaging.preprocess.prealign`.
        coronal_slice: Register a 2D image to a 3D image's mid-coronal slice.
        code: Code fingerprint; only here so a code change invalidates the cache.

    Returns:
        prepared: Manifest with the preprocessed images and the initial transform,
            or the one-line reason the pair cannot be registered.
    """
    del code
    options = PreprocessOptions(
        spacing=spacing,
        normalize=normalize,
        mask=mask,
        prealign=prealign,
        coronal_slice=coronal_slice,
    )
    start = time.perf_counter()
    # Which pair, and when it began: a person (or a test) reading the work dir can tell.
    manifest = Prepared(pair_id=pair.get("pair_id", ""), started_at=time.time())
    try:
        planar = load_pair(pair["fixed"], pair["moving"], coronal_slice=coronal_slice)
        prepared = prepare_loaded(planar, options)
        midcoronal = _save_slice(planar, pair)
        fixed = save_image(prepared.fixed, Path.cwd() / "fixed_preproc.nii.gz")
        moving = save_image(prepared.moving, Path.cwd() / "moving_preproc.nii.gz")
        channels = {
            side: str(save_channels(image, Path.cwd() / f"{side}_channels.nii.gz"))
            for side, image in (("fixed", prepared.fixed), ("moving", prepared.moving))
            if image.channels is not None
        }
        initial = prepared.initial.write(Path.cwd() / "initial_xfm.txt")
    except Exception as exc:
        return Json(manifest.failed(Failure.from_exception(exc)).write())
    done = replace(
        manifest,
        fixed=str(fixed),
        moving=str(moving),
        initial=str(initial),
        fixed_channels=channels.get("fixed", ""),
        moving_channels=channels.get("moving", ""),
        midcoronal=midcoronal,
        preprocess_s=time.perf_counter() - start,
    )
    return Json(done.write())


def _save_slice(planar: PlanarPair, pair: dict) -> dict:
    """The synthesised mid-coronal slice of a 2D/3D pair's 3D side, as it was before any
    preprocessing (one file per channel, with its source), for the derivatives writer."""
    coronal, side = planar.coronal, planar.sliced
    if coronal is None or side is None:
        return {}
    sources, _ = dixon_channels(pair[side])
    files = [
        {
            "source": str(source),
            "file": str(save_image(image, Path.cwd() / f"midcoronal_{k}.nii.gz")),
        }
        for k, (source, image) in enumerate(zip(sources, coronal.images, strict=False))
    ]
    record = {
        **coronal.path.to_dict(),
        "settings": {
            "size": list(coronal.settings.size),
            "spacing_mm": coronal.settings.spacing_mm,
            "slab_mm": coronal.settings.slab_mm,
        },
    }
    path_file = Path.cwd() / "midcoronal_path.json"
    path_file.write_text(json.dumps(record))
    return {"side": side, "channels": files, "path": str(path_file)}
