"""m3trt: multi-modal multi-scale image annotation, from training to fast engines."""

__version__ = "0.1.0"
