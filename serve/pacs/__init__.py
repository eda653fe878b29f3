"""The PACS side of the service (issue #20): DICOMweb STOW-RS and DIMSE C-STORE receivers, a
durable spool, study assembly and routing to the models, DICOM SEG and SR results delivered back
to configured destinations, and the job records behind ``/v1/jobs``."""
