"""Builders of tiny datasets in their exact published on-disk layouts (CSV headers verbatim).

Each ``make_*`` writes a handful of 16×16 images plus the index files into a folder and returns
the dataset root. The rows are literal text, so tests can state expected labels by hand.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SIZE = 16


def ramp(size: int = SIZE, high: int = 255) -> np.ndarray:
    """A horizontal ramp 0..high, so min–max and dtype scaling are easy to check."""
    row = np.linspace(0, high, size).round()
    return np.tile(row, (size, 1))


def write_text(path: Path, text: str, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", newline="") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def write_png(path: Path, pixels: np.ndarray | None = None, bits: int = 8, rgb: bool = False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is None:
        pixels = ramp(high=2**bits - 1)
    if bits == 16:
        im = PILImage.fromarray(pixels.astype(np.uint16))
    else:
        im = PILImage.fromarray(pixels.astype(np.uint8))
        if rgb:
            im = im.convert("RGB")
    im.save(path)


def write_jpeg(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.full((SIZE, SIZE), value, np.uint8)).save(path, quality=95)


def write_dicom(
    path: Path,
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    window: tuple[float, float] | None = None,
) -> None:
    """An uncompressed 16-bit radiograph DICOM (Explicit VR Little Endian)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is None:
        pixels = ramp(high=4095)
    pixels = pixels.astype(np.uint16)
    meta = FileMetaDataset()
    sop_class = "1.2.840.10008.5.1.4.1.1.1.1" if modality == "DX" else "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.2, 0.2]
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


# ---------------------------------------------------------------------------------- ChestX-ray14
CXR14_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
CXR14_ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171",
    "00000003_000.png,Hernia|Pleural_Thickening|Effusion,0,3,74,F,AP,2500,2048,0.168,0.168",
]


def make_chestxray14(root: Path, nested: bool = False, trailing_comma: bool = False) -> Path:
    """Data_Entry_2017.csv, the official split lists and PNGs (``images/`` or ``images_00k/``)."""
    end = "," if trailing_comma else ""
    lines = [CXR14_HEADER + end] + [r + end for r in CXR14_ROWS]
    write_text(root / "Data_Entry_2017.csv", "\n".join(lines) + "\n")
    write_text(
        root / "train_val_list.txt", "00000001_000.png\n00000001_001.png\n00000002_000.png\n"
    )
    write_text(root / "test_list.txt", "00000003_000.png\n")
    for k, row in enumerate(CXR14_ROWS):
        name = row.split(",")[0]
        folder = root / f"images_{k // 2 + 1:03d}" / "images" if nested else root / "images"
        write_png(folder / name, rgb=(k == 3))  # one RGBA-like colour file, as in the release
    return root


# ---------------------------------------------------------------------------------- CheXpert
CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices"
)
CHEXPERT_TRAIN = [
    # 1: No Finding positive, everything else blank
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,"
    "1.0,,,,,,,,,0.0,,,,1.0",
    # 2: Edema -1, Atelectasis -1, Pleural Effusion 1, Cardiomegaly 0, rest blank
    "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,"
    ",,0.0,,,-1.0,,,-1.0,,1.0,,,",
    # 3: lateral view of the same study; Consolidation -1
    "CheXpert-v1.0-small/train/patient00002/study2/view2_lateral.jpg,Female,87,Lateral,,"
    ",,,,,,-1.0,,,,,,,",
]
CHEXPERT_VALID = [
    "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,"
    "0.0,1.0,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
]


def make_chexpert(root: Path) -> Path:
    folder = root / "CheXpert-v1.0-small"
    write_text(folder / "train.csv", "\n".join([CHEXPERT_HEADER, *CHEXPERT_TRAIN]) + "\n")
    write_text(folder / "valid.csv", "\n".join([CHEXPERT_HEADER, *CHEXPERT_VALID]) + "\n")
    for row in CHEXPERT_TRAIN + CHEXPERT_VALID:
        write_jpeg(root / row.split(",")[0])
    return root


