"""Results in the hospital's own formats: a FHIR R4 bundle, a DICOM Structured Report and a heatmap Secondary Capture.

Pure builders from a prediction, the model's identity and (for DICOM) the source's header; the HTTP
layer picks one by the request's Accept header and serialises it (docs/pacs.md).
"""
