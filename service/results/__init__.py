"""Results in the hospital's own formats: a FHIR R4 bundle, a DICOM Structured Report and a heatmap Secondary Capture.

Pure builders from a prediction, the model's identity and (for DICOM) the source's header; the HTTP
layer picks one by the request's Accept header and serialises it (docs/pacs.md).
"""

import warnings

# highdicom's warnings quote header values (a one-part PatientName, for one), and the service logs
# warnings (logging.captureWarnings): silence them so no patient data reaches the log.
warnings.filterwarnings("ignore", module=r"highdicom(\..*)?$")
