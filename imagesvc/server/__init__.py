"""gRPC server: bootstrap (app), the thin servicer, interceptors and health reporting."""
