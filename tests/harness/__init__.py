"""What the suites share to run mesh for real: in-process routers and runtimes, `mesh serve` and clusters as
processes, a real etcd, certificates, an S3 server, fake runtimes for the unit tier (tests/README.md)."""
