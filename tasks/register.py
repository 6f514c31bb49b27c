"""Pydra task: register a preprocessed pair with one method or chain."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fileformats.application import Json

from mmreg.imaging.image import load_channels_into, load_image, save_image
from mmreg.imaging.transform import Transform
from mmreg.models import verified_model_paths
from mmreg.pipeline import Failure, PreparedPair, register
from mmreg.runtime import limit_threads, resolve_device
from mmreg.tasks._manifest import Prepared, Registered
from mmreg.tasks.define import task


@task(outputs=["result"])
def RegisterPair(
    prepared: Json,
    method: str,
    seed: int = 0,
    device: str = "auto",
    threads: int = 1,
    models: dict | None = None,
    code: str = "",
) -> Json:
    """Run ``method`` (``name`` or ``A+B``) on a prepared pair.

    Args:
        prepared: Manifest from :func:`PreparePair`.
        method: Method name or chain, as on the command line.
        seed: Random seed for the method.
        device: ``auto``, ``cpu`` or ``cuda`` (learned methods only).
        threads: Threads this task may use (ITK, torch).
        models: Weights per learned method family, ``{family: {"path", "sha256"}}``;
            the digest is in the cache key, and a file that changed since is refused.
        code: Code fingerprint; only here so a code change invalidates the cache.

    Returns:
        result: Manifest with the fixed-to-moving transform file and runtime.
    """
    del code
    upstream = Prepared.read(prepared.fspath)
    manifest = Registered(
        method=method, midcoronal=upstream.midcoronal, warnings=upstream.warnings
    )
    if not upstream.ok:
        failed = replace(manifest, status="failed", error=upstream.error)
        return Json(replace(failed, traceback=upstream.traceback).write())
    limit_threads(threads)
    try:
        models = verified_model_paths(models or {})
        pair = PreparedPair(
            fixed=load_channels_into(load_image(upstream.fixed), upstream.fixed_channels or None),
            moving=load_channels_into(
                load_image(upstream.moving), upstream.moving_channels or None
            ),
            initial=Transform.read(upstream.initial),
        )
        result = register(
            pair,
            method,
            seed=seed,
            device=resolve_device(device),
            threads=threads,
            models=models,
        )
        suffix = ".txt" if result.transform.is_linear else ".h5"
        xfm = result.transform.write(Path.cwd() / f"xfm{suffix}")
        # Segmentations a method predicted (segguided), each on its own image's grid.
        label_maps = {
            side: str(save_image(image, Path.cwd() / f"dseg_{side}.nii.gz"))
            for side, image in result.label_maps.items()
        }
    except Exception as exc:
        return Json(manifest.failed(Failure.from_exception(exc)).write())
    done = replace(
        manifest,
        transform=str(xfm),
        runtime_s=result.runtime_s,
        extras=result.extras,
        label_maps=label_maps,
    )
    return Json(done.write())
