"""A segmentation result as a DICOM SEG object (highdicom) that references its source CT slices.

The mask is given in the series' own slice order (``Volume.meta["sop_uids"]``), so each SEG frame
points at the CT instance it was computed on; PACS viewers overlay it on the study.
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.coding import Code

# SNOMED CT concepts for the segment descriptions (DICOM PS3.16 CID 7150/7151 style codes)
CATEGORY = Code("49755003", "SCT", "Morphologically abnormal structure")
PROPERTY = {"nodule": Code("27925004", "SCT", "Nodule")}
TISSUE = Code("85756007", "SCT", "Tissue")


def seg_bytes(
    sources: list[Dataset],
    masks: np.ndarray,
    labels: list[str],
    *,
    model_id: str,
    version: str,
) -> bytes:
    """Encode ``masks`` (bool ``(n_labels, D, H, W)``, slice d computed on ``sources[d]``).

    Returns:
        The SEG file's bytes (explicit VR little endian).
    """
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"anatomix {model_id}"[:64],
        version=version,
        family=Code("116291007", "SCT", "Artificial intelligence"),
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=label[:64],
            segmented_property_category=CATEGORY,
            segmented_property_type=PROPERTY.get(label.lower(), TISSUE),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i, label in enumerate(labels)
    ]
    # highdicom wants (frames, rows, cols, segments) for several segments
    pixels = np.moveaxis(masks.astype(np.uint8), 0, -1)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels if len(labels) > 1 else pixels[..., 0],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="anatomix",
        manufacturer_model_name=model_id[:64],
        software_versions=version,
        device_serial_number="0",
        omit_empty_frames=False,
    )
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()
