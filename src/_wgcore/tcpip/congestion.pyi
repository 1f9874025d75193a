# C-only module: RTT/RTO estimation and CUBIC congestion control (see congestion.pxd).
