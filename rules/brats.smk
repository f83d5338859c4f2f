# BraTS 2020 segmentation pipeline: ingest -> N4 -> trim -> stack (HDF5) -> patches -> 3D U-Net -> evaluation.

# >>> brats_prep
# <<< brats_prep

# >>> brats_segmentation
# <<< brats_segmentation
