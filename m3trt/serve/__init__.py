"""Annotation as a service: ``m3trt serve`` (KServe v2 / Open Inference Protocol over HTTP, with
Triton's binary tensor extension) and ``m3trt export-triton`` (a Triton model repository).

The server reaches the model only through ``Annotator`` (so every engine kind works) and never
imports torch. Its web stack (starlette, uvicorn, prometheus-client) is the ``m3trt[serve]`` extra.
"""
