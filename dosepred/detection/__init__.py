"""BLC zero-shot detection of the structures in axial CT slices (supporting module): cascade semantic R-CNN + BLRPN."""
