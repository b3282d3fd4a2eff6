"""WeChat integration: the simulator that speaks WeChat's real wire formats (and, later, the client)."""
