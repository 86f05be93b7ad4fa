"""featx: run a frozen VGG16/VGGFace base once into a Zarr feature store, then train heads in seconds."""

__version__ = "0.1.0"
