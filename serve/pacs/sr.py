"""Chest radiograph classification results as a DICOM Comprehensive SR (TID 1500), and back.

The report lands in the radiograph's study and references it, so a PACS shows the findings with
the image; ``sr_findings`` reads them back for comparison with the REST API's JSON.

Structure (DICOM PS3.16): a TID 1500 Measurement Report whose observation context names the
model as a device observer (TID 1004) and whose Image Library (TID 1600) lists the radiograph.
Each label set is a TID 1501 measurement group (tracking identifier = label-set name, "Source"
image = the radiograph); each label one TID 300 numeric measurement, unit UCUM "1", concept name
coded in the private scheme ``99ANATOMIX`` (labels are model-specific, no standard code fits),
with the algorithm (TID 4019) on every measurement. A Code Meaning is LO (64 characters, no
backslash), so a label that does not fit verbatim carries its exact text in a TID 1210
"Equivalent Meaning of Concept Name" modifier, which ``sr_findings`` prefers.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Sequence

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

SCHEME = "99ANATOMIX"  # private coding scheme designator: "99" prefix per PS3.16 section 8.2
UNIT = codes.UCUM.NoUnits  # ("1", UCUM, "no units"): a probability is dimensionless
# CID 100 (Quantitative Diagnostic Imaging Procedures) has no chest radiograph code
PROCEDURE = codes.cid100.XRUnspecifiedBodyRegion
SOURCE = Code("260753009", "SCT", "Source")  # the concept highdicom's TID 1600 entries use
MODALITY = {"CR": codes.cid29.ComputedRadiography, "DX": codes.cid29.DigitalRadiography}
# Patient/study attributes highdicom reads unconditionally: Type 2 in the image IODs, so present
# but possibly empty in a conformant header; an absent one is written empty, never invented.
TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
         "StudyID", "StudyDate", "StudyTime")  # fmt: skip
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
PIXEL_DATA = 0x7FE00010
_UID_PREFIX = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")  # PS3.5 section 9.1


def sr_bytes(
    source: Dataset,
    findings: dict[str, dict[str, float]],
    *,
    model_id: str,
    version: str,
    uid_root: str | None = None,
    uids_from: Sequence[str] = (),
) -> bytes:
    """Encode ``findings`` (label set → {label: probability}) computed on ``source`` as an SR.

    Args:
        source: the classified radiograph's header (PixelData may be absent).
        findings: as ``/v1/cxr/classify`` forms them; probabilities are written rounded to 6
            decimals.
        model_id, version: name the algorithm and the observer device.
        uid_root: prefix of the generated UIDs (digits and dots, at most 54 characters with its
            final dot); None → pydicom's root.
        uids_from: identifiers of the job; given, the series, instance and tracking UIDs derive
            from them, so re-running the job yields the same instance (a PACS stores it once).

    Returns:
        The file's bytes (explicit VR little endian, with file meta).

    Raises:
        ValueError: bad ``uid_root``, no findings, a non-finite probability, or a source without
            the UIDs it must be referenced by.
    """
    prefix = _prefix(uid_root)
    if not findings:
        raise ValueError("no findings to report")
    missing = [kw for kw in REQUIRED if not source.get(kw)]
    if missing:
        raise ValueError(f"source lacks {', '.join(missing)}")

    def uid(*tag: str) -> str:
        if uids_from:
            return generate_uid(prefix=prefix, entropy_srcs=[*uids_from, *tag])
        return generate_uid(prefix=prefix)

    header = _header(source)
    name = f"anatomix {model_id}"
    algorithm = hd.sr.AlgorithmIdentification(name=name, version=version)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            # the device is the model: its UID depends on model and version only
            uid=generate_uid(prefix=prefix, entropy_srcs=["anatomix-device", model_id, version]),
            name=name[:64],
            manufacturer_name="anatomix",
            model_name=model_id[:64],
        ),
    )
    source_ref = hd.sr.SourceImageForMeasurementGroup(header.SOPClassUID, header.SOPInstanceUID)
    coded: dict[str, str] = {}  # code value → label, to refuse a (sha256-improbable) collision
    groups = []
    for label_set, probs in findings.items():
        measurements = []
        for label, p in probs.items():
            value = round(float(p), 6)
            if not math.isfinite(value):
                raise ValueError(f"probability of a label in {label_set!r} is not finite")
            concept = label_code(label)
            if coded.setdefault(concept.value, label) != label:
                raise ValueError(f"labels {label!r} and {coded[concept.value]!r} share a code")
            measurement = hd.sr.Measurement(
                name=concept, value=value, unit=UNIT, algorithm_id=algorithm
            )
            if concept.meaning != label:
                num = measurement[0]
                if "ContentSequence" not in num:
                    num.ContentSequence = hd.sr.ContentSequence()
                num.ContentSequence.append(
                    hd.sr.TextContentItem(
                        name=codes.DCM.EquivalentMeaningOfConceptName,
                        value=label,
                        relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
                    )
                )
            measurements.append(measurement)
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uid("sr-group", label_set), identifier=label_set
                ),
                algorithm_id=algorithm,
                measurements=measurements,
                source_images=[source_ref],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
    )
    _add_image_library(report, header)
    sr = hd.sr.ComprehensiveSR(
        evidence=[header],
        content=report,
        series_instance_uid=uid("sr-series"),
        series_number=901,
        sop_instance_uid=uid("sr-instance"),
        instance_number=1,
        manufacturer="anatomix",
        is_complete=True,
        series_description=f"anatomix {model_id} findings"[:64],
        manufacturer_model_name=model_id[:64],
        software_versions=version[:64],
        # labels and model names are free text the source's character set may not hold
        specific_character_set="ISO_IR 192",
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=SCHEME, name="anatomix model labels", responsible_organization="anatomix"
            )
        ],
    )
    buf = io.BytesIO()
    sr.save_as(buf)
    return buf.getvalue()


def sr_findings(ds: Dataset) -> dict[str, dict[str, float]]:
    """Read the findings back from an SR written by ``sr_bytes``.

    Walks root → "Imaging Measurements" → "Measurement Group"s; the group's tracking identifier
    names the label set, each NUM item a label (its TID 1210 equivalent meaning, else its Code
    Meaning) and its value the probability.
    """
    if "ContentSequence" not in ds:
        raise ValueError("not an SR document: no ContentSequence")
    findings: dict[str, dict[str, float]] = {}
    for container in _children(ds, codes.DCM.ImagingMeasurements):
        for group in _children(container, codes.DCM.MeasurementGroup):
            ids = _children(group, codes.DCM.TrackingIdentifier)
            label_set = ids[0].TextValue if ids else ""
            probs = findings.setdefault(label_set, {})
            for item in group.get("ContentSequence", []):
                if item.ValueType != "NUM":
                    continue
                names = _children(item, codes.DCM.EquivalentMeaningOfConceptName)
                label = names[0].TextValue if names else item.ConceptNameCodeSequence[0].CodeMeaning
                probs[label] = float(item.MeasuredValueSequence[0].NumericValue)
    return findings


def label_code(label: str) -> Code:
    """The ``99ANATOMIX`` concept for a label: stable (a function of the text alone) and, by a
    SHA-256 digest, unique in practice. The value is SH (16 characters): a readable stem of the
    label and 8 hex digits; the meaning is LO (64 characters, no backslash or control
    characters, surrounding spaces insignificant), so it is the label when it fits."""
    stem = re.sub(r"[^A-Z0-9]", "", label.upper())[:7] or "L"
    digest = hashlib.sha256(label.encode("utf-8")).hexdigest()[:8].upper()
    meaning = re.sub(r"[\\\x00-\x1f\x7f]", " ", label).strip()[:64].strip() or stem
    return Code(f"{stem}-{digest}", SCHEME, meaning)


def _prefix(uid_root: str | None) -> str:
    """``uid_root`` as a generate_uid prefix (with its final dot); ValueError when invalid."""
    if uid_root is None:
        # not None: generate_uid(prefix=None) ignores entropy_srcs and returns a random 2.25 UID
        return PYDICOM_ROOT_UID
    prefix = uid_root if uid_root.endswith(".") else f"{uid_root}."
    if len(prefix) > 54 or not _UID_PREFIX.match(prefix):
        raise ValueError("uid_root must be digits and dots without leading zeros, at most 54 chars")
    return prefix


def _header(source: Dataset) -> Dataset:
    """The source's top-level attributes without pixel data, Type 2 patient/study ones present
    (empty where the source lacks them). Iterating decodes text in the source's character set."""
    header = Dataset()
    for elem in source:
        if elem.tag != PIXEL_DATA:
            header.add(elem)
    for keyword in TYPE2:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def _add_image_library(report: hd.sr.MeasurementReport, header: Dataset) -> None:
    """Insert the TID 1600 Image Library (TID 1500 row 5) before "Imaging Measurements".

    highdicom's ``ImageLibrary`` needs Imager Pixel Spacing and Patient Orientation for a
    radiograph (its TID 1603 descriptors), which CR headers often lack; TID 1602/1603
    descriptors are optional, so the entry here names only the modality."""
    entry = hd.sr.ImageContentItem(
        name=SOURCE,
        referenced_sop_class_uid=header.SOPClassUID,
        referenced_sop_instance_uid=header.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    modality = MODALITY.get(str(header.get("Modality", "")))
    if modality is not None:
        entry.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.CodeContentItem(
                    name=codes.DCM.Modality,
                    value=modality,
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT,
                )
            ]
        )
    group = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    group.ContentSequence = hd.sr.ContentSequence([entry])
    library = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibrary,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    library.ContentSequence = hd.sr.ContentSequence([group])
    items = report[0].ContentSequence
    at = next(i for i, it in enumerate(items) if _is(it, codes.DCM.ImagingMeasurements))
    items.insert(at, library)


def _is(item: Dataset, concept: Code) -> bool:
    """Whether a content item's concept name is ``concept`` (value and scheme)."""
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return False
    return (names[0].get("CodeValue"), names[0].get("CodingSchemeDesignator")) == (
        concept.value,
        concept.scheme_designator,
    )


def _children(item: Dataset, concept: Code) -> list[Dataset]:
    """The direct content items of ``item`` named ``concept``."""
    return [child for child in item.get("ContentSequence", []) if _is(child, concept)]
