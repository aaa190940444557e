"""mesh: a multi-model serving router in the style of KServe ModelMesh."""

__version__ = "0.1.0"
