"""The Kubernetes controller: KServe InferenceServices (ModelMesh mode) and serving runtimes in, runtime
Deployments and mesh registrations out. See docs/kubernetes.md."""
