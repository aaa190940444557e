"""mesh's runtime adapter for MLServer (Seldon): sklearn, xgboost, lightgbm and mlflow models behind the runtime
SPI, loaded by name through MLServer's repository API and served on its own gRPC port (docs/runtimes/mlserver.md)."""
