"""Inference: the KServe V2 Open Inference Protocol over gRPC, on the latest model snapshots."""
