"""The agent's stream services, each on its own tunnel port: SSH (1, 22), the reconnecting PTY
(2), speedtest (3) and the forwarding of every other port to the workspace loopback."""
