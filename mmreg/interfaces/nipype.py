"""Nipype 1.x interfaces: mmreg as a node of an fMRIPrep-style Nipype workflow.

Two interfaces, written like ``nipype.interfaces.ants.Registration`` and
``ApplyTransforms``, that call the library behind ``mmreg register``
(:func:`mmreg.single.register_files`, :func:`mmreg.single.apply_transform_file`): the
same preprocessing, methods, models and one-line errors as the BIDS-App.

- :class:`Register`: register ``moving_image`` onto ``fixed_image`` with any method or
  ``A+B`` chain; writes ``<out_prefix>_xfm.txt`` (linear) or ``<out_prefix>_xfm.h5``
  (deformable), an ITK transform mapping fixed points to moving points (as ANTs' do), and
  ``<out_prefix>_warped.nii.gz`` (plus ``<out_prefix>_warped_labels.nii.gz`` with
  ``moving_labels``) in the node's working directory.
- :class:`ApplyTransform`: resample an image, or a label map (``interpolation="nearest"``),
  onto a reference grid through a transform written by :class:`Register`.

An unknown method name is rejected when the input is set (a ``TraitError`` carrying
mmreg's one-line message); everything else mmreg rejects at run time
(:class:`mmreg.errors.MmregError`, one line) fails the node with that message.

Example (builds the graph only; ``wf.run()`` runs it):
    >>> from nipype import Node, Workflow
    >>> from nipype.interfaces.utility import IdentityInterface
    >>> from mmreg.interfaces.nipype import ApplyTransform, Register
    >>> inputnode = Node(IdentityInterface(fields=["t1w", "t2w", "t2w_dseg"]), "inputnode")
    >>> reg = Node(Register(method="sitk-rigid + ants-syn", seed=0), "t2w2t1w", n_procs=4)
    >>> reg.inputs.method, reg.inputs.num_threads  # normalised spec; threads from n_procs
    ('sitk-rigid+ants-syn', 4)
    >>> dseg = Node(ApplyTransform(interpolation="nearest"), "dseg2t1w")
    >>> wf = Workflow(name="t2w_to_t1w")
    >>> wf.connect([
    ...     (inputnode, reg, [("t1w", "fixed_image"), ("t2w", "moving_image")]),
    ...     (inputnode, dseg, [("t1w", "reference_image"), ("t2w_dseg", "input_image")]),
    ...     (reg, dseg, [("transform", "transform")]),
    ... ])
    >>> sorted(wf.list_node_names())
    ['dseg2t1w', 'inputnode', 't2w2t1w']
"""

from __future__ import annotations

import os
from typing import Any

try:
    from nipype.interfaces.base import (
        BaseInterfaceInputSpec,
        File,
        SimpleInterface,
        TraitedSpec,
        isdefined,
        traits,
    )
    from nipype.utils.filemanip import split_filename
    from traits.api import TraitError
except ImportError as exc:  # nipype is an optional extra
    raise ImportError(
        f"mmreg.interfaces.nipype needs Nipype ({exc}); install it with "
        "pip install 'mmreg[nipype]'"
    ) from exc

from mmreg.errors import MmregError, UsageError
from mmreg.imaging.preprocess import DEFAULT_PREALIGN, DEFAULT_SPACING, PREALIGN_MODES
from mmreg.methods import model_families, parse_methods
from mmreg.runtime import DEVICES
from mmreg.single import apply_transform_file, register_files

__all__ = ["ApplyTransform", "Register"]

#: ``device`` choices, as ``mmreg register --device``.


class MethodSpec(traits.BaseStr):
    """A method or ``A+B`` chain, checked against mmreg's registry when it is set.

    Checking here (a dictionary look-up, no import of torch or ANTs) fails a workflow
    when it is built rather than after the nodes upstream of the registration have run.
    The value is stored normalised (``"a + b"`` -> ``"a+b"``), so spacing does not change
    a node's hash.
    """

    info_text = "an mmreg method or A+B chain, e.g. 'sitk-rigid' or 'sitk-rigid+ants-syn'"

    def validate(self, obj: Any, name: str, value: Any) -> str:
        value = super().validate(obj, name, value)
        try:
            specs = parse_methods([value])
        except MmregError as exc:
            raise TraitError(str(exc)) from None
        if len(specs) != 1:
            raise TraitError(f"method takes one method or A+B chain, not a list: {value!r}")
        return specs[0]