# ---------------------------------------------------------------------------------- MIMIC-CXR
MIMIC_LABELS_HEADER = (
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,"
    "Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,"
    "Pneumothorax,Support Devices"
)
MIMIC_LABELS = [
    "10000032,50414267,,,,,,,,,1.0,,,,,",
    "10000764,57375967,,,1.0,,,,,,,,,-1.0,,",
    "11000011,51029426,0.0,1.0,,-1.0,,,,1.0,,1.0,,,0.0,1.0",
]
MIMIC_METADATA_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
    "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)
MIMIC_IMAGES = [  # dicom_id, subject, study, view, split
    ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "10000032", "50414267", "PA", "train"),
    ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "10000032", "50414267", "LATERAL", "train"),
    ("096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "10000764", "57375967", "AP", "validate"),
    ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "11000011", "51029426", "AP", "test"),
    ("ffff0000-00000000-00000000-00000000-00000000", "19999999", "59999999", "PA", "train"),
]


def make_mimic(root: Path, gz: bool = True) -> Path:
    """The three mimic-cxr-2.0.0-*.csv(.gz) files and ``files/pXX/pSUBJECT/sSTUDY/*.jpg``."""
    write_text(
        root / "mimic-cxr-2.0.0-chexpert.csv", "\n".join([MIMIC_LABELS_HEADER, *MIMIC_LABELS]), gz
    )
    meta = [MIMIC_METADATA_HEADER] + [
        f"{d},{s},{t},CHEST (PA AND LAT),{v},3056,2544,21800506,213014.531,"
        f"CHEST (PA AND LAT),postero-anterior,Erect"
        for d, s, t, v, _ in MIMIC_IMAGES
    ]
    write_text(root / "mimic-cxr-2.0.0-metadata.csv", "\n".join(meta) + "\n", gz)
    split = ["dicom_id,study_id,subject_id,split"] + [
        f"{d},{t},{s},{sp}" for d, s, t, _, sp in MIMIC_IMAGES
    ]
    write_text(root / "mimic-cxr-2.0.0-split.csv", "\n".join(split) + "\n", gz)
    for d, s, t, _, _ in MIMIC_IMAGES:
        write_jpeg(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{t}" / f"{d}.jpg")
    return root


# ---------------------------------------------------------------------------------- VinDr-CXR
VINDR_LABELS = [
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion",
    "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding",
]  # fmt: skip


def vindr_row(positives: set[str], names: list[str] = VINDR_LABELS) -> str:
    return ",".join("1" if n in positives else "0" for n in names)


def make_vindr(root: Path) -> Path:
    """image_labels_train.csv (3 readers per image), image_labels_test.csv and DICOMs."""
    a, b = "000434271f63a053c4128a0ba6352c7f", "00053190460d56c53cc3e57321387478"
    train = ["image_id,rad_id," + ",".join(VINDR_LABELS)]
    train += [
        f"{a},R11," + vindr_row({"Cardiomegaly", "Aortic enlargement", "Other diseases"}),
        f"{a},R9," + vindr_row({"Cardiomegaly", "Pleural effusion"}),
        f"{a},R10," + vindr_row({"Cardiomegaly", "Aortic enlargement"}),
        f"{b},R8," + vindr_row({"No finding"}),
        f"{b},R2," + vindr_row({"Tuberculosis"}),
        f"{b},R3," + vindr_row({"No finding"}),
    ]
    # the test file spells "Other disease" in the singular and has no rad_id column
    test_names = [n if n != "Other diseases" else "Other disease" for n in VINDR_LABELS]
    t = "002a34c58c5b758217ed1f584ccbcfe9"
    test = ["image_id," + ",".join(test_names), f"{t}," + vindr_row({"Lung tumor"}, test_names)]
    write_text(root / "annotations" / "image_labels_train.csv", "\n".join(train) + "\n")
    write_text(root / "annotations" / "image_labels_test.csv", "\n".join(test) + "\n")
    write_dicom(root / "train" / f"{a}.dicom", photometric="MONOCHROME1")
    write_dicom(root / "train" / f"{b}.dicom", window=(2048.0, 4096.0))
    write_dicom(root / "test" / f"{t}.dicom")
    return root


# ---------------------------------------------------------------------------------- RSNA
RSNA_IDS = (
    "0004cfab-14fd-4e49-80ba-63a80b6bddd6",  # No Lung Opacity / Not Normal
    "00436515-870c-4b36-a041-de91049b9ab4",  # Lung Opacity, two boxes
    "003d8fa0-6bf1-40ed-b54c-ac657f8495c5",  # Normal
)


def make_rsna(root: Path) -> Path:
    a, b, c = RSNA_IDS
    labels = [
        "patientId,x,y,width,height,Target",
        f"{a},,,,,0",
        f"{b},264.0,152.0,213.0,379.0,1",
        f"{b},562.0,152.0,256.0,453.0,1",
        f"{c},,,,,0",
    ]
    classes = [
        "patientId,class",
        f"{a},No Lung Opacity / Not Normal",
        f"{b},Lung Opacity",
        f"{b},Lung Opacity",
        f"{c},Normal",
    ]
    write_text(root / "stage_2_train_labels.csv", "\n".join(labels) + "\n")
    write_text(root / "stage_2_detailed_class_info.csv", "\n".join(classes) + "\n")
    for pid in RSNA_IDS:
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", modality="CR")
    return root


# ---------------------------------------------------------------------------------- Shenzhen
def make_shenzhen(root: Path) -> Path:
    base = root / "ChinaSet_AllFiles"
    readings = {
        "CHNCXR_0001_0": "male 45yrs\nnormal\n",
        "CHNCXR_0002_0": "Female 63yrs\nnormal\n",
        "CHNCXR_0327_1": "Male 38yrs\nSTB,ATB in left upper field\n",
    }
    for stem, text in readings.items():
        write_png(base / "CXR_png" / f"{stem}.png", rgb=True)
        write_text(base / "ClinicalReadings" / f"{stem}.txt", text)
    (base / "CXR_png" / "Thumbs.db").write_bytes(b"\0")  # present in the release; not an image
    return root


# ---------------------------------------------------------------------------------- LUNA16
LUNA_UIDS = (
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860",  # subset0, 2 nodules
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.100332161840553388986847034053",  # subset0, no nodule
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.100398138793540579077826395208",  # subset7
)
#: origin (x, y, z) mm and spacing (x, y, z) mm of every fixture volume; shape (D, H, W)
LUNA_ORIGIN = (-198.1, -195.0, -335.21)
LUNA_SPACING = (0.75, 0.5, 2.5)
LUNA_SHAPE = (6, 8, 10)


def make_luna16(root: Path) -> Path:
    """subsetK/<uid>.mhd/.raw written with SimpleITK, annotations.csv and candidates_V2.csv."""
    import SimpleITK as sitk

    for uid, k in zip(LUNA_UIDS, (0, 0, 7), strict=True):
        voxels = np.full(LUNA_SHAPE, -1000, np.int16)
        voxels[3, 4, 5] = 40
        img = sitk.GetImageFromArray(voxels)  # array (z, y, x)
        img.SetOrigin(LUNA_ORIGIN)
        img.SetSpacing(LUNA_SPACING)
        (root / f"subset{k}").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(root / f"subset{k}" / f"{uid}.mhd"))
    u0, _, u2 = LUNA_UIDS
    write_text(
        root / "annotations.csv",
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        f"{u0},-194.35,-193.0,-327.71,5.65\n"
        f"{u0},-198.1,-195.0,-335.21,12.0\n"
        f"{u2},-190.6,-191.5,-322.71,7.1\n",
    )
    write_text(
        root / "candidates_V2.csv",
        f"seriesuid,coordX,coordY,coordZ,class\n{u0},-194.35,-193.0,-327.71,1\n"
        f"{u0},-197.35,-194.5,-332.71,0\n",
    )
    return root
