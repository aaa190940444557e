"""Model runtimes that serve mesh's runtime SPI (mmesh.ModelRuntime), each in its own subpackage."""
