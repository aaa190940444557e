"""The Triton adapter: mesh's runtime SPI in front of a Triton Inference Server (see docs/runtimes/triton.md)."""
