"""The mesh control plane: CA, admission, registry with leases, policies, watch."""
