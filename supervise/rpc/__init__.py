"""RPC compatible with oslo.messaging: its wire format and its endpoint dispatch."""
