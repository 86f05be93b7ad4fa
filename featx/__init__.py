"""featx: run a frozen base (VGG16, VGGFace, dlib.resnet, facenet.casia) once into a Zarr feature store,
then train heads in seconds, or fine-tune its last stages from a cached prefix."""

__version__ = "0.2.0"
