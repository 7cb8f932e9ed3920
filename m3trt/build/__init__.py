"""``m3trt build``: one module per target (``cpu``, ``tensorrt``) behind shared options and
candidates (``options``), data (``data``) and timing (``timing``); ``bundle`` orchestrates.
Arrows run one way: bundle -> targets -> options/data/timing -> calibration, runtime."""
