"""The Coder control plane: coderd REST, the tailnet coordinator (yamux, DRPC, protobuf), DERP, disco."""
