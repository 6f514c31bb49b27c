"""KeyMorph: learned keypoints with closed-form affine and thin-plate-spline fits."""
