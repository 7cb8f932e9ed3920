"""TensorRT support (DESIGN §3.4, §4), in small parts: optimization profiles (``profiles``), what
the host has (``environment``), whether a plan may run here (``compat``), parser errors
(``parser_errors``) and the strongly typed plan builder (``builder``). Written to the TensorRT
10/11 Python API; not yet verified on a GPU with TensorRT (none was available to us).
"""
