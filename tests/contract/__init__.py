"""Contract tests: the same assertions against the emulator and, when configured, the real API."""
