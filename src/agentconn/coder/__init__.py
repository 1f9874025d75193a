"""The Coder control plane: coderd REST, the tailnet coordinator, DERP relays and disco."""
