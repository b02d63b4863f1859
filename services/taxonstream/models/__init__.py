"""Model side of taxonstream: preprocessing, stand-in models, ONNX export and Triton's model repository.

Importing this package is cheap and torch-free: the services import `taxonstream.models.preprocess` and
`taxonstream.models.contract`; torch is needed only to build models (`clip_standin`, `detector_standin`,
`onnx_export`, `repository` when it has to write).
"""
