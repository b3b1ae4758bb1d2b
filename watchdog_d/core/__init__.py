"""Pure core: plain data in, verdicts out. No I/O, no threads, clock injected."""
