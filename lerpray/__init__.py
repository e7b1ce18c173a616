"""lerpray: continuous interpolation of LoRA anchors, trained on Ray Train and served on Ray Serve."""

__version__ = "0.1.0"
