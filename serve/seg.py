"""A segmentation result as a DICOM SEG object (highdicom) that references its source CT slices.

The mask is given in the series' own slice order (``Volume.meta["sop_uids"]``), so each SEG frame
points at the CT instance it was computed on; PACS viewers overlay it on the study.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

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
    uid_root: str | None = None,
    uids_from: Sequence[str] = (),
) -> bytes:
    """Encode ``masks`` (bool ``(n_labels, D, H, W)``, slice d computed on ``sources[d]``).

    New UIDs start with ``uid_root`` (the organisation's; pydicom's when None). With ``uids_from``
    they are derived from those strings (the model and the source instances), so processing the
    same study again gives the same SEG UIDs and a PACS stores the result once.

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
        series_instance_uid=_uid(uid_root, uids_from, "seg-series"),
        series_number=900,
        sop_instance_uid=_uid(uid_root, uids_from, "seg-instance"),
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


def _uid(root: str | None, sources: Sequence[str], role: str) -> hd.UID:
    entropy = [*sources, role] if sources else None
    return hd.UID(generate_uid(prefix=root or "1.2.826.0.1.3680043.8.498.", entropy_srcs=entropy))