class RegisterInputSpec(BaseInterfaceInputSpec):
    fixed_image = File(exists=True, mandatory=True, desc="fixed image (NIfTI)")
    moving_image = File(exists=True, mandatory=True, desc="moving image (NIfTI)")
    method = MethodSpec(
        mandatory=True,
        desc="one method or A+B chain, as mmreg's --method (e.g. sitk-rigid, "
        "keymorph-affine+ants-syn, keymorph-tps:lambda=0.1)",
    )
    moving_labels = File(
        exists=True,
        desc="label map on the moving image's grid, also warped (nearest neighbour)",
    )
    model = traits.Dict(
        traits.Str,
        File(exists=True),
        desc="weights per learned model family, e.g. {'keymorph': '/w/km.pt'} (as mmreg's "
        "--model FAMILY=PATH); families not given use the shipped weights",
    )
    seed = traits.Range(low=0, value=0, usedefault=True, desc="seed of the method")
    # Named as nipype's convention, so Node(n_procs=N) sets it and MultiProc schedules it;
    # threads do not change results beyond ITK's ordering, hence not hashed (as ANTs').
    num_threads = traits.Range(
        low=1,
        value=1,
        usedefault=True,
        nohash=True,
        desc="threads (ITK, torch); 1 keeps results bit-reproducible",
    )
    resolution = traits.Range(
        low=0.0,
        exclude_low=True,
        value=DEFAULT_SPACING,
        usedefault=True,
        desc="isotropic working resolution, mm (as mmreg's --resolution)",
    )
    prealign = traits.Enum(
        DEFAULT_PREALIGN,
        *[mode for mode in PREALIGN_MODES if mode != DEFAULT_PREALIGN],
        usedefault=True,
        desc="initial alignment (as mmreg's --prealign)",
    )
    mask = traits.Bool(False, usedefault=True, desc="restrict registration to a foreground mask")
    device = traits.Enum(*DEVICES, usedefault=True, desc="device of learned methods")
    out_prefix = traits.Str(
        "mmreg", usedefault=True, desc="prefix of the output files (in the working directory)"
    )


class RegisterOutputSpec(TraitedSpec):
    transform = File(
        exists=True, desc="ITK transform, fixed points to moving points (.txt linear, .h5 else)"
    )
    warped_image = File(exists=True, desc="the moving image on the fixed image's grid")
    warped_labels = File(exists=True, desc="moving_labels on the fixed grid (nearest)")
    runtime = traits.Float(desc="seconds the method took (preprocessing excluded)")


class Register(SimpleInterface):
    """Register ``moving_image`` onto ``fixed_image`` with an mmreg method or chain.

    The node's ``transform`` maps fixed-image points to moving-image points (ITK/ANTs
    convention), so it feeds :class:`ApplyTransform` (or ANTs' ``ApplyTransforms``) to
    bring moving-space images onto the fixed grid.
    """

    input_spec = RegisterInputSpec
    output_spec = RegisterOutputSpec

    def _run_interface(self, runtime: Any) -> Any:
        method = self.inputs.method
        models = dict(self.inputs.model) if isdefined(self.inputs.model) else {}
        # As the CLI's --model: weights for a family the method does not use are a mistake.
        families = model_families([method])
        for family in models:
            if family not in families:
                raise UsageError(
                    f"model: {method} uses no {family!r} weights "
                    f"(learned families in the method: {', '.join(families) or 'none'})"
                )
        labels = self.inputs.moving_labels if isdefined(self.inputs.moving_labels) else None
        # BaseInterface.run has changed into the node's working directory.
        result = register_files(
            self.inputs.fixed_image,
            self.inputs.moving_image,
            method,
            os.path.join(os.getcwd(), self.inputs.out_prefix),
            moving_labels=labels,
            spacing=self.inputs.resolution,
            prealign=self.inputs.prealign,
            mask=self.inputs.mask,
            seed=self.inputs.seed,
            device=self.inputs.device,
            threads=self.inputs.num_threads,
            models=models,
        )
        self._results["transform"] = str(result.transform)
        self._results["warped_image"] = str(result.warped)
        if result.warped_labels is not None:
            self._results["warped_labels"] = str(result.warped_labels)
        self._results["runtime"] = float(result.runtime_s)
        return runtime


class ApplyTransformInputSpec(BaseInterfaceInputSpec):
    input_image = File(
        exists=True, mandatory=True, desc="image or label map on the moving image's side"
    )
    reference_image = File(
        exists=True, mandatory=True, desc="image whose grid the output takes (the fixed image)"
    )
    transform = File(
        exists=True,
        mandatory=True,
        desc="mmreg/ITK transform file (fixed to moving points), as Register writes",
    )
    interpolation = traits.Enum(
        "linear",
        "nearest",
        usedefault=True,
        desc="linear (float32 output) or nearest (label maps: integer output)",
    )
    out_file = traits.Str(
        desc="output file name (default: <input>_trans<ext> in the working directory)"
    )


class ApplyTransformOutputSpec(TraitedSpec):
    output_image = File(exists=True, desc="input_image on reference_image's grid")


class ApplyTransform(SimpleInterface):
    """Resample ``input_image`` onto ``reference_image``'s grid through ``transform``."""

    input_spec = ApplyTransformInputSpec
    output_spec = ApplyTransformOutputSpec

    def _out_path(self) -> str:
        if isdefined(self.inputs.out_file):
            return os.path.abspath(self.inputs.out_file)
        # As ANTs' ApplyTransforms names its default output.
        _, base, ext = split_filename(self.inputs.input_image)
        return os.path.join(os.getcwd(), f"{base}_trans{ext}")

    def _run_interface(self, runtime: Any) -> Any:
        written = apply_transform_file(
            self.inputs.transform,
            self.inputs.input_image,
            self.inputs.reference_image,
            self._out_path(),
            labels=self.inputs.interpolation == "nearest",
        )
        self._results["output_image"] = str(written)
        return runtime
