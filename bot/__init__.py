"""Official-account callback: crypto, parsing, routing, replies, FAQ answers."""
