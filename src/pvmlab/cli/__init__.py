"""Command-line interface: one module per command group, loaded only when used."""
