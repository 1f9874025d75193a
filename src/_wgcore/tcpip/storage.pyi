# C-only module: send/receive rings, assembler and SACK scoreboard (see storage.pxd).
