"""The sidecar: inbound (mTLS, authorization, per-source limits) and outbound
(discovery, balancing, retries, mTLS origination) listeners on the gateway's
engine, driven by the control plane (docs/mesh.md)."""
